"""Training engine: config, losses, metrics, trainer, checkpoints, logging, distributed set-up."""
