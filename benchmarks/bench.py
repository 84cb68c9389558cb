"""The benchmark users decide from: task metric vs measured speedup, onnxprune beside its baselines.

For every model: the dense metric, the Amdahl bound (``onnxprune profile --json``), then points
of metric vs measured speedup for each method:

* ``onnxprune``: ``--speedup T --calib --no-fidelity-bound --best-effort`` at each target (the
  method at equal speed with the baselines, which have no bound; whether the held-out fidelity
  bound held, i.e. whether a plain run would exit 0, is recorded per point), and the reachable
  maximum: the same at 0.9 x the Amdahl bound;
* ``uniform magnitude``: ``--sparsity L --layouts structure`` without data (masks by magnitude,
  no reconstruction);
* ``uniform + recon``: the same with ``--calib`` (OBS reconstruction);
* ``onnxsim magnitude`` / ``onnxsim wanda`` / ``onnxsim wanda+ridge``: onnxsim's own structured
  pruning at ratio L (``benchmarks/bench_onnxsim.py``), or "declined" where it prunes nothing.

Every written model is re-measured with ``onnxprune bench`` (fresh ORT sessions) in ``repeats``
fresh processes — the same harness for every method — and scored on the model's task metric on
evaluation data disjoint from calibration (``models/build_benchmarks.py --score`` for the real
models, the 300 held-out digits for the digits models). Baselines are compared with onnxprune at
the same measured speedup by interpolating between the levels that bracket it.

    .venv/bin/python benchmarks/bench.py                 # full: docs/benchmarks.md + docs/img/
    .venv/bin/python benchmarks/bench.py --quick         # subset + regression guard
    .venv/bin/python benchmarks/bench.py --quick --record   # store the guard's baseline
    .venv/bin/python benchmarks/bench.py --render .cache/bench/results.json   # docs only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from onnxprune.config.settings import DEFAULT_MAX_CHANNEL_ERROR, DEFAULT_MAX_ERROR

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

import bench_guard  # noqa: E402
import bench_report  # noqa: E402
import speedup_targets  # noqa: E402  (the model registry and the CLI runner are shared)

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".cache" / "bench"
ONNXSIM_METHODS = ("magnitude", "wanda", "wanda+ridge")


@dataclass(frozen=True)
class Plan:
    """What to run on one model, sized so the whole ``make bench`` stays under 30 min on 2 cores.

    Attributes:
        targets: ``--speedup`` targets; "max" adds 0.9 x the Amdahl bound.
        levels: uniform sparsities and onnxsim ratios (the sweep the baselines interpolate in).
        seconds / repeats: ``onnxprune bench`` budget per process, and fresh processes per
            onnxprune point (baseline points get one: they are many, and only interpolated).
        search_budget / verify_sessions: onnxprune's ``--search-budget`` and
            ``--verify-sessions`` (its own check; every point is re-measured anyway).
        shapes: overrides the registry's deployment shapes.
        onnxsim: False skips the peer (the quick run).
    """

    targets: tuple[float | str, ...]
    levels: tuple[float, ...]
    seconds: float = 2.0
    repeats: int = 2
    search_budget: str = "5"
    verify_sessions: int = 3
    shapes: tuple[str, ...] | None = None
    onnxsim: bool = True
    uniform: bool = True


# Budget on the quiet 2-core VM (from the run times in docs/contract.md; not measured whole):
# digits ~3-4 min each, MNIST ~6, MiniLM ~9 (one run takes 2-3 min: 1.5x and the maximum only,
# two levels), EfficientNet-Lite0 ~7 (1.25x and the maximum): ~32 min in all.
LEVELS = (0.25, 0.5, 0.75)
FULL: dict[str, Plan] = {
    "digits_mlp": Plan((1.25, 1.5, 2, 3, "max"), LEVELS, seconds=1),
    "digits_cnn": Plan((1.25, 1.5, 2, 3, "max"), LEVELS, seconds=1),
    "digits_transformer": Plan((1.25, 1.5, 2, "max"), LEVELS, seconds=1),
    "mnist": Plan((1.25, 1.5, 2, 3, "max"), LEVELS),
    "minilm": Plan((1.5, "max"), (0.25, 0.5), seconds=3),
    # Lite0 loses top-1 fast (docs/contract-effnet.md): lower levels say more than 75%.
    "effnet": Plan((1.25, "max"), (0.125, 0.25, 0.5), seconds=2,
                   shapes=("input=1x3x224x224",)),
}
QUICK: dict[str, Plan] = {
    "digits_mlp": Plan((2,), (), seconds=1.5, onnxsim=False, uniform=False),
    "digits_cnn": Plan((2,), (), seconds=1.5, onnxsim=False, uniform=False),
    "mnist": Plan((2,), (), onnxsim=False, uniform=False),
}
# The number each model is judged by (first) and the others printed with it.
METRICS = {
    "digits_mlp": ("accuracy",), "digits_cnn": ("accuracy",), "digits_transformer": ("accuracy",),
    "mnist": ("accuracy", "agreement"), "minilm": ("cos_mean", "nn_agreement"),
    "effnet": ("top1_agreement", "top5_agreement"),
}
# Evaluation samples per model: the guard's binomial noise on an accuracy-like metric.
EVAL_SAMPLES = {"digits_mlp": 300, "digits_cnn": 300, "digits_transformer": 300,
                "mnist": 10000, "minilm": 256, "effnet": 264}


@dataclass
class Model:
    name: str
    path: Path
    shapes: list[str]
    calib: Path
    plan: Plan
    cache: Path
    points: list[dict] = field(default_factory=list)

    @property
    def shape_args(self) -> list[str]:
        return [a for s in self.shapes for a in ("--shape", s)]


def score(model: Model, path: Path) -> dict[str, float]:
    """The model's task metric on its evaluation set (disjoint from the calibration data)."""
    if model.name.startswith("digits_"):
        import evaluate_digits

        return {"accuracy": evaluate_digits.accuracy(str(path))}
    import build_benchmarks

    kind = "mnist" if model.name == "mnist" else model.name
    return build_benchmarks.score(kind, path, BENCH)


def measure(model: Model, path: Path, threads: int, repeats: int) -> list[float]:
    """Speedup of ``path`` over the dense model, one ``onnxprune bench`` process per repeat."""
    speedups = []
    for _ in range(repeats):
        result = speedup_targets.cli(
            "bench", str(model.path), str(path), *model.shape_args, "--threads", str(threads),
            "--seconds", str(model.plan.seconds), "--json", "-")
        if result.returncode != 0:
            raise RuntimeError(f"onnxprune bench failed: {result.stderr[-400:]}")
        speedups.append(json.loads(result.stdout)["speedup"])
    return speedups


def finish(model: Model, point: dict, out: Path, threads: int) -> dict:
    """Re-measure and score a written model; the point says why when nothing was written."""
    if out.exists():
        repeats = model.plan.repeats if point["method"].startswith("onnxprune") else 1
        point["bench"] = measure(model, out, threads, repeats)
        point["speedup"] = statistics.median(point["bench"])
        point["metric"] = score(model, out)
        out.unlink()
    print(json.dumps({"model": model.name, **point}), flush=True)
    model.points.append(point)
    return point


def run_onnxprune(model: Model, tmp: Path, threads: int, setting: float, label: str,
                  *extra: str) -> None:
    out, report = tmp / "out.onnx", tmp / "report.json"
    for path in (out, report):
        path.unlink(missing_ok=True)
    started = time.monotonic()
    result = speedup_targets.cli(
        str(model.path), str(out), *model.shape_args, "--threads", str(threads), "--json",
        str(report), "--quiet", "--cache-dir", str(model.cache), *extra)
    point = {"method": label, "setting": setting, "exit": result.returncode,
             "wall_s": round(time.monotonic() - started, 1)}
    if report.exists():
        data = json.loads(report.read_text())
        error = (data.get("fidelity") or {}).get("relative_error")
        channel = (data.get("fidelity") or {}).get("channel_error")
        point["relative_error"], point["channel_error"] = error, channel
        # The bound is off in these runs; would the default one (both measures) have held?
        point["within_bound"] = None if error is None else (
            error <= DEFAULT_MAX_ERROR
            and (channel is None or channel <= DEFAULT_MAX_CHANNEL_ERROR))
        point["in_run"] = (data.get("measured_speedup") or {}).get("speedup")
    if result.returncode != 0:  # refused, or best effort: its own last line says which
        lines = (result.stderr + result.stdout).strip().splitlines()
        point["note"] = (speedup_targets.error_message(result.stderr) if not out.exists()
                         else lines[-1] if lines else "")
    finish(model, point, out, threads)


def run_onnxsim(model: Model, tmp: Path, threads: int) -> None:
    """Every onnxsim method at every level in one process (its import alone takes seconds)."""
    import bench_onnxsim

    levels = ",".join(f"{level:g}" for level in model.plan.levels)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_onnxsim.py"), str(model.path),
         str(tmp), "--ratios", levels, "--calib", str(model.calib)],
        capture_output=True, text=True, cwd=ROOT)
    done = set()
    for line in result.stdout.splitlines():
        if not line.startswith("{"):
            continue
        info = json.loads(line)
        point = {"method": f"onnxsim {info['method']}", "setting": info["ratio"], "exit": 0,
                 "wall_s": info["wall_s"]}
        if not info["pruned"]:
            point["note"] = "declined: onnxsim prunes nothing in this graph"
        done.add(info["method"])
        finish(model, point, bench_onnxsim.output_path(tmp, info["method"], info["ratio"]),
               threads)
    if result.returncode != 0:
        reason = "onnxsim failed: " + " ".join(result.stderr.split()[-40:])
        for method in ONNXSIM_METHODS:
            if method not in done:
                finish(model, {"method": f"onnxsim {method}", "setting": None,
                               "exit": result.returncode, "wall_s": 0.0, "note": reason},
                       tmp / "none.onnx", threads)


def bench_model(model: Model, threads: int) -> dict:
    plan, started = model.plan, time.monotonic()
    dense = score(model, model.path)
    profile = speedup_targets.cli(
        "profile", str(model.path), *model.shape_args, "--threads", str(threads), "--json", "-",
        "--quiet", "--cache-dir", str(model.cache))
    bound = json.loads(profile.stdout)["amdahl_bound"] if profile.returncode == 0 else None
    calib = ["--calib", str(model.calib)]
    with tempfile.TemporaryDirectory(dir=BENCH) as folder:
        tmp = Path(folder)
        for target in plan.targets:
            if target == "max":
                if bound is None:
                    continue
                target = round(0.9 * bound, 2)
                label = "onnxprune (max)"
            else:
                label = "onnxprune"
            run_onnxprune(model, tmp, threads, float(target), label, "--speedup", str(target),
                          *calib, "--no-fidelity-bound", "--best-effort", "--search-budget",
                          plan.search_budget, "--verify-sessions", str(plan.verify_sessions))
        for level in plan.levels if plan.uniform else ():
            run_onnxprune(model, tmp, threads, level, "uniform magnitude", "--sparsity",
                          str(level), "--layouts", "structure", "--verify-sessions", "1")
            run_onnxprune(model, tmp, threads, level, "uniform + recon", "--sparsity",
                          str(level), "--layouts", "structure", "--verify-sessions", "1",
                          *calib, "--no-fidelity-bound")
        if plan.onnxsim:
            run_onnxsim(model, tmp, threads)
    return {"model": model.name, "dense": dense, "bound": bound, "shapes": model.shapes,
            "plan": {"targets": [str(t) for t in plan.targets], "levels": list(plan.levels),
                     "seconds": plan.seconds, "repeats": plan.repeats,
                     "search_budget": plan.search_budget,
                     "verify_sessions": plan.verify_sessions},
            "headline": METRICS[model.name][0], "eval_samples": EVAL_SAMPLES[model.name],
            "points": model.points, "wall_s": round(time.monotonic() - started, 1)}


def machine(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return result.stdout.strip()

    return {"cpu": cpu, "cores": os.cpu_count(), "onnxruntime": ort.__version__,
            "threads": threads, "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the subset + regression guard against benchmarks/baseline.json")
    parser.add_argument("--record", action="store_true",
                        help="with --quick: store this run as the guard's baseline")
    parser.add_argument("--models", default=None, help="comma-separated subset of the plan")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true",
                        help="smoke settings (1 target + max, 2 levels, 0.5 s timings): checks the "
                             "harness, measures nothing")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs",
                        help="where benchmarks.md and img/ go (full run)")
    parser.add_argument("--baseline", type=Path, default=ROOT / "benchmarks" / "baseline.json",
                        help="the guard's record (--quick)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only write docs/benchmarks.md and the plots from a results JSON")
    args = parser.parse_args()
    if args.record and not args.quick:
        parser.error("--record stores the --quick run's headlines: add --quick")
    if args.render is not None:
        bench_report.write(json.loads(args.render.read_text()), args.docs)
        return
    plans = QUICK if args.quick else FULL
    names = args.models.split(",") if args.models else list(plans)
    unknown = [n for n in names if n not in plans]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(plans)}")
    BENCH.mkdir(parents=True, exist_ok=True)
    out = args.out or BENCH / ("quick.json" if args.quick else "results.json")
    started = time.monotonic()
    results = {"machine": machine(args.threads), "quick": args.quick, "tiny": args.tiny,
               "command": " ".join(["benchmarks/bench.py", *sys.argv[1:]]), "models": []}
    for name in names:
        path, shapes, calib = speedup_targets.MODELS[name]
        plan = plans[name]
        if args.tiny:
            plan = Plan((plan.targets[0], "max"), plan.levels[1:3], seconds=0.5, repeats=1,
                        search_budget="0", verify_sessions=1, shapes=plan.shapes,
                        onnxsim=plan.onnxsim, uniform=plan.uniform)
        if not path.exists():
            print(f"skip {name}: {path} not built (make bench-models)")
            continue
        model = Model(name, path, list(plan.shapes or shapes), ROOT / calib, plan,
                      BENCH / "latency")
        results["models"].append(bench_model(model, args.threads))
        print(f"{name}: {results['models'][-1]['wall_s'] / 60:.1f} min, "
              f"{(time.monotonic() - started) / 60:.1f} min so far", flush=True)
    results["wall_s"] = round(time.monotonic() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out} ({results['wall_s']:.0f} s)")
    if not args.quick:
        bench_report.write(results, args.docs)
        return
    baseline = args.baseline
    if args.record:
        if args.tiny:
            sys.exit("not recorded: a --tiny run measures nothing worth guarding")
        bench_guard.record(results, baseline)
        print(f"recorded {baseline}")
        return
    failures = bench_guard.check(results, baseline)
    for line in failures:
        print(f"REGRESSION {line}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
