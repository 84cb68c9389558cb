"""Weight layouts: mask families and how each is written back into the graph.

See :mod:`onnxprune.layouts.base` for the protocol and :mod:`onnxprune.layouts.registry` for the
list of layouts.
"""
