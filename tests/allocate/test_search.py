"""SPDY's coefficient search: it stops when the allocations run out, not only at its caps."""

from __future__ import annotations

import numpy as np

import onnxprune.allocate.search as search
from onnxprune.allocate.dp import LayerChoices


def test_search_stops_when_every_allocation_has_been_scored(monkeypatch):
    """Found by the fuzzer: two layers with two options have at most four allocations, so an
    evaluation budget of 400 was never reached and the search ran to its one-hour time cap."""
    layers = [LayerChoices("a", np.array([1.0, 0.4]), np.array([0.0, 0.3])),
              LayerChoices("b", np.array([1.0, 0.5]), np.array([0.0, 0.1]))]
    solves = {"n": 0}
    real_solve = search.solve_dp

    def counted(*args, **kwargs):
        solves["n"] += 1
        assert solves["n"] < 5_000, "the search did not stop"
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(search, "solve_dp", counted)
    scored = []
    result = search.spdy_search(layers, 1.6, lambda choice: scored.append(choice) or sum(choice),
                                seconds=3600.0, max_evaluations=400)
    assert result is not None
    assert result.evaluations == len(scored) <= 4
    assert solves["n"] <= search.EXHAUSTED_AFTER + 20
    assert result.choice in ([1, 0], [0, 1], [1, 1], [0, 0])
    assert sum(layer.times[i] for layer, i in zip(layers, result.choice, strict=True)) <= 1.6
