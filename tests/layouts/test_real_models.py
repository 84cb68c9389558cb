"""Every layout on the shipped digits models (real exporters): rewritten == masked dense."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxprune.graph import fold_restores, rewrite
from onnxprune.graph.load import load_model, stamp_ir_version
from onnxprune.layouts.base import to_rows
from onnxprune.layouts.isolate import RandomMaskSolver
from onnxprune.layouts.registry import get_layout
from tests.layouts.common import assert_same_outputs, candidates, op_counts

MODELS = Path(__file__).resolve().parents[2] / "models"
INPUTS = {
    "digits_mlp": (8, 64),
    "digits_cnn": (8, 1, 8, 8),
    "digits_transformer": (8, 8, 8),
}


def _export(graph: gs.Graph) -> onnx.ModelProto:
    graph.cleanup().toposort()
    model = stamp_ir_version(gs.export_onnx(graph))
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("stem", list(INPUTS))
@pytest.mark.parametrize("layout_name", ["block", "channel", "nm", "unstructured"])
def test_all_candidates_rewritten_match_masked_dense(stem, layout_name):
    path = MODELS / f"{stem}.onnx"
    if not path.exists():
        pytest.skip(f"{path} not built")
    model = load_model(path)
    input_name = model.graph.input[0].name
    found = candidates(model, {input_name: INPUTS[stem]})
    layout = get_layout(layout_name)
    rng = np.random.default_rng(0)
    solved = []
    for candidate in found.values():
        options, _ = layout.options(candidate)
        if options:
            option = options[len(options) // 2]
            solver = RandomMaskSolver(to_rows(candidate, candidate.weight), rng)
            solved.append((candidate, layout.solve(candidate, solver, option)))
    assert solved or layout_name == "nm"
    rewritten, reference = gs.import_onnx(model), gs.import_onnx(model)
    for candidate, pruned in solved:
        layout.materialize(rewritten, candidate, pruned)
        rewrite.replace_weight(reference, candidate, pruned.weight)
    folded_count = fold_restores.fold_channel_restores(rewritten) if layout_name == "channel" else 0
    out, ref = _export(rewritten), _export(reference)
    for batch in (INPUTS[stem][0], 3):
        x = np.random.default_rng(batch).random((batch, *INPUTS[stem][1:]), dtype=np.float32)
        assert_same_outputs(out, ref, {input_name: x})
    if layout_name in ("block", "channel"):
        assert op_counts(out)["Gather"] + folded_count >= len(solved)
