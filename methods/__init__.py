"""Methods: what each `--method` name means, and the pipeline that runs it (the layer above `engine` and
`prune_utils`; docs/ARCHITECTURE.md).

    registry   the table of methods: get_method(name), method_names(), pruning_methods()
    base       Method (the interface), RunFiles (file names), TrainingRun, PruneRequest, PruneResult
    dense, oneshot, dynamic, lth    the method families
    pipeline   distributed session, rank-0-first loaders, evaluating and writing nets
    scoring    per-task scores for the analysis tools
"""
