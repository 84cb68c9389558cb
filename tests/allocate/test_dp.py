"""The DP against brute force on small random instances, and its edge cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxprune.allocate.dp import LayerChoices, fastest, solve_dp
from onnxprune.allocate.search import spdy_search


def _random_layers(rng, count, options):
    layers = []
    for i in range(count):
        times = np.sort(rng.uniform(0.1, 1.0, options))[::-1].copy()
        times[0] = 1.0
        errors = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, options - 1))])
        layers.append(LayerChoices(f"l{i}", times, errors))
    return layers


@pytest.mark.parametrize("seed", range(12))
def test_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    layers = _random_layers(rng, 4, 4)
    budget = rng.uniform(1.0, 3.5)
    coefs = rng.uniform(0.2, 2.0, 4)
    choice = solve_dp(layers, budget, coefs, buckets=20_000)
    best, best_err = None, np.inf
    for combo in itertools.product(range(4), repeat=4):
        time_ = sum(layer.times[j] for layer, j in zip(layers, combo, strict=True))
        err = sum(c * layer.errors[j] for c, layer, j in zip(coefs, layers, combo, strict=True))
        if time_ <= budget and err < best_err:
            best, best_err = combo, err
    if best is None:
        assert choice is None
        return
    assert choice is not None
    got_time = sum(layer.times[j] for layer, j in zip(layers, choice, strict=True))
    got_err = sum(c * layer.errors[j] for c, layer, j in zip(coefs, layers, choice, strict=True))
    assert got_time <= budget + 1e-12  # rounding up never overshoots the budget
    # Rounding times up can cost a little optimality, never feasibility.
    assert got_err <= best_err + 0.05


def test_infeasible_budget_returns_none():
    layers = [LayerChoices("a", np.array([1.0, 0.5]), np.array([0.0, 0.3]))]
    assert solve_dp(layers, 0.4) is None
    assert solve_dp(layers, 0.0) is None
    assert solve_dp(layers, 0.5) == [1]
    assert solve_dp(layers, 1.0) == [0]


def test_fastest_picks_least_time_then_error():
    layer = LayerChoices("a", np.array([1.0, 0.2, 0.2]), np.array([0.0, 0.5, 0.1]))
    assert fastest([layer]) == [2]


def test_search_never_worse_than_plain_dp_and_uses_the_score():
    rng = np.random.default_rng(3)
    layers = _random_layers(rng, 6, 5)
    budget = 3.5
    weights = rng.uniform(0.1, 5.0, 6)  # hidden "true" sensitivity the search should learn

    def score(choice):
        return float(sum(w * layer.errors[j] for w, layer, j in
                         zip(weights, layers, choice, strict=True)))

    result = spdy_search(layers, budget, score, seconds=5.0, max_evaluations=150, seed=0)
    assert result is not None
    assert result.loss <= result.initial_loss
    assert score(result.choice) == pytest.approx(result.loss)
    oracle = solve_dp(layers, budget, weights, buckets=20_000)
    assert result.loss <= score(oracle) * 1.25 + 1e-9
