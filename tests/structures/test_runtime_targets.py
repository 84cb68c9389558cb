"""Structures through Reshape targets computed at run time, as the TorchScript exporter writes
them: ``x.view(x.size(0), -1)`` (Shape → Gather → Unsqueeze → Concat) before a classifier, and
attention whose projections are also read by ``Shape`` and whose head-merging target takes
d_model from ``Shape(x)[2]``. Both were declined before; now they are structures, exact against
masked-dense, and their isolated subgraphs (what the latency table times) run at every width."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.structures.shrink import StructureCut, apply_cuts, isolated_structure
from tests.fuzz.graphs import Recipe, build
from tests.structures.test_structures import _check_exact, _discover

VIEW_FLATTEN = Recipe(start="image", picks=(0, 8), opset=17, seed=0)
TORCHSCRIPT_ATTENTION = Recipe(start="sequence", picks=(7,), opset=17, seed=1)


def _bound(recipe: Recipe) -> tuple[onnx.ModelProto, dict]:
    model, shapes = build(recipe)
    assert any(n.op_type == "Shape" for n in model.graph.node)  # the run-time pattern is there
    return model, {name: (2, *shape[1:]) for name, shape in shapes.items()}


@pytest.mark.parametrize(("recipe", "kind"), [(VIEW_FLATTEN, "channels"),
                                              (TORCHSCRIPT_ATTENTION, "heads")])
def test_run_time_targets_form_exact_structures(recipe, kind):
    model, shapes = _bound(recipe)
    _, found = _discover(model, shapes)
    assert kind in {s.kind for s in found.structures}, [b.reason for b in found.blocked]
    assert not [b for b in found.blocked if "Shape" in b.reason]
    _check_exact(model, shapes, batches=(1, 3), seed=recipe.seed)


@pytest.mark.parametrize("recipe", [VIEW_FLATTEN, TORCHSCRIPT_ATTENTION])
def test_isolated_structure_with_run_time_targets_runs_at_every_width(recipe):
    model, shapes = _bound(recipe)
    analysis, found = _discover(model, shapes)
    candidates = {c.name: c for c in analysis.candidates}
    assert found.structures
    for structure in found.structures:
        isolated = isolated_structure(model, structure, candidates)
        onnx.checker.check_model(isolated, full_check=True)
        producer = candidates[structure.producers[0]]
        x = np.random.default_rng(0).standard_normal(producer.sites[0].input_shape)
        for keep in (structure.width, 1):
            cut = apply_cuts(copy.deepcopy(isolated),
                             [StructureCut(structure, np.arange(keep))],
                             {**candidates})
            session = ort.InferenceSession(cut.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            (y,) = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
            assert y.shape == tuple(candidates[structure.consumer].sites[0].output_shape)
