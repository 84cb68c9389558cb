"""--fix: pinning inputs, folding the If nodes they decide, the reasons given when nothing folds.

Every fold is checked against the original model run by ONNX Runtime with the pinned value fed,
on random inputs: folding must be exact.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.common.errors import UserError
from onnxprune.graph.candidates import ensure_node_names, find_candidates
from onnxprune.graph.fold import apply_fixes, parse_fix_specs, pinned_value
from onnxprune.graph.shapes import bind_input_shapes
from tests.graph import subgraph_models as sm


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _x(model: onnx.ModelProto, batch: int = 3) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [batch, *(d.dim_value for d in dims[1:])]
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def _analyse(model: onnx.ModelProto):
    model = ensure_node_names(model)
    return find_candidates(model, bind_input_shapes(model, {}))


@pytest.mark.parametrize("build", [sm.matmul_switch, sm.conv_switch, sm.tricky_switch])
@pytest.mark.parametrize("rate", [16000, 8000])
def test_fix_folds_the_if_exactly(build, rate):
    model = build()
    fixed = apply_fixes(model, {"sr": str(rate)})
    folded = fixed.model
    onnx.checker.check_model(folded, full_check=True)
    assert "If" not in {n.op_type for n in folded.graph.node}
    assert [i.name for i in folded.graph.input] == ["x"]  # the pinned input is gone
    assert "sr" in model.graph.input[1].name  # the caller's model is untouched
    assert {f.branch for f in fixed.folded} <= {"then", "else"} and fixed.folded
    x = _x(model)
    want = _run(model, {"x": x, "sr": np.array(rate, dtype=np.int64)})
    got = _run(folded, {"x": x})
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any("drop it from your feeds" in note for note in fixed.notes)


@pytest.mark.parametrize(("build", "rate", "expected"), [
    (sm.matmul_switch, 16000, {"wide_fc1", "wide_fc2", "head"}),
    (sm.matmul_switch, 8000, {"narrow_fc", "head"}),
    (sm.conv_switch, 16000, {"wide_conv1", "wide_conv2", "head"}),
    (sm.tricky_switch, 16000, {"first.then/fc", "fc"}),  # renamed apart
])
def test_weights_of_the_taken_branch_become_candidates(build, rate, expected):
    before = _analyse(build())
    assert not {c.name for c in before.candidates} & (expected - {"head"})
    after = _analyse(apply_fixes(build(), {"sr": rate}).model)
    assert {c.name for c in after.candidates} == expected
    assert not after.skipped


def test_nested_if_and_clashing_names_fold_in_rounds():
    fixed = apply_fixes(sm.tricky_switch(), {"sr": 16000})
    assert [f.node for f in fixed.folded] == ["first", "inner_switch", "second"]
    names = [o for n in fixed.model.graph.node for o in n.output]
    assert len(names) == len(set(names))  # both templates' "t" live on, renamed apart


def test_constant_condition_folds_without_a_pin():
    model = sm.matmul_switch()
    model.graph.input.remove(model.graph.input[1])
    model.graph.initializer.append(numpy_helper.from_array(np.array(8000, np.int64), "sr"))
    fixed = apply_fixes(model)
    assert [(f.node, f.branch) for f in fixed.folded] == [("rate_switch", "else")]
    assert not fixed.pinned
    x = _x(model)
    np.testing.assert_array_equal(_run(model, {"x": x})[0], _run(fixed.model, {"x": x})[0])


def test_model_without_if_or_pin_is_returned_untouched():
    model = sm.loop_model()
    assert apply_fixes(model, {}).model is model


def test_pinned_input_feeding_a_loop_stays_as_a_constant():
    model = sm.loop_model()
    fixed = apply_fixes(model, {"x": ",".join(["0.5"] * 16)})
    assert [i.name for i in fixed.model.graph.input] == []  # x was the only input
    want = _run(model, {"x": np.full((1, 16), 0.5, np.float32)})[0]
    np.testing.assert_allclose(_run(fixed.model, {})[0], want, rtol=1e-6)


def test_reasons_name_the_input_to_pin():
    reasons = {s.node: s.reason for s in _analyse(sm.matmul_switch()).skipped}
    assert set(reasons) == {"wide_fc1", "wide_fc2", "narrow_fc"}
    for reason in reasons.values():
        assert "If node 'rate_switch'" in reason and "--fix sr=VALUE" in reason
    assert "'W_wide1' [16x32]" in reasons["wide_fc1"]


def test_macs_left_in_branches_are_counted_once_per_if():
    analysis = _analyse(sm.matmul_switch())  # batch bound to 1
    macs = {s.node: s.macs for s in analysis.skipped}
    assert macs == {"wide_fc1": 16 * 32, "wide_fc2": 32 * 8, "narrow_fc": 16 * 8}
    # Only one branch runs: the total has the head and the larger branch, not both branches.
    assert analysis.total_macs == 8 * 4 + 16 * 32 + 32 * 8


def test_data_dependent_if_says_no_pin_helps():
    reasons = {s.node: s.reason for s in _analyse(sm.data_switch()).skipped}
    assert set(reasons) == {"pos_fc", "neg_fc"}
    assert all("data-dependent" in r and "input 'x'" in r and "--fix x" not in r
               for r in reasons.values())


def test_loop_body_is_declined_with_the_reason():
    [skip] = _analyse(sm.loop_model()).skipped
    assert skip.node == "step_fc"
    assert "Loop node 'recur'" in skip.reason and "trip count 3" in skip.reason
    assert "once per iteration" in skip.reason


@pytest.mark.parametrize(("fixes", "message"), [
    ({"rate": "1"}, "--fix names 'rate', which is not an input"),
    ({"sr": "16k"}, "bad --fix sr='16k'"),
    ({"sr": "1.5"}, "is not an integer"),
    ({"sr": "1,2"}, "2 value(s) do not fit input 'sr'"),
    ({"sr": "1e30"}, "out of range for int64"),
    ({"sr": "1,"}, "empty item"),
    ({"x": "1,2,3"}, "do not fit input 'x'"),
])
def test_bad_fixes_are_user_errors_naming_the_input(fixes, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_fixes(sm.matmul_switch(), fixes)


def test_parse_fix_specs():
    assert parse_fix_specs(["sr=16000", " mode = 1,2 "]) == {"sr": "16000", "mode": "1,2"}
    for bad in (["sr"], ["=3"], ["sr="]):
        with pytest.raises(UserError, match="expected NAME=VALUE"):
            parse_fix_specs(bad)
    with pytest.raises(UserError, match="given twice"):
        parse_fix_specs(["sr=1", "sr=2"])


def test_pinned_values_take_the_declared_dtype_and_shape():
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    assert pinned_value("flag", "true", flag).dtype == np.bool_
    with pytest.raises(UserError, match="not a bool"):
        pinned_value("flag", "yes", flag)
    scales = helper.make_tensor_value_info("scales", TensorProto.FLOAT, ["n"])
    value = pinned_value("scales", "1,2.5,3", scales)
    assert value.dtype == np.float32 and value.shape == (3,)
    grid = helper.make_tensor_value_info("grid", TensorProto.INT32, [2, 2])
    assert pinned_value("grid", [1, 2, 3, 4], grid).tolist() == [[1, 2], [3, 4]]
    text = helper.make_tensor_value_info("text", TensorProto.STRING, [])
    with pytest.raises(UserError, match="not a numeric tensor"):
        pinned_value("text", "a", text)


def _with_condition(nodes: list[onnx.NodeProto], extra: list[onnx.TensorProto] = (),
                    domain: str | None = None) -> onnx.ModelProto:
    """matmul_switch with its ``sr > 12000`` check replaced by ``nodes`` (ending in is_wide)."""
    model = sm.matmul_switch()
    kept = [n for n in model.graph.node if n.name != "rate_check"]
    del model.graph.node[:]
    model.graph.node.extend([*nodes, *kept])
    model.graph.initializer.extend(extra)
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


def test_arithmetic_on_the_pinned_input_folds_and_other_uses_stay_exact():
    scale = numpy_helper.from_array(np.array(0.001, np.float32), "to_khz")
    limit = numpy_helper.from_array(np.array(12.0, np.float32), "limit")
    model = _with_condition([
        helper.make_node("Cast", ["sr"], ["sr_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sr_f", "to_khz"], ["khz"], name="khz"),
        helper.make_node("Greater", ["khz", "limit"], ["is_wide"], name="rate_check"),
    ], [scale, limit])
    # The rate also scales the output at run time: that use must keep working once pinned.
    model.graph.node.append(helper.make_node("Mul", ["y_raw", "khz"], ["y"], name="scale_out"))
    head = next(n for n in model.graph.node if n.name == "head")
    head.output[0] = "y_raw"
    onnx.checker.check_model(model)
    fixed = apply_fixes(model, {"sr": 16000})
    assert {n.op_type for n in fixed.model.graph.node} == {"MatMul", "Relu", "Mul"}
    x = _x(model)
    want = _run(model, {"x": x, "sr": np.array(16000, np.int64)})[0]
    np.testing.assert_array_equal(_run(fixed.model, {"x": x})[0], want)


def test_condition_through_a_custom_op_is_not_folded_and_says_why():
    model = _with_condition([helper.make_node("RateCheck", ["sr"], ["is_wide"],
                                              name="rate_check", domain="custom.ops")],
                            domain="custom.ops")
    fixed = apply_fixes(model, {"sr": 16000})
    assert not fixed.folded
    reasons = {s.reason for s in _analyse(fixed.model).skipped}
    assert reasons and all("depends on no input (pinned ones included)" in r for r in reasons)


def test_branch_returning_its_own_initializer_goes_through_an_identity():
    from tests.models import make_model, tensor

    then = helper.make_graph([], "t", [], [tensor("table", [4])],
                             [numpy_helper.from_array(np.arange(4, dtype=np.float32), "table")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["xx"], name="id")], "e", [],
                              [tensor("xx", [4])])
    model = make_model(
        [helper.make_node("Greater", ["sr", "threshold"], ["c"], name="check"),
         helper.make_node("If", ["c"], ["o"], name="sw", then_branch=then, else_branch=other),
         helper.make_node("Add", ["o", "x"], ["y"], name="add")],
        [tensor("x", [4]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [tensor("y", [4])], [numpy_helper.from_array(np.array(5, np.int64), "threshold")])
    fixed = apply_fixes(model, {"sr": 9})
    assert [n.op_type for n in fixed.model.graph.node] == ["Identity", "Add"]
    x = np.ones(4, np.float32)
    want = _run(model, {"x": x, "sr": np.array(9, np.int64)})[0]
    np.testing.assert_array_equal(_run(fixed.model, {"x": x})[0], want)
