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

The package, in the data's order (each folder imports only itself and the folders above it in
this list; ``tests/test_architecture.py`` holds it to that)::

    common/       errors, ORT sessions and providers, user plugins, progress   (under everything)
    reconstruct/  OBS / SparseGPT kernels, pure numpy: W, H -> mask, weight, error
    fidelity/     output measures and bounds: dense vs pruned outputs -> Fidelity
    graph/        load, prepare (fold pinned inputs, fp16 twin), shapes, candidates, rewrites
    structures/   channel chains, FFN neurons, attention heads: candidates -> StructureContext
    layouts/      dense/block/channel/nm/unstructured/structure: options, solve, materialize
    config/       PruneConfig and the settings file: CLI/API arguments -> one frozen config
    latency/      time each option on the EP, the Amdahl bound: candidates -> LatencyTable
    calib/        calibration data, activations, Hessians, the stitched model: CalibSet -> H
    solve/        every option of every layer solved once (+ sequential, error feedback)
    recover/      global recovery in torch: one-shot model -> tuned initializers
    allocate/     SPDY's DP and coefficient search: table + database -> one option per layer
    contract/     realize an allocation, verify it, tighten rounds: allocation -> Attempt
    pipeline/     analyse (shared by prune/apply/profile/inspect), the stages, prune, plan, apply
    report/       terminal, JSON, HTML: Report -> what the user reads
    api, commands, cli, __main__   the faces
"""

from onnxprune.api import PlanEntry, ProfileResult, PruneResult, profile, prune
from onnxprune.common.errors import OnnxPruneError, TargetUnreachableError, UserError
from onnxprune.config.settings import NodeOverride, PruneConfig

__all__ = ["NodeOverride", "OnnxPruneError", "PlanEntry", "ProfileResult", "PruneConfig",
           "PruneResult", "TargetUnreachableError", "UserError", "profile", "prune"]
__version__ = "0.1.0"
