"""The whole pipeline on random graphs: every run is exact against masked-dense, or refused.

Each example builds a random graph (:mod:`tests.fuzz.graphs`), random calibration data and a random
configuration, and runs :func:`onnxprune.pipeline.prune.prune` with the seeded synthetic latency
source, so analysis, structure discovery, options, reconstruction, allocation, materialization and
the library's own checks all run for real, deterministically and in well under a second. Allowed
outcomes: a written model that passes ``onnx.checker``, loads in ONNX Runtime, and equals the
masked-dense model (the input model with the chosen weights written in) on random inputs at batch
sizes and sequence lengths it was not pruned at; or a refusal with exit code 2 or 3 (``UserError``,
``TargetUnreachableError``) and nothing written. Anything else fails.

``make test`` runs ``FUZZ_EXAMPLES`` (default 300) derandomized examples; ``make fuzz`` runs
thousands with fresh randomness. ``FUZZ_LOG=path`` appends one JSON line per example (family,
outcome) for the closing table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from onnxprune import PruneConfig
from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.pipeline.prune import prune
from tests.fuzz.graphs import SEQ, STARTS, Recipe, build, random_feed
from tests.fuzz.reference import (
    PRUNE_BATCH,
    RecordingTiming,
    assert_matches_masked_dense,
    masked_dense,
    run_model,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ or os.environ.get("FUZZ_DERANDOMIZE") == "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
    print_blob=True,
)
CHECK_BATCHES = ((1, SEQ), (3, SEQ + 2))
"""(batch, sequence length) the output is compared at; it was pruned at (2, SEQ)."""


recipes = st.builds(
    Recipe,
    start=st.sampled_from(STARTS),
    picks=st.lists(st.integers(0, 10), min_size=1, max_size=4).map(tuple),
    opset=st.sampled_from([11, 13, 17, 18, 21]),
    seed=st.integers(0, 2**16),
    second_output=st.booleans(),
)
configs = st.fixed_dictionaries({
    "mode": st.sampled_from(["speedup", "speedup", "speedup", "sparsity", "nm"]),
    "speedup": st.sampled_from([1.1, 1.3, 1.6, 2.5, 50.0]),
    "layout": st.sampled_from(["structure", "channel", "channel", "block", "unstructured"]),
    "sparsity": st.sampled_from([0.25, 0.5, 0.75]),
    "calib": st.booleans(),
    "best_effort": st.booleans(),
    "max_error": st.sampled_from([0.05, 0.5, 10.0, 10.0]),
    "max_channel_error": st.sampled_from([0.2, 1.0, 1e9, 1e9]),
    "search": st.sampled_from([0, 4]),
})


def _config(draw: dict, shapes: dict, calib_dir: Path | None) -> PruneConfig:
    common = dict(shapes={n: (PRUNE_BATCH, *s[1:]) for n, s in shapes.items()}, threads=1,
                  calib_dir=calib_dir, best_effort=draw["best_effort"],
                  max_error=draw["max_error"], max_channel_error=draw["max_channel_error"],
                  verify_sessions=1, verify_seconds=0.0,
                  search_budget=3600.0 if draw["search"] else 0.0,
                  search_evaluations=draw["search"] or None, verify_rounds=2,
                  # The fuzz checks the rewrite against masked-dense; global recovery changes
                  # the weights by design (its own checks: tests/recover).
                  recover=False)
    if draw["mode"] == "speedup":
        return PruneConfig(speedup=draw["speedup"], **common)
    if draw["mode"] == "nm":
        return PruneConfig(nm=(2, 4), **common)
    return PruneConfig(sparsity=draw["sparsity"], layouts=(draw["layout"],), **common)


def write_calib(folder: Path, model: onnx.ModelProto, shapes: dict, seed: int) -> Path:
    folder.mkdir()
    for index in range(4):
        feed = random_feed(model, shapes, batch=3, seed=seed + index)
        np.savez(folder / f"batch{index}.npz", **feed)
    return folder


def _log(recipe: Recipe, draw: dict, outcome: str) -> None:
    family = f"{recipe.start}: {'+'.join(recipe.blocks())}"
    event(f"{recipe.start} {draw['mode']}: {outcome.split(':')[0]}")
    path = os.environ.get("FUZZ_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"family": family, "opset": recipe.opset, "mode": draw["mode"],
                                  "calib": draw["calib"], "outcome": outcome}) + "\n")


def check_one(recipe: Recipe, draw: dict, tmp: Path) -> str:
    """Run one example; returns its outcome (fails the test on anything not allowed)."""
    model, shapes = build(recipe)
    source = tmp / "in.onnx"
    onnx.save(model, source)
    before = source.read_bytes()
    calib = write_calib(tmp / "calib", model, shapes, recipe.seed) if draw["calib"] else None
    out = tmp / "out.onnx"
    timing = RecordingTiming(recipe.seed)
    try:
        report = prune(source, out, _config(draw, shapes, calib), timing=timing)
    except (UserError, TargetUnreachableError) as exc:
        assert source.read_bytes() == before
        written = out.exists()
        code = "exit 2" if isinstance(exc, UserError) else "exit 3"
        assert not written or draw["best_effort"], f"{code} but {out} was written"
        return f"{code}: {str(exc).splitlines()[0][:160]}"
    assert source.read_bytes() == before
    assert report.written and out.exists()
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=not pruned.graph.sparse_initializer)
    weights = timing.measured.get(pruned.SerializeToString())
    assert weights is not None, "the written model is not one that was measured"
    reference = masked_dense(model, shapes, weights)
    assert_matches_masked_dense(pruned, reference, [
        random_feed(model, shapes, batch, recipe.seed + 100 + batch, seq)
        for batch, seq in CHECK_BATCHES])
    layouts = sorted({layer.option.layout for layer in report.layers} - {"dense"})
    return "pruned: " + (",".join(layouts) or "all dense")


@FUZZ_SETTINGS
@given(recipe=recipes, draw=configs)
def test_pipeline_on_random_graphs_is_exact_or_refused(recipe, draw, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    try:
        outcome = check_one(recipe, draw, tmp)
    except Exception:
        _log(recipe, draw, "FAILED")
        raise
    _log(recipe, draw, outcome)


@pytest.mark.parametrize("start", STARTS)
def test_every_start_builds_a_model_onnx_runtime_runs(start):
    """The generator itself: valid models with a dynamic batch (else the fuzzer tests nothing)."""
    recipe = Recipe(start=start, picks=(0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 8), opset=17, seed=3)
    model, shapes = build(recipe)
    for batch, seq in ((1, SEQ), (4, SEQ + 2)):
        (y, *_) = run_model(model, random_feed(model, shapes, batch, 0, seq))
        assert y.shape[0] == batch and np.all(np.isfinite(y))
        if start in ("sequence", "tokens"):
            assert y.shape[1] == seq
