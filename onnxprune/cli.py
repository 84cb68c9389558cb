"""Command line: flags -> config -> library call -> printed summary. No pruning logic lives here.

Exit codes: 0 done; 1 internal error; 2 bad usage or bad input (one line, never a traceback);
3 speed target not reachable.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console

from onnxprune.common.errors import OnnxPruneError, UserError
from onnxprune.config.file import config_file_options, format_settings, node_overrides
from onnxprune.config.settings import (
    DEFAULT_MAX_CHANNEL_ERROR,
    DEFAULT_MAX_ERROR,
    DEFAULT_MAX_METRIC_DROP,
    PruneConfig,
)
from onnxprune.layouts.registry import LAYOUTS

LAYOUT_NAMES = tuple(LAYOUTS)

logger = logging.getLogger("onnxprune")
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped into a log (not a terminal), tables keep a readable width instead of rich's 80 columns.
out_console = Console(highlight=False)
if not out_console.is_terminal:
    out_console = Console(highlight=False, width=120)

SUBCOMMANDS = ("prune", "inspect", "profile", "bench", "apply")


class _DefaultToPrune(click.Group):
    """``onnxprune IN OUT --speedup 3`` is ``onnxprune prune IN OUT --speedup 3``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


def _common_options(func: Callable) -> Callable:
    """--shape/--provider/--threads/--json, shared by every subcommand that runs a model."""
    func = click.option("--json", "json_path", metavar="FILE",
                        help="Also write the report as JSON to FILE ('-' for stdout).")(func)
    func = click.option("--threads", type=int, default=None, metavar="N",
                        help="Intra-op threads for ONNX Runtime (default: ORT's choice). Time "
                             "with the thread count you deploy with.")(func)
    func = click.option("--provider", default="cpu", show_default=True, metavar="EP",
                        help="Execution provider: cpu, cuda, tensorrt or a full ORT name.")(func)
    func = click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS",
                        help="Deployment shape of an input, e.g. input_ids=8x128 (repeatable). "
                             "Unset dynamic dims default to 1.")(func)
    return func


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onnxprune: %(message)s"))
    root = logging.getLogger("onnxprune")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_DefaultToPrune, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxprune")
def cli() -> None:
    """Prune an ONNX model to a measured speedup on your ONNX Runtime execution provider.

    \b
    Main job (also `onnxprune prune IN OUT ...`):
      onnxprune in.onnx out.onnx --speedup 3 --calib calib/ --shape input=8x64
    \b
    Other commands:
      onnxprune inspect MODEL        which nodes can be pruned, and why others cannot
      onnxprune profile MODEL        per-node timing and the reachable speedup
      onnxprune bench A.onnx B.onnx  the measured speedup of B over A
      onnxprune apply IN OUT --plan plan.json   replay a --save-plan run, no timing

    Exit codes: 0 done, 1 internal error, 2 bad usage or input, 3 target not reachable.
    """


def _load(model_path: str, fixes: tuple[str, ...] = ()):
    """The model as the stages see it (graph/prepare.py): pins folded, names, IR version."""
    return _prepared(model_path, fixes).original


def _prepared(model_path: str, fixes: tuple[str, ...]):
    from onnxprune.graph.fold import parse_fix_specs
    from onnxprune.graph.load import load_model
    from onnxprune.graph.prepare import prepare_model

    return prepare_model(load_model(model_path), parse_fix_specs(fixes))


_fix_option = click.option(
    "--fix", "fixes", multiple=True, metavar="NAME=VALUE",
    help="Pin input NAME to a constant (a number or a comma list, read as the input's dtype), "
         "e.g. sample_rate=16000 (repeatable). If nodes it decides are folded to their taken "
         "branch, whose weights are then pruned; the input is removed from the written model.")


@cli.command()
@click.argument("model_path", metavar="MODEL")
@_common_options
@_fix_option
def inspect(model_path: str, shapes: tuple[str, ...], provider: str, threads: int | None,
            json_path: str | None, fixes: tuple[str, ...]) -> None:
    """List the prunable nodes of MODEL (by MACs), the channel structures found (channel chains,
    FFN neurons, attention heads), and every skipped node or structure-less producer with its
    reason."""
    from onnxprune.graph.fold import parse_fix_specs
    from onnxprune.graph.load import load_model
    from onnxprune.graph.shapes import parse_shape_specs
    from onnxprune.pipeline.analyse import analyse
    from onnxprune.report.inspect import analysis_to_json, render_inspect
    from onnxprune.report.jsonio import write_json

    # The analysis prune runs (a typo in --provider is an error here too); fp16/bf16 models are
    # analysed as prune sees them (the float32 twin), and structures are always looked for.
    config = PruneConfig(speedup=2.0, provider=provider, shapes=parse_shape_specs(shapes),
                         fix=parse_fix_specs(fixes))
    graph = analyse(load_model(model_path), config, source=model_path, all_structures=True,
                    require_candidates=False)
    report = analysis_to_json(graph.analysis, model_path, graph.structures)
    report["fixed"] = graph.fixed.to_json()
    if json_path != "-":
        render_inspect(out_console, report)
    if json_path:
        write_json(report, json_path)


@cli.command()
@click.argument("model_path", metavar="MODEL")
@_common_options
@click.option("--layouts", default="", metavar="L1,L2",
              help="Layouts considered for the bound (default: those fast on the provider).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Latency-table cache folder (default: the user cache folder).")
@click.option("--bound-seconds", type=click.FloatRange(min=0, min_open=True), default=25.0,
              show_default=True, metavar="S",
              help="Longest time spent measuring the Amdahl bound. Sessions are added 5 s at a "
                   "time until its spread is within 5%. Sessions of earlier runs on the same "
                   "model, kept in the latency cache, are pooled with them.")
@click.option("--html", "html_path", metavar="FILE", default=None,
              help="Also write the report as one self-contained HTML page to FILE.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--log-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Write progress as JSON lines (one object per event) to FILE.")
@_fix_option
def profile(model_path: str, shapes: tuple[str, ...], provider: str, threads: int | None,
            json_path: str | None, layouts: str, cache_dir: Path | None, quiet: bool,
            log_json: Path | None, fixes: tuple[str, ...], html_path: str | None = None,
            bound_seconds: float = 25.0) -> None:
    """Time every prunable node of MODEL and its layout options on the provider.

    Prints per node the dense time, its share of the total, the fastest option, the predicted vs
    measured whole-model time and the maximum reachable speedup (Amdahl bound).
    """
    from onnxprune.commands import run_profile

    _setup_logging(0, quiet)
    run_profile(model_path, shapes=shapes, provider=provider, threads=threads,
                json_path=json_path, layouts=layouts, cache_dir=cache_dir, quiet=quiet,
                console=out_console, log_json=log_json, html_path=html_path, fixes=fixes,
                bound_seconds=bound_seconds)


@cli.command()
@click.argument("model_a", metavar="A.onnx")
@click.argument("model_b", metavar="B.onnx")
@_common_options
@click.option("--seconds", type=float, default=10.0, show_default=True,
              help="Time budget for the interleaved runs, over all sessions.")
@click.option("--sessions", type=int, default=5, show_default=True,
              help="Fresh session pairs to measure in (latency varies between sessions).")
@click.option("--fix", "fixes", multiple=True, metavar="NAME=VALUE",
              help="Pin an input of A as prune --fix did (B, written with it, lacks the input).")
def bench(model_a: str, model_b: str, shapes: tuple[str, ...], provider: str,
          threads: int | None, json_path: str | None, seconds: float, sessions: int,
          fixes: tuple[str, ...]) -> None:
    """Measure how much faster B runs than A.

    Each of --sessions fresh session pairs runs A and B interleaved and gives the median of the
    pair ratios; the speedup printed is the median over sessions, with their spread.
    """
    from onnxprune.commands import run_bench

    run_bench(model_a, model_b, shapes=shapes, provider=provider, threads=threads,
              json_path=json_path, seconds=seconds, sessions=sessions, console=out_console,
              load=lambda path: _load(path, fixes if path == model_a else ()))


@cli.command()
@click.argument("input_path", metavar="IN")
@click.argument("output_path", metavar="OUT")
@click.option("--speedup", type=float, default=None, metavar="S",
              help="Target end-to-end speedup on the provider, measured (e.g. 3).")
@click.option("--sparsity", type=float, default=None, metavar="X",
              help="Instead of a target: remove fraction X of every node's weights "
                   "(with --layouts).")
@click.option("--nm", default=None, metavar="N:M",
              help="Instead of a target: apply an N:M pattern to every node, e.g. 2:4 for "
                   "TensorRT sparsity.")
@click.option("--layouts", default="", metavar="L1,L2",
              help=f"Layouts allowed: {', '.join(LAYOUT_NAMES)} (default: those that are fast "
                   "on the provider; 'structure' prunes channel chains, FFN neurons and "
                   "attention heads whole).")
@click.option("--calib", "calib_dir", type=click.Path(path_type=Path), default=None,
              help="Calibration data folder: .npz batches keyed by input name, or one .npy "
                   "per input.")
@click.option("--calib-reader", default=None, metavar="MODULE:CALLABLE",
              help="An ONNX Runtime CalibrationDataReader factory, e.g. mypkg.data:make_reader.")
@click.option("--calib-samples", type=int, default=512, show_default=True,
              help="Cap on calibration samples used.")
@_common_options
@click.option("--exclude", default=None, metavar="REGEX", help="Never prune nodes matching REGEX.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random choices.")
@click.option("--search-budget", default="30", show_default=True, metavar="SECONDS|Ne",
              help="SPDY's per-layer sensitivity search: seconds (30) or evaluations (200e); "
                   "0 for the plain DP.")
@click.option("--max-error", type=float, default=None, metavar="E",
              help="Fidelity bound, on whenever calibration data is given: the largest allowed "
                   "relative output error |y - y_dense| / |y_dense| (worst output, mean over "
                   f"positions) on held-out calibration samples [default: {DEFAULT_MAX_ERROR:g}; "
                   "with --metric, not checked unless given]. Exit 0 means the speed target "
                   "and every fidelity bound hold.")
@click.option("--max-channel-error", type=float, default=None, metavar="E",
              help="Fidelity bound that no output scale can fool: each output channel's RMS "
                   "error over its own spread on the dense model (probabilities as log-odds), "
                   "worst 1% of channels; a destroyed channel scores ~1 "
                   f"[default: {DEFAULT_MAX_CHANNEL_ERROR:g}; with --metric, not checked unless "
                   "given].")
@click.option("--metric", default=None, metavar="NAME|MODULE:CALLABLE",
              help="Judge fidelity by your task's metric on held-out samples: top1, cosine, "
                   "rank[:K] (Spearman of score channel K), detection[:T] (F1 vs dense of "
                   "YOLO-style boxes, score threshold T), or your own "
                   "metric(dense_outputs, pruned_outputs, labels) -> float from MODULE:CALLABLE "
                   "or FILE.py:CALLABLE (higher is better).")
@click.option("--max-metric-drop", type=float, default=None, metavar="D",
              help="The largest allowed drop of --metric from the dense model's score "
                   f"[default: {DEFAULT_MAX_METRIC_DROP:g}].")
@click.option("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
              help="Also bound the top-1 accuracy drop on held-out labelled calibration "
                   "samples, in percentage points.")
@click.option("--no-fidelity-bound", is_flag=True,
              help="Turn the fidelity bound off (fidelity is still measured and reported).")
@click.option("--recover/--no-recover", default=True, show_default=True,
              help="Global recovery after the one-shot solve: every remaining weight tuned "
                   "together (masks and shapes fixed) so the outputs match the dense model's on "
                   "the calibration data; kept only when held-out samples say it is better. "
                   'Needs torch: pip install "onnxprune[recover]".')
@click.option("--recover-seconds", type=float, default=None, metavar="S",
              help="Time budget of global recovery per realized model [default: about 400 "
                   "optimizer steps, 10-120 s].")
@click.option("--error-feedback/--no-error-feedback", default=True, show_default=True,
              help="Also re-solve each pruned layer toward the dense model's output of it (not "
                   "its own output on the pruned input), so it absorbs the error upstream; the "
                   "held-out search samples keep whichever re-solve scores better.")
@click.option("--verify-sessions", type=int, default=5, show_default=True, metavar="N",
              help="Fresh ONNX Runtime session pairs the final speed check runs in; the target "
                   "must hold for their lower quartile.")
@click.option("--dry-run", is_flag=True, help="Plan and predict the speedup; write nothing.")
@click.option("--best-effort", is_flag=True,
              help="If the target cannot be met within the fidelity bound, still write the "
                   "fastest model found within the bound (exit code 3).")
@click.option("--sparse-storage", is_flag=True,
              help="Write unstructured-pruned weights as ONNX sparse_initializer (smaller file; "
                   "ONNX Runtime densifies them on load, so it does not run faster).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Latency-table cache folder (default: the user cache folder).")
@click.option("--html", "html_path", metavar="FILE", default=None,
              help="Also write the report as one self-contained HTML page to FILE.")
@click.option("--save-plan", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Write the plan of the written model (options chosen, input "
                                   "and calibration digests) as JSON; `onnxprune apply` "
                                   "re-materializes it byte-identically without timing.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors and the final summary.")
@click.option("--verbose", "-v", count=True, help="More detail (-vv for debug).")
@click.option("--log-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Write progress as JSON lines (one object per event) to FILE.")
@config_file_options
@_fix_option
@click.pass_context
def prune(ctx: click.Context, input_path: str, output_path: str, speedup: float | None,
          sparsity: float | None,
          nm: str | None, layouts: str, calib_dir: Path | None, calib_reader: str | None,
          calib_samples: int, shapes: tuple[str, ...], provider: str, threads: int | None,
          json_path: str | None, exclude: str | None, seed: int, search_budget: str,
          max_error: float | None, max_channel_error: float | None, metric: str | None,
          max_metric_drop: float | None, max_accuracy_drop: float | None,
          no_fidelity_bound: bool,
          verify_sessions: int, dry_run: bool, best_effort: bool, sparse_storage: bool,
          cache_dir: Path | None, quiet: bool, verbose: int, log_json: Path | None,
          config: Path | None, print_config: bool, html_path: str | None = None,
          save_plan: Path | None = None, fixes: tuple[str, ...] = (), recover: bool = True,
          recover_seconds: float | None = None, error_feedback: bool = True) -> int:
    """Prune IN to run --speedup S times faster on the provider and write OUT.

    Exit 0 promises both sides: the speedup is measured, not estimated (OUT is timed against IN in
    several fresh ONNX Runtime sessions, interleaved runs, and the target must hold for the lower
    quartile over sessions), and with --calib the outputs on held-out calibration samples stay
    within --max-error and --max-channel-error of the dense model's (or, with --metric, your
    metric drops by at most --max-metric-drop). When the speed is reachable only beyond the bound,
    onnxprune exits 3, writes nothing, and reports the fastest model within the bound.

    Without calibration data a data-free proxy decides which weights go, fidelity cannot be
    measured and accuracy will suffer: pass --calib.

    --config FILE reads any of these options from a TOML file (keys as the flags without dashes)
    plus per-node rules ([[node]] tables: match, exclude, layouts, structure_kinds, max_level);
    flags given on the command line win. --print-config shows the result and exits.
    """
    from onnxprune.commands import run_prune

    if print_config:
        click.echo(format_settings(ctx))
        return 0
    _setup_logging(verbose, quiet)
    return run_prune(
        input_path, output_path, speedup=speedup, sparsity=sparsity, nm=nm, layouts=layouts,
        calib_dir=calib_dir, calib_reader=calib_reader, calib_samples=calib_samples,
        shapes=shapes, provider=provider, threads=threads, json_path=json_path, exclude=exclude,
        seed=seed, search_budget=search_budget, max_error=max_error,
        max_channel_error=max_channel_error, metric=metric, max_metric_drop=max_metric_drop,
        max_accuracy_drop=max_accuracy_drop, fidelity_bound=not no_fidelity_bound,
        verify_sessions=verify_sessions, dry_run=dry_run, best_effort=best_effort,
        sparse_storage=sparse_storage, cache_dir=cache_dir, quiet=quiet, console=out_console,
        log_json=log_json, node_overrides=node_overrides(ctx),
        html_path=html_path,
        save_plan=save_plan,
        fixes=fixes, recover=recover, recover_seconds=recover_seconds,
        error_feedback=error_feedback,
    )


@cli.command()
@click.argument("input_path", metavar="IN")
@click.argument("output_path", metavar="OUT")
@click.option("--plan", "plan_path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="A plan written by `onnxprune prune ... --save-plan FILE`.")
@click.option("--calib", "calib_dir", type=click.Path(path_type=Path), default=None,
              metavar="DIR", help="The calibration data the plan was made with (checked by "
                                  "digest).")
@click.option("--calib-reader", default=None, metavar="MODULE:CALLABLE",
              help="Or the CalibrationDataReader factory the plan was made with.")
@click.option("--json", "json_path", metavar="FILE", default=None,
              help="Also write the report as JSON (- for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="Only errors and the final summary.")
def apply(input_path: str, output_path: str, plan_path: Path, calib_dir: Path | None,
          calib_reader: str | None, json_path: str | None, quiet: bool) -> int:
    """Re-materialize a saved plan: write the model `prune --save-plan` wrote, byte for byte.

    Nothing is timed: the plan fixes the option of every node, and the reconstruction, the
    rewrite and the serialization are deterministic. The input model and the calibration data
    must be the ones the plan was made with (checked by sha256; otherwise exit 2, naming which).
    """
    from onnxprune.commands import run_apply

    _setup_logging(0, quiet)
    return run_apply(input_path, output_path, plan_path=plan_path, calib_dir=calib_dir,
                     calib_reader=calib_reader, json_path=json_path, quiet=quiet,
                     console=out_console)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps errors to one-line messages and exit codes."""
    debug = bool(os.environ.get("ONNXPRUNE_DEBUG"))
    try:
        rv = cli.main(args=argv, prog_name="onnxprune", standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("onnxprune: aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OnnxPruneError as exc:
        err_console.print(f"onnxprune: error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("onnxprune: interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place internal errors become exit code 1
        if debug:
            raise
        err_console.print(
            f"onnxprune: internal error: {type(exc).__name__}: {exc} "
            "(set ONNXPRUNE_DEBUG=1 for the traceback, and please report it)", markup=False,
        )
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


__all__ = ["cli", "main", "UserError"]
