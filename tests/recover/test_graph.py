"""The torch op table runs the shipped models and onnxprune's own rewrites exactly as ORT does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxprune.calib.dataset import load_calib_dir
from onnxprune.contract.verify import MaterializationMismatchError, require_same_graph
from onnxprune.layouts.materialize import materialize
from onnxprune.recover.graph import (
    TorchGraph,
    to_torch_feed,
    tunable_initializers,
    unsupported_ops,
    with_initializers,
)
from tests.models import init, make_model, tensor

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def _against_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = session.run(names, feed)
    with torch.no_grad():
        ours = TorchGraph(model)(to_torch_feed(feed), names)
    return max(float(np.abs(r - ours[n].numpy()).max() / max(np.abs(r).max(), 1e-6))
               for r, n in zip(reference, names, strict=True))


@pytest.mark.parametrize("name", ["digits_cnn", "digits_transformer"])
def test_shipped_models_run_in_torch_as_in_onnx_runtime(name):
    model = onnx.load(ROOT / "models" / f"{name}.onnx")
    feed = load_calib_dir(ROOT / "calibration" / name, 64).batches[0]
    assert unsupported_ops(model) == []
    assert _against_ort(model, feed) < 1e-4


def test_a_materialized_layout_runs_in_torch_as_in_onnx_runtime(tmp_path):
    """Block, channel and N:M rewrites (Gather, Concat, Reshape, Transpose, ...) run exactly."""
    from onnxprune.graph.candidates import find_candidates
    from onnxprune.graph.shapes import bind_input_shapes
    from onnxprune.layouts.base import LayoutOption
    from onnxprune.layouts.registry import get_layout
    from onnxprune.solve.database import make_solver

    model = onnx.load(ROOT / "models" / "digits_transformer.onnx")
    feed = load_calib_dir(ROOT / "calibration" / "digits_transformer", 64).batches[0]
    shapes = {k: tuple(v.shape) for k, v in feed.items()}
    analysis = find_candidates(model, bind_input_shapes(model, shapes))
    chosen = {}
    layouts = ["block", "channel", "nm"]
    for index, cand in enumerate(analysis.candidates):
        layout = get_layout(layouts[index % 3])
        options, _ = layout.options(cand, [0.5])
        if options:
            option: LayoutOption = options[0]
            chosen[cand.name] = layout.solve(cand, make_solver(cand, None), option)
    assert len({s.option.layout for s in chosen.values()}) >= 2
    pruned = materialize(model, analysis.candidates, chosen)
    assert unsupported_ops(pruned) == []
    assert _against_ort(pruned, feed) < 1e-4


def test_an_op_missing_from_the_table_is_named():
    model = make_model([helper.make_node("Hardmax", ["x"], ["y"], name="hm")],
                       [tensor("x", ["b", 4])], [tensor("y", ["b", 4])])
    assert unsupported_ops(model) == ["Hardmax"]
    with pytest.raises(NotImplementedError, match="Hardmax"):
        TorchGraph(model)


def test_only_weights_are_tunable_and_their_zeros_stay_zero():
    w = np.array([[1.0, 0.0], [0.0, 2.0]])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["a"], name="bias"),
             helper.make_node("Reshape", ["a", "shape"], ["y"], name="rs")]
    model = make_model(nodes, [tensor("x", ["b", 2])], [tensor("y", ["n", 2])],
                       [init("w", w), init("b", np.array([0.5, -0.5])),
                        onnx.numpy_helper.from_array(np.array([-1, 2], np.int64), "shape")])
    assert tunable_initializers(model) == ["w", "b"]
    graph = TorchGraph(model)
    with torch.no_grad():
        for p in graph.params.values():
            p.add_(1.0)
    graph.apply_masks()
    tuned = graph.tuned_values()
    assert tuned["w"][0, 1] == 0 and tuned["w"][1, 0] == 0 and tuned["w"][0, 0] == 2.0
    rewritten = with_initializers(model, tuned)
    require_same_graph(model, rewritten)  # only values changed
    other = with_initializers(model, {"w": np.ones((2, 2), np.float32)})
    other.graph.node[1].op_type = "Sub"
    with pytest.raises(MaterializationMismatchError):
        require_same_graph(model, other)
