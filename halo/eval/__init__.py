"""Evaluating hand surfaces: surface metrics (IoU, Chamfer, normal consistency, F-score) and
mesh evaluation of a model on a dataset split."""
