"""Methods: the layer above `engine` and `prune_utils` that knows what each method name means."""
