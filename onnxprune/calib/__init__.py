"""Calibration: the data read once (``dataset.py``: CalibSet, readers, the fit/search/verify
split), the model that exposes every candidate's input and runs masked weights (``stitch.py``),
and the per-layer statistics collected from it (``collect.py``: Hessians)."""
