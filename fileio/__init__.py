"""File I/O, below every other package: atomic writes (bytes, text, JSON, torch), our checkpoint format,
the original code's state dicts, the compact export, mask-set files, and one loader for all weight files
(docs/ARCHITECTURE.md, "I/O layer").

It imports nothing from the project, so models, pruning, the trainer and the tools can all use it.
"""
from .atomic import atomic_save, atomic_write, atomic_write_bytes, atomic_write_text
from .checkpoint import (FORMAT, VERSION, CheckpointError, check_tasks, load_checkpoint, load_model_state,
                         make_checkpoint, read_file, to_plain)
from .json_file import atomic_write_json, json_text, read_json
from .load import Weights, install_weights, load_weights, read_weights
from .mask_file import MaskFile, read_mask_file, write_mask_file

__all__ = ["FORMAT", "VERSION", "CheckpointError", "MaskFile", "Weights", "atomic_save", "atomic_write",
           "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_tasks", "install_weights",
           "json_text", "load_checkpoint", "load_model_state", "load_weights", "make_checkpoint", "read_file",
           "read_json", "read_mask_file", "read_weights", "to_plain", "write_mask_file"]
