"""The DP ranks by per-channel layer errors unless the search split scores the energy-weighted
ranking's allocation better (contract/rounds.py, ``_Loop.dp``)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.allocate.dp import LayerChoices
from onnxprune.config.settings import PruneConfig
from onnxprune.contract.rounds import ENERGY_WEIGHTED, PER_CHANNEL, _Loop
from onnxprune.graph.candidates import Candidate
from onnxprune.layouts.base import DENSE, LayoutOption, PrunedWeight

CUT = LayoutOption("structure", 0.5)


class _Loss:
    def loss(self, fidelity: float) -> float:
        return fidelity


class _Problem:
    """Two layers, each dense (1 s) or cut (0.5 s); a budget of 1.6 s cuts exactly one. Per
    channel, cutting ``a`` looks cheaper; weighted by energy, cutting ``b``."""

    candidates = ()

    def layer_choices(self, database, energy=False):
        return [LayerChoices(name, np.array([1.0, 0.5]),
                             np.array([0.0, s[1].err_energy if energy else s[1].err]))
                for name, s in database.items()]

    def budget_for(self, speedup):
        return 3.0 / speedup


def _solution(name: str, option: LayoutOption, err: float, energy: float | None) -> PrunedWeight:
    value = 1.0 if option == DENSE else (2.0 if name == "a" else 3.0)
    return PrunedWeight(option, np.ones((1, 1), bool), np.full((1, 1), value, np.float32), err,
                        err_energy=energy)


def _loop(search_losses: dict[str, float] | None, energy: bool = True):
    database = {"a": [_solution("a", DENSE, 0.0, None),
                      _solution("a", CUT, 0.1, 0.2 if energy else None)],
                "b": [_solution("b", DENSE, 0.0, None),
                      _solution("b", CUT, 0.2, 0.1 if energy else None)]}
    calls = []

    def fidelity(weights):
        cut = "a" if weights["a"][0, 0] == 2.0 else "b"
        calls.append(cut)
        return search_losses[cut]

    candidates = [Candidate.__new__(Candidate) for _ in "ab"]
    for candidate, name in zip(candidates, "ab", strict=True):
        object.__setattr__(candidate, "name", name)
    loop = _Loop(PruneConfig(speedup=2.0), _Problem(), candidates, database, None, None,
                 None if search_losses is None else fidelity, _Loss(), 4, None)
    return loop, calls


@pytest.mark.parametrize(("losses", "cut", "measure"), [
    ({"a": 0.3, "b": 0.5}, "a", PER_CHANNEL),
    ({"a": 0.5, "b": 0.3}, "b", ENERGY_WEIGHTED),
])
def test_the_search_split_picks_the_measure(losses, cut, measure):
    loop, calls = _loop(losses)
    choice = loop.dp(1.6)
    assert choice == ([1, 0] if cut == "a" else [0, 1])
    assert loop.current == measure
    assert sorted(calls) == ["a", "b"]
    loop.dp(1.6)
    assert len(calls) == 2  # each allocation is scored once


def test_without_a_search_split_per_channel_decides():
    loop, _ = _loop(None)
    assert loop.dp(1.6) == [1, 0]
    assert loop.current == PER_CHANNEL


def test_without_energy_errors_there_is_one_measure():
    loop, calls = _loop({"a": 0.5, "b": 0.3}, energy=False)
    assert set(loop.measures) == {PER_CHANNEL}
    assert loop.dp(1.6) == [1, 0]
    assert calls == []
