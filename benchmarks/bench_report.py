"""docs/benchmarks.md and its plot from the JSON ``benchmarks/bench.py`` writes.

Kept apart from the runs so the page can be re-rendered (``bench.py --render JSON``) without
measuring anything again, and so every number on the page comes from that one JSON.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

BASELINES = ("uniform magnitude", "uniform + recon", "onnxsim magnitude", "onnxsim wanda",
             "onnxsim wanda+ridge")
METHODS = ("onnxprune", *BASELINES)
STYLE = {  # method -> (colour, marker): one look per method in every panel
    "onnxprune": ("tab:red", "o"), "uniform magnitude": ("tab:gray", "v"),
    "uniform + recon": ("tab:blue", "^"), "onnxsim magnitude": ("tab:olive", "s"),
    "onnxsim wanda": ("tab:green", "D"), "onnxsim wanda+ridge": ("tab:purple", "P"),
}
X_TICKS = (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)
UNITS = {
    "accuracy": "accuracy on held-out test set",
    "agreement": "top-1 agreement with dense",
    "cos_mean": "mean cosine of sentence embedding vs dense",
    "nn_agreement": "nearest-neighbour agreement with dense",
    "top1_agreement": "top-1 agreement with dense",
    "top5_agreement": "top-5 agreement with dense",
}
TITLES = {
    "digits_mlp": "digits MLP (1024×64)", "digits_cnn": "digits CNN (64×1×8×8)",
    "digits_transformer": "digits transformer (256×8×8)", "mnist": "MNIST CNN (64×1×28×28)",
    "minilm": "MiniLM-L6 (8×128 tokens)", "effnet": "EfficientNet-Lite0 (1×3×224²)",
}


def curve(model: dict, method: str) -> list[tuple[float, float]]:
    """(measured speedup, headline metric) of every written model of ``method``, by speed."""
    key = model["headline"]
    names = {method, "onnxprune (max)"} if method == "onnxprune" else {method}
    return sorted((p["speedup"], p["metric"][key]) for p in model["points"]
                  if p["method"] in names and "speedup" in p)


def at_speed(points: list[tuple[float, float]], speed: float) -> float | None:
    """Best metric ``points`` reach at ``speed`` or faster: any point at least as fast, or the
    straight line between two neighbours that bracket ``speed``. None when none is that fast."""
    found = [metric for s, metric in points if s >= speed]
    for (s0, m0), (s1, m1) in zip(points, points[1:], strict=False):
        if s0 <= speed <= s1 and s1 > s0:
            found.append(m0 + (m1 - m0) * (speed - s0) / (s1 - s0))
    return max(found) if found else None


def declined(model: dict, method: str) -> str | None:
    notes = [p.get("note", "") for p in model["points"] if p["method"] == method]
    written = [p for p in model["points"] if p["method"] == method and "speedup" in p]
    if notes and not written:
        return "declined" if any("declined" in n for n in notes) else "failed"
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def comparison_table(model: dict) -> tuple[list[str], list[str]]:
    """The per-target table at equal measured speedup, and the cells where onnxprune is behind."""
    key = model["headline"]
    lines = [f"| target | onnxprune: measured speedup [re-measures] | {key} | fidelity bound "
             "held | run s | " + " | ".join(BASELINES) + " |",
             "|---|---|---|---|---|" + "---|" * len(BASELINES)]
    behind = []
    for p in model["points"]:
        if not p["method"].startswith("onnxprune"):
            continue
        target = "max" if "max" in p["method"] else f"{p['setting']:g}x"
        if "speedup" not in p:
            lines.append(f"| {target} | not written (exit {p['exit']}): {p.get('note', '')} "
                         f"| | | {p['wall_s']:.0f} |" + " |" * len(BASELINES))
            continue
        mine = p["metric"][key]
        cells = []
        for method in BASELINES:
            reason = declined(model, method)
            other = None if reason else at_speed(curve(model, method), p["speedup"])
            if reason:
                cells.append(reason)
            elif other is None:
                fastest = max((s for s, _ in curve(model, method)), default=None)
                cells.append("not reached" + (f" (max {fastest:.2f}x)" if fastest else ""))
            else:
                cells.append(f"**{other:.4f}**" if other > mine else f"{other:.4f}")
                if other > mine:
                    behind.append(f"{model['model']} at {p['speedup']:.2f}x: {method} "
                                  f"{other:.4f} vs onnxprune {mine:.4f} ({key})")
        bench = ", ".join(f"{b:.2f}" for b in p["bench"])
        held = {True: "yes", False: "no", None: "-"}[p.get("within_bound")]
        lines.append(f"| {target} | {p['speedup']:.2f}x [{bench}] | {mine:.4f} | {held} | "
                     f"{p['wall_s']:.0f} | " + " | ".join(cells) + " |")
    return lines, behind


def points_table(model: dict) -> list[str]:
    lines = ["| method | setting | measured speedup [re-measures] | metrics | run s | note |",
             "|---|---|---|---|---|---|"]
    for p in model["points"]:
        setting = (f"--speedup {p['setting']:g}" if p["method"].startswith("onnxprune")
                   else f"{p['setting']:.0%}")
        if "speedup" in p:
            speed = f"{p['speedup']:.2f}x [{', '.join(f'{b:.2f}' for b in p['bench'])}]"
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in p["metric"].items())
        else:
            speed, metrics = "-", "-"
        note = p.get("note", "")[:160].replace("|", "/")
        lines.append(f"| {p['method']} | {setting} | {speed} | {metrics} | {p['wall_s']:.0f} | "
                     f"{note} |")
    return lines


def markdown(results: dict, image: str) -> str:
    m = results["machine"]
    dirty = " (with uncommitted changes)" if m["dirty"] else ""
    lines = [
        "# Benchmarks: task metric vs measured speedup, onnxprune beside its baselines",
        "",
        "Every number on this page comes from one run of `make bench` "
        f"(`{results['command']}`), written by `benchmarks/bench_report.py` from its JSON.",
        "",
        f"- commit `{m['commit']}`{dirty}, {m['date']}; whole run {results['wall_s'] / 60:.1f} "
        "min",
        f"- machine: {m['cpu']}, {m['cores']} cores; CPU EP, onnxruntime {m['onnxruntime']}, "
        f"{m['threads']} intra-op threads, Python {m['python']}",
    ]
    if results.get("tiny"):
        lines += ["", "**Smoke run (`--tiny`): timings too short to mean anything.**"]
    lines += [
        "",
        "Methods. **onnxprune**: `onnxprune IN OUT --speedup T --calib DIR --no-fidelity-bound "
        "--best-effort` (the bound is off so that every method is compared at equal speed; the "
        "column *fidelity bound held* says whether the default bound (`--max-error 0.2`, and "
        "since issue 21 `--max-channel-error 0.5`) held, i.e. "
        "whether a plain run would have exited 0); *max* is the same at 0.9 × the Amdahl bound. "
        "**uniform magnitude**: `--sparsity L --layouts structure` without data (magnitude "
        "masks, no reconstruction). **uniform + recon**: the same with `--calib` (OBS "
        "reconstruction). **onnxsim magnitude / wanda / wanda+ridge**: onnxsim's "
        "structured channel and attention-head pruning by weight L2 norm, by Wanda "
        "(`|W|·‖X‖` on the same calibration samples), and Wanda followed by its ridge-regression "
        "refit of the surviving MatMul/Gemm weights (`benchmarks/bench_onnxsim.py` says which "
        "functions). Baselines run at the levels L listed per model.",
        "",
        "Speed: every written model is re-measured against the dense one with `onnxprune bench` "
        "(interleaved runs in 5 fresh session pairs, median of pair ratios) in fresh processes; "
        "the cell is the median over processes, each process's result in brackets. Metric: on "
        "evaluation data disjoint from the calibration data. A baseline cell is the best metric "
        "that method reaches at onnxprune's measured speedup or faster (a level at least as "
        "fast, or the straight line between the two levels that bracket it); **bold** where it "
        "beats onnxprune; *declined* where onnxsim prunes nothing in the graph.",
        "",
        f"![metric vs measured speedup]({image})",
        "",
    ]
    behind_all = []
    for model in results["models"]:
        bound = "-" if model["bound"] is None else f"{model['bound']:.2f}x"
        dense = ", ".join(f"{k} {v:.4f}" for k, v in model["dense"].items())
        table, behind = comparison_table(model)
        behind_all += behind
        plan = model["plan"]
        lines += [f"## {TITLES.get(model['model'], model['model'])}", "",
                  f"Dense: {dense}. Amdahl bound (`onnxprune profile`): {bound}. Levels "
                  f"{', '.join(f'{x:.0%}' for x in plan['levels'])}; `onnxprune bench "
                  f"--seconds {plan['seconds']:g}` in {plan['repeats']} processes per onnxprune "
                  f"point, 1 per baseline point; `--search-budget {plan['search_budget']}"
                  f" --verify-sessions {plan.get('verify_sessions', 5)}`; model wall time "
                  f"{model['wall_s'] / 60:.1f} min.",
                  "", *table, "", "<details><summary>every run</summary>", "",
                  *points_table(model), "", "</details>", ""]
    if any(declined(model, m) == "declined" for model in results["models"] for m in BASELINES):
        lines += ["Where onnxsim declines: its chain walker finds no FFN chain when a bias `Add` "
                  "sits between the up-projection MatMul and an erf-GELU (every exported "
                  "`Linear` + GELU), and its head pruning touches only fused attention ops, which "
                  "these exports do not have (`benchmarks/bench_onnxsim.py` gives the check).",
                  ""]
    lines += ["## Where onnxprune is not ahead", ""]
    lines += [f"- {b}" for b in behind_all] or ["- nowhere in this run."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    models = results["models"]
    cols = 2 if len(models) > 1 else 1
    rows = (len(models) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.4 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=False):
        key = model["headline"]
        for method in METHODS:
            points = curve(model, method)
            if not points:
                continue
            colour, marker = STYLE[method]
            ax.plot(*zip(*points, strict=True), color=colour, marker=marker, label=method,
                    linewidth=2.2 if method == "onnxprune" else 1.2, markersize=6)
        ax.plot([1.0], [model["dense"][key]], marker="*", color="black", markersize=14,
                linestyle="none", label="dense")
        if model["bound"] is not None:
            ax.axvline(model["bound"], color="black", linestyle="--", linewidth=1,
                       label="Amdahl bound")
        gave_up = [m for m in BASELINES if declined(model, m)]
        if gave_up:  # lower left: slow and inaccurate, where no curve goes
            ax.text(0.02, 0.03, "\n".join(f"{m}: {declined(model, m)}" for m in gave_up),
                    transform=ax.transAxes, fontsize=8.5, color="dimgray", va="bottom")
        # Log scale: the bound can sit at 10-20x while every method's points are below 5x.
        ax.set_xscale("log", base=2)
        right = ax.get_xlim()[1]
        ticks = [t for t in X_TICKS if t <= right and (right < 6 or t != 1.25)]  # no overlap
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}×"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(TITLES.get(model["model"], model["model"]), fontsize=11)
        ax.set_xlabel("measured speedup over dense (log scale, onnxprune bench)")
        ax.set_ylabel(UNITS.get(key, key))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    handles, labels = {}, {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
            labels.setdefault(label, label)
    fig.tight_layout()
    # Below the panels, never over a curve; bbox_inches="tight" keeps it inside the image.
    fig.legend(list(handles.values()), list(labels), loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=4 if cols > 1 else 3, frameon=False,
               fontsize=10)
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)


def _atomic(path: Path, write) -> None:
    """Write via a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write(results: dict, docs: Path) -> None:
    image = docs / "img" / "benchmarks.png"
    plot(results, image)
    text = markdown(results, os.path.relpath(image, docs))
    _atomic(docs / "benchmarks.md", lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {docs / 'benchmarks.md'} and {image}")
