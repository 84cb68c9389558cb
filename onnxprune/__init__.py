"""onnxprune: prune an exported ONNX model to a measured speedup on ONNX Runtime.

Python API, in the style of ONNX Runtime's quantization tool::

    import onnxprune
    result = onnxprune.prune("in.onnx", "out.onnx", 2.0, calib_dir="calib",
                             shapes={"input": (64, 8, 8)})
    print(result.speedup, result.fidelity_per_output)

``model_input`` may also be an ``onnx.ModelProto`` and ``model_output`` None (the pruned model is
then returned as ``result.model``); ``calibration_data_reader`` takes any ORT-style reader.
``onnxprune.profile(model)`` times the prunable nodes and gives the reachable speedup. Heavy
modules are imported inside these functions, so ``import onnxprune`` stays light.
"""

from onnxprune.api import PlanEntry, ProfileResult, PruneResult, profile, prune
from onnxprune.common.errors import OnnxPruneError, TargetUnreachableError, UserError
from onnxprune.config.settings import NodeOverride, PruneConfig

__all__ = ["NodeOverride", "OnnxPruneError", "PlanEntry", "ProfileResult", "PruneConfig",
           "PruneResult", "TargetUnreachableError", "UserError", "profile", "prune"]
__version__ = "0.1.0"
