"""Solving layouts with the calibration statistics: the per-layer database and the sequential
re-solve. The stage between :mod:`onnxprune.reconstruct` (statistics, the OBS solver — which know
no layout) and the allocator; it is the one place layouts and solvers meet."""
