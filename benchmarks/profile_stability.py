"""The table of ``benchmarks/profile_stability.sh``'s runs: bound ± spread per run, max/min − 1.

    .venv/bin/python benchmarks/profile_stability.py OUTDIR
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

MODELS = ("mlp", "cnn", "transformer", "mnist", "minilm", "effnet")


def main(out: Path) -> None:
    walls: dict[str, list[float]] = collections.defaultdict(list)
    for line in (out / "wall.txt").read_text().splitlines():
        name, _, seconds = line.split()
        walls[name].append(float(seconds))
    print("| model | measured bound ± spread, run 1 / 2 / 3 | the table alone predicted "
          "| max/min − 1 | wall s |")
    print("|---|---|---|---|---|")
    for name in MODELS:
        runs = [json.loads(p.read_text()) for i in (1, 2, 3)
                if (p := out / f"{name}{i}.json").exists()]
        if not runs:
            continue
        bounds = [r["amdahl_bound"] for r in runs]
        cells = " / ".join(f"{r['amdahl_bound']:.2f} ± "
                           f"{r['amdahl_bound'] * r['amdahl_bound_spread']:.2f}{_sessions(r)}"
                           for r in runs)
        table = " / ".join(f"{r.get('amdahl_bound_predicted', float('nan')):.2f}" for r in runs)
        wall = " / ".join(f"{w:.0f}" for w in walls[name])
        print(f"| {name} | {cells} | {table} | {max(bounds) / min(bounds) - 1:.0%} | {wall} |")


def _sessions(run: dict) -> str:
    """`` (n)``: the bound's sessions measured in this run; `` (n+m)`` with m from earlier runs."""
    measured = run.get("amdahl_bound_measured") or {}
    total, earlier = len(measured.get("sessions", [])), measured.get("sessions_earlier", 0)
    if not total:
        return ""
    return f" ({total - earlier}+{earlier})" if earlier else f" ({total})"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
