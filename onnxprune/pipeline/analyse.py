"""Stage 1 of every command: the model as the run sees it, what can be pruned, and how.

``prune``, ``apply``, ``profile`` and ``inspect`` all call :func:`analyse`, so they agree on what
the model's candidates are: the prepared graph (pinned inputs folded, unique names, IR version,
the float32 twin of a half-precision model: ``graph/prepare.py``), its deployment shapes, the
prunable nodes minus the excluded ones, the channel structures attached to their consumers, and
each candidate's options (dense first). What differs between the commands is only what they do
with it (time it, solve it, replay a plan on it, list it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxprune.allocate.budget import granularity
from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.common.runtime import RuntimeConfig, resolve_provider
from onnxprune.config.settings import PruneConfig
from onnxprune.graph.candidates import Candidate, GraphAnalysis, SkippedNode, find_candidates
from onnxprune.graph.fold import FixResult
from onnxprune.graph.precision import LowPrecision
from onnxprune.graph.prepare import prepare_model
from onnxprune.graph.shapes import BoundInputs, bind_input_shapes
from onnxprune.layouts.base import DENSE, LayoutOption, is_fast_on
from onnxprune.layouts.registry import LAYOUTS, candidate_options, get_layout, layouts_fast_on
from onnxprune.structures.context import discover_and_attach, layouts_for
from onnxprune.structures.discover import StructureAnalysis


@dataclass(frozen=True)
class Analysed:
    """The model at its deployment shapes, what can be pruned, and how.

    Attributes:
        model: the model analysed (unique node names, IR version stamped; the float32 twin of a
            half-precision model).
        dense_payload: the serialized input model as prepared, before any float32 widening (the
            A of every speed comparison).
        bound_shapes: the deployment input shapes.
        runtime: the EP and threads.
        mode: "speedup", "sparsity" or "nm".
        analysis: the candidates at those shapes (structures attached).
        candidates: the candidates this run prunes (exclusions and option-less ones removed).
        options: per candidate name, its options (dense first).
        precision: the half precision the model is written back in (None: float32).
        fixed: the inputs pinned by ``--fix`` and what folding them removed.
        skipped: every heavy node left alone, with its reason (exclusions included).
        structures: what structure discovery found (None: it did not run).
        producers: the names of the structures' producer candidates.
        layouts: the layouts the run may use (``dense`` aside).
        notes: lines for the report, in order (shapes, pinned inputs, precision, speed).
    """

    model: onnx.ModelProto
    dense_payload: bytes
    bound_shapes: BoundInputs
    runtime: RuntimeConfig
    mode: str
    analysis: GraphAnalysis
    candidates: tuple[Candidate, ...]
    options: Mapping[str, Sequence[LayoutOption]]
    precision: LowPrecision | None = None
    fixed: FixResult | None = None
    skipped: tuple[SkippedNode, ...] = ()
    structures: StructureAnalysis | None = None
    producers: frozenset[str] = frozenset()
    layouts: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def analyse(model: onnx.ModelProto, config: PruneConfig, *, source: str = "the model",
            all_structures: bool = False, require_candidates: bool = True,
            require_runnable: bool = False) -> Analysed:
    """Prepare ``model``, bind its shapes, find its candidates and structures, and their options.

    Args:
        model: the model as loaded (not yet prepared).
        config: the run's settings; what this reads is the mode, layouts, levels, provider,
            threads, shapes, ``fix``, ``exclude`` and the per-node rules.
        source: how messages name the model (its path).
        all_structures: find the channel structures even when no layout of the run uses them
            (``inspect`` lists them).
        require_candidates: a model with nothing to prune is an error (prune, apply); False
            returns an empty analysis (profile, inspect).
        require_runnable: refuse a half-precision model the EP cannot run (prune, apply: the
            output is timed and deployed on that EP).

    Raises:
        UserError / TargetUnreachableError: bad options, or nothing to prune (the latter in
            speedup mode).
    """
    # Pinned inputs folded, names, IR version, float32 twin of half precision (graph/prepare.py):
    # the dense reference of every comparison is ``original``; the output is lowered back to its
    # precision and timed against it.
    prepared = prepare_model(model, config.fix)
    original, model, precision, fixed = (prepared.original, prepared.model, prepared.precision,
                                         prepared.fixed)
    bound_shapes = bind_input_shapes(model, config.shapes)
    provider = resolve_provider(config.provider)
    runtime = RuntimeConfig(provider=provider, threads=config.threads)
    layouts = _allowed_layouts(config, provider)
    mode = "speedup" if config.speedup is not None else ("nm" if config.nm else "sparsity")
    notes = [*bound_shapes.notes, *fixed.notes]
    if precision is not None:
        if require_runnable:
            _check_runtime_runs(original, runtime, precision, source)
        notes.append(
            f"{precision.name} model: solved in float32, written back in {precision.name}; "
            "per-layer times are from the float32 twin, the final speedup is measured on the "
            f"{precision.name} graph")

    analysis = find_candidates(model, bound_shapes)
    candidates, skipped = _select(analysis, config)
    producers: set[str] = set()
    found = None
    forced = {name for rule in config.overrides for name in rule.allowed_layouts}
    if (all_structures or "structure" in layouts or "structure" in forced) and candidates:
        keep = _structure_allowed(config, {c.name: c.node_names for c in candidates})
        if "structure" not in layouts and not all_structures:  # only where a rule forces it
            forcing = [c.name for c in candidates
                       if "structure" in getattr(config.override_for(c.node_names),
                                                 "allowed_layouts", ())]
            keep = _forced_structures_only(keep, set(forcing))
        analysis, candidates, producers, found = discover_and_attach(model, analysis, candidates,
                                                                     keep=keep)
    if not candidates and require_candidates:
        raise _nothing_to_prune(analysis, mode)
    options = _options_for(candidates, layouts, config, skipped, producers)
    candidates = [c for c in candidates if c.name in options]
    if not candidates and require_candidates:
        raise _nothing_to_prune(analysis, mode, "no prunable node admits the requested layout")
    slow = [c for c in candidates
            if not any(is_fast_on(get_layout(o.layout), provider) for o in options[c.name][1:])]
    if slow and mode != "speedup":
        notes.append(
            f"{layouts[0]} gives no speedup on {provider} (ONNX Runtime does not skip zeros): "
            "expect compression or a TensorRT speedup only"
        )
    return Analysed(model, original.SerializeToString(), bound_shapes, runtime, mode, analysis,
                    tuple(candidates), options, precision, fixed, tuple(skipped), found,
                    frozenset(producers), tuple(layouts), tuple(notes))


def _allowed_layouts(config: PruneConfig, provider: str) -> list[str]:
    if config.nm is not None:
        return ["nm"]
    names = list(config.layouts)
    for name in names:
        get_layout(name)  # raises with the available names listed
    if config.sparsity is not None:
        if len(names) != 1 or names == ["dense"]:
            raise UserError(
                "--sparsity needs exactly one layout in --layouts (one of: "
                + ", ".join(n for n in LAYOUTS if n != "dense") + ")"
            )
        return names
    return [n for n in (names or layouts_fast_on(provider)) if n != "dense"]


def _options_for(
    candidates: Sequence[Candidate], layouts: Sequence[str], config: PruneConfig,
    skipped: list[SkippedNode], producers: set[str] = frozenset(),
) -> dict[str, list[LayoutOption]]:
    """Options per candidate (dense first); in the uniform modes, the one option nearest the
    requested level or pattern, and candidates with none move to ``skipped`` with the reason."""
    if config.speedup is not None:
        return {c.name: _capped(candidate_options(c, _node_layouts(c, layouts, producers, config),
                                                  config.levels), c, config)
                for c in candidates}
    levels = [1.0 - config.nm[0] / config.nm[1]] if config.nm is not None else [config.sparsity]
    options: dict[str, list[LayoutOption]] = {}
    for cand in candidates:
        if cand.structure is None and cand.name in producers:
            options[cand.name] = [DENSE]  # it shrinks with the structure decided elsewhere
            continue
        found: list[LayoutOption] = []
        reasons = []
        rule = config.override_for(cand.node_names)
        cand_levels = levels if rule is None or rule.max_level is None \
            else [min(levels[0], rule.max_level)]
        for name in _node_layouts(cand, layouts, producers, config):
            if name == "dense":
                continue
            opts, reason = get_layout(name).options(cand, cand_levels)
            if config.nm is not None:
                opts = [o for o in opts if dict(o.params).get("n") == config.nm[0]
                        and dict(o.params).get("m") == config.nm[1]]
                if not opts and reason is None:
                    reason = f"{config.nm[0]}:{config.nm[1]} does not fit its weight"
            if config.sparsity is not None and opts:
                # Nearest level; among equal levels the coarsest block, usually the fastest.
                opts = [min(opts, key=lambda o: (round(abs(o.level - cand_levels[0]), 6),
                                                 -granularity(o)))]
            opts = _capped(opts, cand, config)
            if not opts and rule is not None and rule.max_level is not None and reason is None:
                reason = f"no option within max_level {rule.max_level:g} ({rule.source})"
            found.extend(opts)
            if reason:
                reasons.append(f"{name}: {reason}")
        if not found:
            skipped.append(SkippedNode(cand.sites[0].node, cand.op,
                                       "; ".join(reasons) or "no option fits", cand.macs))
            continue
        options[cand.name] = [DENSE, *found]
    return options


def _node_layouts(cand: Candidate, layouts: Sequence[str], producers: set[str],
                  config: PruneConfig) -> list[str]:
    """The layouts ``cand`` may take: the run's, or those a per-node rule forces."""
    rule = config.override_for(cand.node_names)
    if rule is not None and rule.allowed_layouts:
        layouts = rule.allowed_layouts
    if (cand.structure is not None or cand.name in producers) and "structure" not in layouts:
        layouts = [*layouts, "structure"]  # in a structure a rule forced: nothing else
    return layouts_for(cand, layouts, producers)


def _capped(options: list[LayoutOption], cand: Candidate,
            config: PruneConfig) -> list[LayoutOption]:
    """Options above a per-node rule's ``max_level`` dropped (dense always stays)."""
    rule = config.override_for(cand.node_names)
    if rule is None or rule.max_level is None:
        return options
    return [o for o in options if o.layout == "dense" or o.level <= rule.max_level + 1e-9]


def _structure_allowed(config: PruneConfig, node_names: Mapping[str, tuple[str, ...]]):
    """Whether a found structure may be used: every per-node rule on its nodes allows it."""
    def keep(structure) -> bool:
        for name in (*structure.producers, *structure.consumers):
            rule = config.override_for(node_names.get(name, (name,)))
            if rule is None or not rule.allowed_layouts:
                continue
            if "structure" not in rule.allowed_layouts:
                return False
            if rule.structure_kinds and structure.kind not in rule.structure_kinds:
                return False
        return True
    return keep


def _forced_structures_only(keep, forcing: set[str]):
    """When the run does not use structures, only those through a node whose rule forces them."""
    def keep_forced(structure) -> bool:
        nodes = {*structure.producers, *structure.consumers}
        return bool(nodes & forcing) and keep(structure)
    return keep_forced


def _select(analysis: GraphAnalysis, config: PruneConfig) -> tuple[list[Candidate],
                                                                   list[SkippedNode]]:
    """Candidates minus those ``--exclude`` or a per-node rule's ``exclude`` names."""
    skipped = list(analysis.skipped)
    pattern = re.compile(config.exclude) if config.exclude else None
    kept = []
    for cand in analysis.candidates:
        rule = config.override_for(cand.node_names)
        if pattern is not None and any(pattern.search(name) for name in cand.node_names):
            skipped.append(SkippedNode(cand.name, cand.op, "excluded by --exclude", cand.macs))
        elif rule is not None and rule.exclude:
            skipped.append(SkippedNode(cand.name, cand.op, f"excluded by {rule.source}",
                                       cand.macs))
        else:
            kept.append(cand)
    return kept, skipped


def _nothing_to_prune(analysis: GraphAnalysis, mode: str, detail: str | None = None):
    reasons = "; ".join(f"{s.node}: {s.reason}" for s in analysis.skipped[:5])
    message = detail or "the model has no prunable node (MatMul/Gemm/Conv with a constant weight)"
    if reasons:
        message += f" — skipped: {reasons}"
    if mode == "speedup":
        return TargetUnreachableError(message)
    return UserError(message)


def _check_runtime_runs(model: onnx.ModelProto, runtime: RuntimeConfig,
                        precision: LowPrecision, path: str) -> None:
    """Refuse a half-precision model the EP cannot run (ORT's CPU EP has no bfloat16 MatMul or
    Conv): the output would be timed and deployed on that EP, so nothing useful can be written."""
    from onnxprune.common.runtime import make_session

    try:
        make_session(model, runtime)
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for "cannot run"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path}: ONNX Runtime ({runtime.provider}) cannot run this {precision.name} model "
            f"({first}); onnxprune prunes only models the runtime runs — convert it to float32 "
            "or float16, or choose a --provider that supports it") from None

