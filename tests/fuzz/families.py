"""What each graph family of the fuzzer gets: a markdown table for the closing note.

    PYTHONPATH=. .venv/bin/python -m tests.fuzz.families

Every block of :mod:`tests.fuzz.graphs` is built alone on its start stream (plus the output head)
and pruned to 1.3x with the synthetic latency source and random calibration data; the row says
which layouts were chosen, which structures were found, and why the others were declined (the
pipeline's own reasons). Speeds are synthetic: the table is about what is *possible* per family,
never about speed.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from onnxprune import PruneConfig
from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.pipeline.prune import prune
from tests.fuzz.graphs import BLOCKS, Recipe, build
from tests.fuzz.reference import PRUNE_BATCH, RecordingTiming
from tests.fuzz.test_fuzz import write_calib

START_OF_RANK = {4: "image", 3: "sequence", 2: "vector"}


def describe(recipe: Recipe) -> tuple[str, str, str]:
    """(chosen layouts, structures found, declined with reason) of one recipe."""
    model, shapes = build(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = folder / "in.onnx"
        source.write_bytes(model.SerializeToString())
        calib = write_calib(folder / "calib", model, shapes, recipe.seed)
        config = PruneConfig(speedup=1.3, calib_dir=calib, threads=1, search_budget=0,
                             shapes={n: (PRUNE_BATCH, *s[1:]) for n, s in shapes.items()},
                             verify_sessions=1, verify_rounds=2, max_error=10.0,
                             max_channel_error=1e9, recover=False,  # exactness: see test_fuzz
                             best_effort=True)
        try:
            report = prune(source, folder / "out.onnx", config, timing=RecordingTiming(1))
        except (UserError, TargetUnreachableError) as exc:
            return f"refused: {str(exc).splitlines()[0][:90]}", "", ""
    chosen = sorted({f"{layer.op} {layer.option.layout}" for layer in report.layers})
    found = sorted({s["kind"] for s in report.structures})
    blocked = sorted({b["reason"][:80] for b in report.structures_blocked
                      if "reach the graph output" not in b["reason"]}
                     | {f"{s.op}: {s.reason[:60]}" for s in report.skipped})
    return ", ".join(chosen), ", ".join(found) or "-", "; ".join(blocked) or "-"


def main() -> None:
    logging.disable(logging.WARNING)
    print("| family | start | chosen (op layout) | structures | declined: reason |")
    print("|---|---|---|---|---|")
    for rank, blocks in BLOCKS.items():
        for pick, block in enumerate(blocks):
            for start in ([START_OF_RANK[rank], "tokens"] if rank == 3 else [START_OF_RANK[rank]]):
                recipe = Recipe(start=start, picks=(pick,), opset=17, seed=4)
                chosen, found, blocked = describe(recipe)
                print(f"| {block.__name__[2:]} | {start} | {chosen} | {found} | {blocked} |")


if __name__ == "__main__":
    main()
