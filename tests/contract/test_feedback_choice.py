"""The error-feedback re-solve is kept only where the search split says it is the better model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune.contract.attempt as attempt_module
from onnxprune.common.runtime import RuntimeConfig
from onnxprune.config.settings import PruneConfig
from onnxprune.contract.attempt import Attempt, Realizer
from onnxprune.layouts.base import DENSE, PrunedWeight


class _Loss:
    """Stands in for the bound's measure: a fidelity here is already its loss."""

    def loss(self, fidelity: float) -> float:
        return fidelity


def _solution(value: float) -> PrunedWeight:
    return PrunedWeight(DENSE, np.ones((2, 2), bool), np.full((2, 2), value, np.float32), 0.0)


@pytest.fixture
def resolves(monkeypatch):
    """sequential_resolve answers 1.0 weights plain and 2.0 with feedback, and counts calls."""
    calls = []

    def fake(runner, model, candidates, chosen, calib, progress=None, feedback=False):
        calls.append(feedback)
        return {"a": _solution(2.0 if feedback else 1.0)}

    monkeypatch.setattr(attempt_module, "sequential_resolve", fake)
    return calls


def _realizer(error_feedback: bool, losses: dict[float, float] | None) -> Realizer:
    scorer = None if losses is None else (lambda weights: losses[float(weights["a"][0, 0])])
    return Realizer(PruneConfig(speedup=2.0, error_feedback=error_feedback), onnx.ModelProto(),
                    b"", (), RuntimeConfig(), {"synthetic": {}}, {}, runner=object(),
                    fit=object(), search_scorer=scorer, bound_measure=_Loss())


@pytest.mark.parametrize(("losses", "kept", "weight"), [
    ({1.0: 0.5, 2.0: 0.3}, True, 2.0),   # feedback scores better: kept
    ({1.0: 0.3, 2.0: 0.5}, False, 1.0),  # plain scores better: feedback dropped
])
def test_the_search_split_picks_the_resolve(resolves, losses, kept, weight):
    chosen, record = _realizer(True, losses)._resolve({"a": _solution(0.0)})
    assert sorted(resolves) == [False, True]
    assert float(chosen["a"].weight[0, 0]) == weight
    assert record == {"kept": kept, "loss_search_feedback": losses[2.0],
                      "loss_search_plain": losses[1.0]}
    note = Attempt(chosen, onnx.ModelProto(), feedback=record).feedback_note()
    assert note.startswith("error feedback kept" if kept else "error feedback not kept")


def test_without_feedback_one_plain_resolve(resolves):
    chosen, record = _realizer(False, {1.0: 0.1, 2.0: 0.0})._resolve({"a": _solution(0.0)})
    assert resolves == [False] and record is None
    assert float(chosen["a"].weight[0, 0]) == 1.0


def test_without_a_search_split_feedback_is_kept_unjudged(resolves):
    chosen, record = _realizer(True, None)._resolve({"a": _solution(0.0)})
    assert record is None and float(chosen["a"].weight[0, 0]) == 2.0
