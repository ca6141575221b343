"""Runnable examples of the Python API (docs/API.md) on models and training loops of the user's own:
`python -m examples.unet_static`, `python -m examples.mlp_towers`, `python -m examples.dynamic_sparse`."""
