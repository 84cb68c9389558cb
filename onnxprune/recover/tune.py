"""Global recovery (SPDY's global AdaPrune): every remaining weight tuned together.

One-shot OBS solves each layer against its own input, so error that entered upstream is never
corrected and compounds through depth. Here the pruned model itself is run in torch
(:class:`~onnxprune.recover.graph.TorchGraph`) and all its tunable initializers are tuned at once
with Adam, masks fixed (zeros stay zero, shapes stay), so that its outputs match the dense
model's on the fit part of the calibration data. The loss is, per output, the relative squared
error plus the mean per-channel squared error over the channel's own spread (the scale-free
measure of :mod:`onnxprune.fidelity.channels`, so a small score channel weighs as much as a large
box channel); probability outputs are compared as log-probabilities, padded positions dropped.

The search part of the calibration data (which the fit never sees) picks the best state seen
(early stopping), and the caller keeps the recovered model only when the verify part says it is
better than the one-shot model. Only initializer values change: the result has the one-shot
model's graph, checked here against ONNX Runtime before and after tuning.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.calib.collect import padding_masks
from onnxprune.calib.dataset import CalibSet

logger = logging.getLogger("onnxprune")

EXACT_RTOL = 1e-3
"""Torch against ONNX Runtime on the same graph: max |Δ| over max |y| per output."""
LEARNING_RATE = 3e-3
"""Adam's step, relative to each tensor's RMS (a bias of 1e-3 and a weight of 1 move alike)."""
CHANNEL_FLOOR = 0.1
"""A channel's spread is at least this share of its RMS (as in the channel error)."""
EVALUATE_EVERY = 8
"""Steps between looks at the held-out loss (early stopping)."""
PATIENCE = 6
"""Looks without a better held-out loss after which tuning stops. Each such look also restores
the best state and halves the step: on MiniLM-L6 pruned lightly (held-out loss 0.062) the first
8 steps at the full step made it worse, and without the back-off no later state was better."""

INSTALL_HINT = 'pip install "onnxprune[recover]" (torch, CPU build)'


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Recovery:
    """What global recovery did to one model.

    Attributes:
        model: the tuned model (None: the stage did not run; ``note`` says why).
        note: one line for the report.
        loss_before / loss_after: the held-out (search) loss of the one-shot and the tuned model.
        steps: optimizer steps taken; seconds: wall time of the stage.
        exactness: torch against ONNX Runtime on the tuned model (max relative difference).
    """

    model: onnx.ModelProto | None
    note: str
    loss_before: float | None = None
    loss_after: float | None = None
    steps: int = 0
    seconds: float = 0.0
    exactness: float | None = None

    def to_json(self) -> dict:
        return {"note": self.note, "loss_before": self.loss_before,
                "loss_after": self.loss_after, "steps": self.steps,
                "seconds": round(self.seconds, 2), "exactness": self.exactness}


@dataclass
class Targets:
    """Calibration batches and the dense model's outputs on them (computed once per run)."""

    batches: Sequence[Mapping[str, np.ndarray]]
    outputs: Sequence[Mapping[str, np.ndarray]]

    @classmethod
    def of(cls, data: CalibSet, dense: Callable[[Mapping[str, np.ndarray]],
                                                Mapping[str, np.ndarray]]) -> Targets:
        return cls(list(data.batches), [dense(feed) for feed in data.batches])


def recover_globally(
    pruned: onnx.ModelProto,
    fit: Targets,
    held_out: Targets,
    probabilities: set[str] | frozenset[str],
    seconds: float,
    threads: int | None = None,
    progress: Callable[[float, float], None] | None = None,
    seed: int = 0,
    max_steps: int | None = None,
) -> Recovery:
    """Tune ``pruned``'s weights toward the dense outputs in ``fit``; see the module docstring.

    Args:
        pruned: the materialized one-shot model (float32).
        fit: batches to tune on, with the dense outputs.
        held_out: batches that pick the best state (never tuned on).
        probabilities: output names that carry probabilities (compared as log-probabilities).
        seconds: the time budget of the tuning loop.
        threads: torch threads (None: torch's default).
        progress: called with (seconds spent, current held-out loss).
        seed: batch order.
        max_steps: stop after this many optimizer steps (None: only the time budget). Tuning
            also stops when the held-out loss has not improved for :data:`PATIENCE` looks.
    """
    started = time.monotonic()
    try:
        import torch
    except ImportError:
        return Recovery(None, f"global recovery not available: torch is not installed; "
                              f"{INSTALL_HINT}")
    from onnxprune.recover.graph import (
        TorchGraph,
        to_torch_feed,
        unsupported_ops,
        with_initializers,
    )

    missing = unsupported_ops(pruned)
    if missing:
        return Recovery(None, "global recovery skipped: no torch version of op "
                              + ", ".join(missing))
    if threads:
        torch.set_num_threads(threads)
    graph = TorchGraph(pruned)
    if not graph.param_names:
        return Recovery(None, "global recovery skipped: the model has no tunable weight")
    mismatch = _against_runtime(graph, pruned, fit.batches[0], torch)
    if mismatch > EXACT_RTOL:
        return Recovery(None, f"global recovery skipped: the graph run in torch differs from "
                              f"ONNX Runtime by {mismatch:.1e} (relative)")
    outputs = [name for name in graph.output_names
               if np.issubdtype(np.asarray(fit.outputs[0][name]).dtype, np.floating)]
    fit_targets = [_prepared(t, outputs, probabilities, b, torch)
                   for t, b in zip(fit.outputs, fit.batches, strict=True)]
    held_targets = [_prepared(t, outputs, probabilities, b, torch)
                    for t, b in zip(held_out.outputs, held_out.batches, strict=True)]
    fit_feeds = [to_torch_feed(b) for b in fit.batches]
    held_feeds = [to_torch_feed(b) for b in held_out.batches]

    def loss_of(feed, target) -> torch.Tensor:
        values = graph(feed, outputs)
        return sum(_output_loss(values[name], target[name], name in probabilities, torch)
                   for name in outputs) / len(outputs)

    def held_loss() -> float:
        with torch.no_grad():
            return float(np.mean([float(loss_of(f, t)) for f, t in
                                  zip(held_feeds, held_targets, strict=True)]))

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in graph.params.items()}

    def restore(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, value in state.items():
                graph.params[key].copy_(value)

    groups = []
    for name, key in graph.param_names.items():
        value = graph.params[key].detach()
        rms = float(value.pow(2).mean().sqrt()) if value.numel() else 0.0
        groups.append({"params": [graph.params[key]], "lr": LEARNING_RATE * max(rms, 1e-3),
                       "name": name})
    base_lr = [g["lr"] for g in groups]
    optimizer = torch.optim.Adam(groups)
    best_loss = before = held_loss()
    best = snapshot()
    rng = np.random.default_rng(seed)
    order: list[int] = []
    steps = 0
    budget_start = time.monotonic()
    stale, scale = 0, 1.0
    while time.monotonic() - budget_start < seconds and stale < PATIENCE \
            and (max_steps is None or steps < max_steps):
        if not order:
            order = list(rng.permutation(len(fit_feeds)))
        index = order.pop()
        fraction = (time.monotonic() - budget_start) / max(seconds, 1e-9)
        for group, lr in zip(optimizer.param_groups, base_lr, strict=True):
            group["lr"] = scale * lr * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(fit_feeds[index], fit_targets[index])
        if not torch.isfinite(loss):
            break
        loss.backward()
        optimizer.step()
        graph.apply_masks()
        steps += 1
        if steps % EVALUATE_EVERY == 0:
            current = held_loss()
            if current < best_loss:
                best_loss, best, stale = current, snapshot(), 0
            else:  # overshot: back to the best state, at half the step
                stale, scale = stale + 1, scale * 0.5
                restore(best)
            if progress:
                progress(time.monotonic() - budget_start, best_loss)
    if steps % EVALUATE_EVERY:
        current = held_loss()
        if current < best_loss:
            best_loss, best = current, snapshot()
    restore(best)
    tuned = with_initializers(pruned, graph.tuned_values())
    exactness = _against_runtime(graph, tuned, fit.batches[0], torch)
    wall = time.monotonic() - started
    if exactness > EXACT_RTOL:
        return Recovery(None, f"global recovery dropped: the tuned model differs from its torch "
                              f"run by {exactness:.1e}", before, best_loss, steps, wall)
    note = (f"global recovery: {steps} steps in {wall:.0f} s, held-out loss "
            f"{before:.4g} -> {best_loss:.4g}")
    return Recovery(tuned, note, before, best_loss, steps, wall, exactness)


def _prepared(target: Mapping[str, np.ndarray], outputs: Sequence[str],
              probabilities, feed: Mapping[str, np.ndarray], torch) -> dict:
    """Per output: the dense value (log-probabilities for probability outputs), the row mask of
    real (unpadded) positions, and each channel's squared spread."""
    masks = padding_masks(feed)
    prepared = {}
    for name in outputs:
        value = np.asarray(target[name], dtype=np.float64)
        if name in probabilities:
            value = np.log(np.clip(value, 1e-6, 1.0))
        mask = masks.get(tuple(value.shape[:2])) if value.ndim >= 3 else None
        rows = value[mask] if mask is not None else value.reshape(-1, *value.shape[1:])
        channel_axis = 1 if value.ndim >= 2 and mask is None else -1
        moved = np.moveaxis(rows, channel_axis, -1).reshape(-1, rows.shape[channel_axis]) \
            if rows.ndim >= 2 else rows.reshape(-1, 1)
        spread = np.maximum(moved.var(axis=0), (CHANNEL_FLOOR ** 2) * (moved ** 2).mean(axis=0))
        prepared[name] = (torch.from_numpy(value.astype(np.float32)),
                          None if mask is None else torch.from_numpy(mask),
                          channel_axis, torch.from_numpy(np.maximum(spread, 1e-12)
                                                         .astype(np.float32)))
    return prepared


def _output_loss(value, target, probability: bool, torch):
    dense, mask, channel_axis, spread = target
    if probability:
        value = torch.log(torch.clamp(value, 1e-6, 1.0))
    if mask is not None:
        value, dense = value[mask], dense[mask]
    diff = value - dense
    relative = diff.pow(2).sum() / dense.pow(2).sum().clamp_min(1e-12)
    if diff.dim() >= 2:
        per_channel = torch.movedim(diff, channel_axis, -1).reshape(-1, diff.shape[channel_axis])
    else:
        per_channel = diff.reshape(-1, 1)
    channel = (per_channel.pow(2).mean(dim=0) / spread).mean()
    return relative + channel


def _against_runtime(graph, model: onnx.ModelProto, feed: Mapping[str, np.ndarray],
                     torch) -> float:
    """Largest relative difference between the torch run and ONNX Runtime's on one batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, dict(feed)), strict=True))
    from onnxprune.recover.graph import to_torch_feed

    with torch.no_grad():
        ours = graph(to_torch_feed(feed), names)
    worst = 0.0
    for name in names:
        ref = np.asarray(reference[name])
        if not np.issubdtype(ref.dtype, np.floating):
            if not np.array_equal(ref, ours[name].numpy()):
                return math.inf
            continue
        scale = float(np.abs(ref).max()) or 1.0
        worst = max(worst, float(np.abs(ref - ours[name].numpy()).max()) / scale)
    return worst
