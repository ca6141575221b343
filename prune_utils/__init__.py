"""Pruning: saliency, per-task masks, arbiters, exact sparsity, masked and dynamic sparse training."""
