"""Global recovery and error feedback: what they promise, on real pruning of the shipped models.

Recovery may only lower the held-out loss (the best state on held-out data is kept), may only
change initializer values (zeros stay zero, the graph stays), and the pipeline keeps the
recovered model only when the verify data says it is better than the one-shot one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxprune import PruneConfig
from onnxprune.calib.dataset import load_calib_dir
from onnxprune.contract.verify import require_same_graph
from onnxprune.fidelity.channels import probability_outputs
from onnxprune.pipeline.prune import prune
from onnxprune.recover.tune import Targets, recover_globally
from tests.models import init, make_model, tensor

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "calibration" / "digits_cnn"


def _uniform(tmp_path: Path, name: str, **extra) -> tuple[Path, object]:
    out = tmp_path / f"{name}.onnx"
    config = PruneConfig(sparsity=0.6, layouts=("channel",), calib_dir=CALIB,
                         shapes={"input": (64, 1, 8, 8)}, threads=2, fidelity_bound=False,
                         **extra)
    return out, prune(ROOT / "models" / "digits_cnn.onnx", out, config)


@pytest.fixture(scope="module")
def oneshot_and_recovered(tmp_path_factory):
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("recovery")
    oneshot = _uniform(tmp, "oneshot", recover=False)
    recovered = _uniform(tmp, "recovered", recover=True, recover_seconds=4.0)
    return oneshot, recovered


def _runner(path: Path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feed: dict(zip(names, session.run(names, dict(feed)), strict=True))


def test_recovery_lowers_the_held_out_loss_and_changes_only_weight_values(
        oneshot_and_recovered):
    (oneshot_path, _), _ = oneshot_and_recovered
    oneshot = onnx.load(str(oneshot_path))
    fit, search, _ = load_calib_dir(CALIB, 512).partition()
    dense = _runner(ROOT / "models" / "digits_cnn.onnx")
    result = recover_globally(oneshot, Targets.of(fit, dense), Targets.of(search, dense),
                              probability_outputs(oneshot.graph), seconds=3.0, threads=2)
    assert result.model is not None, result.note
    assert result.loss_after < result.loss_before
    assert result.exactness is not None and result.exactness < 1e-3
    require_same_graph(oneshot, result.model)
    before = {i.name: numpy_helper.to_array(i) for i in oneshot.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    changed = [n for n in before if not np.array_equal(before[n], after[n])]
    assert changed
    for name in changed:
        assert np.all(after[name][before[name] == 0] == 0), f"{name}: a pruned zero came back"


def test_the_pipeline_keeps_the_recovered_model_only_when_verify_data_says_better(
        oneshot_and_recovered):
    (oneshot_path, oneshot_report), (recovered_path, report) = oneshot_and_recovered
    assert report.recovery is not None
    record = report.recovery
    assert record["loss_verify_recovered"] is not None
    if record["kept"]:
        assert record["loss_verify_recovered"] < record["loss_verify_oneshot"]
        require_same_graph(onnx.load(str(oneshot_path)), onnx.load(str(recovered_path)))
        assert report.fidelity.error < oneshot_report.fidelity.error
        assert any("global recovery" in note for note in report.notes)
    else:
        assert report.fidelity.error == pytest.approx(oneshot_report.fidelity.error, rel=1e-4)
    assert oneshot_report.recovery is None


def test_a_run_without_torch_says_recovery_was_not_available(tmp_path, monkeypatch):
    import onnxprune.recover.stage as stage

    monkeypatch.setattr(stage, "torch_available", lambda: False)
    _, report = _uniform(tmp_path, "no-torch", recover=True)
    assert report.written and report.recovery is None
    assert any("global recovery not available" in n and "onnxprune[recover]" in n
               for n in report.notes)


def test_a_graph_the_op_table_cannot_run_is_skipped_naming_the_op():
    pytest.importorskip("torch")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Hardmax", ["h"], ["y"], name="hm")]
    model = make_model(nodes, [tensor("x", ["b", 3])], [tensor("y", ["b", 3])],
                       [init("w", np.eye(3))])
    feed = {"x": np.ones((2, 3), np.float32)}
    targets = Targets([feed], [{"y": np.ones((2, 3), np.float32)}])
    result = recover_globally(model, targets, targets, set(), seconds=1.0)
    assert result.model is None and "Hardmax" in result.note


def test_error_feedback_solves_the_normal_equations_toward_the_dense_output():
    """W* = (W·C + λW)(H_p + λI)⁻¹ with H_p = X_pᵀX_p and C = X_dᵀX_p, X from the runner."""
    from onnxprune.calib.stitch import StitchedRunner
    from onnxprune.graph.candidates import find_candidates
    from onnxprune.graph.shapes import bind_input_shapes
    from onnxprune.layouts.base import to_rows
    from onnxprune.solve.sequential import FEEDBACK_DAMP, feedback_problem

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    model = make_model(nodes, [tensor("x", ["b", 6])], [tensor("y", ["b", 4])],
                       [init("w1", rng.standard_normal((6, 5))),
                        init("w2", rng.standard_normal((5, 4)))])
    analysis = find_candidates(model, bind_input_shapes(model, {"x": (32, 6)}))
    first, second = sorted(analysis.candidates, key=lambda c: c.name)
    runner = StitchedRunner(model, analysis.candidates,
                            expose=[s.activation for c in analysis.candidates for s in c.sites])
    x = rng.standard_normal((32, 6)).astype(np.float32)
    from onnxprune.calib.dataset import CalibSet

    calib = CalibSet(({"x": x},), (None,), "test")
    pruned_w1 = first.weight.copy()
    pruned_w1[:, :2] = 0  # two hidden units removed upstream
    H, target = feedback_problem(runner, second, calib, {first.name: pruned_w1})
    xp = np.maximum(x @ pruned_w1, 0).astype(np.float64)
    xd = np.maximum(x @ first.weight, 0).astype(np.float64)
    H_ref = 2 * xp.T @ xp / len(x)
    C = 2 * xd.T @ xp / len(x)
    lam = FEEDBACK_DAMP * np.mean(np.diag(H_ref))
    W = to_rows(second, second.weight).astype(np.float64)
    np.testing.assert_allclose(H, H_ref, rtol=1e-5, atol=1e-8)
    lhs = (H_ref + lam * np.eye(5)) @ to_rows(second, target).astype(np.float64).T
    np.testing.assert_allclose(lhs, C.T @ W.T + lam * W.T, rtol=1e-4, atol=1e-5)
    # and it is closer to the dense output on the pruned input than the original weight
    dense_out = xd @ second.weight
    assert np.linalg.norm(xp @ target - dense_out) < np.linalg.norm(xp @ second.weight
                                                                      - dense_out)
