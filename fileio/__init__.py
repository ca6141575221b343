"""File I/O, below every other package: atomic writes (bytes, text, JSON, torch), output locks, our
checkpoint format, the original code's state dicts, the compact export, mask-set files, and one loader for
all weight files (docs/ARCHITECTURE.md, "I/O layer"; failure behaviour: docs/RELIABILITY.md).

It imports nothing from the project, so models, pruning, the trainer and the tools can all use it.
"""
from .atomic import (WriteError, atomic_save, atomic_write, atomic_write_bytes, atomic_write_text, check_folder,
                     check_target, os_failure, remove_stale_temporaries)
from .checkpoint import (FORMAT, VERSION, CheckpointError, check_tasks, load_checkpoint, load_model_state,
                         make_checkpoint, read_file, to_plain)
from .json_file import atomic_write_json, json_text, nonfinite_paths, read_json
from .load import Weights, install_weights, load_weights, read_weights
from .lock import OutputLock, OutputLocked
from .mask_file import MaskFile, read_mask_file, write_mask_file

__all__ = ["FORMAT", "VERSION", "CheckpointError", "MaskFile", "OutputLock", "OutputLocked", "Weights", "WriteError",
           "atomic_save", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "check_folder", "check_target", "check_tasks", "install_weights", "json_text", "load_checkpoint",
           "load_model_state", "load_weights", "make_checkpoint", "nonfinite_paths", "os_failure", "read_file",
           "read_json", "read_mask_file", "read_weights", "remove_stale_temporaries", "to_plain", "write_mask_file"]
