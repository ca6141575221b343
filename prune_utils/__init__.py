"""Pruning over any model with a task structure: the task partition (`structure`), saliency, the top-k
engine (`topk`), per-task masks and arbiters (`mask_builder`, `arbiters`), masked and dynamic sparse
training controllers, LTH's magnitude step, and the analyses (IoU, similarity, reports, plots).

It imports `fileio` and nothing else of the project: no model of its own, no trainer, no data.
"""
