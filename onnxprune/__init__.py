"""onnxprune: prune an exported ONNX model to a measured speedup on ONNX Runtime.

Python API::

    from onnxprune import prune, PruneConfig
    report = prune("in.onnx", "out.onnx", PruneConfig(speedup=2.0, calib_dir=Path("calib")))
"""

from onnxprune.config import PruneConfig
from onnxprune.errors import OnnxPruneError, TargetUnreachableError, UserError

__all__ = ["PruneConfig", "OnnxPruneError", "TargetUnreachableError", "UserError", "prune"]
__version__ = "0.1.0"


def prune(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy re-export
    """See :func:`onnxprune.pipeline.prune` (imported lazily to keep ``import onnxprune`` light)."""
    from onnxprune.pipeline import prune as _prune

    return _prune(*args, **kwargs)
