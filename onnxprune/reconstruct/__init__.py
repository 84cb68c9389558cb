"""The reconstruction kernels, pure numpy: the running Hessian (``hessian.py``), OBS / SparseGPT
with a layout's mask rule plugged in (``obs.py``), and structured OBS over column groups
(``structured.py``). No graph, no ORT: the layouts build on them, so they sit below layouts."""
