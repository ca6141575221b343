"""Training engine: config, losses, metrics, evaluation, the trainer (over the sparsity-controller
protocol of `engine.controller`), logging, distributed set-up and the command-line pieces the tools share."""
