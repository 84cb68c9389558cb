"""Structured OBS on the consumer (pure numpy): levels, errors, compensation, the bias column."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.reconstruct.structured import remove_channels, remove_channels_jointly


def _data(channels: int, group: int, rows: int = 12, samples: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((samples, 6))
    X = latent @ rng.standard_normal((6, channels * group)) + 0.3 * rng.standard_normal(
        (samples, channels * group)) + 1.0  # correlated, with a non-zero mean
    W = rng.standard_normal((rows, channels * group))
    b = rng.standard_normal(rows)
    H = 2.0 / samples * X.T @ X
    mean = 2.0 / samples * X.sum(axis=0)
    return X, W, b, H, mean


def _rel(X, W_new, b_new, W, b) -> float:
    want = X @ W.T + b
    return float(np.sum((X @ W_new.T + b_new - want) ** 2) / np.sum(want ** 2))


@pytest.mark.parametrize("group", [1, 9])
def test_every_level_from_one_pass_with_errors_that_match_the_data(group):
    X, W, b, H, _ = _data(16, group)
    results = remove_channels(W, H, group, [16, 12, 8, 3])
    assert sorted(results) == [3, 8, 12, 16]
    np.testing.assert_allclose(results[16].weight, W, rtol=1e-6)
    assert results[16].err == 0.0
    errors = []
    for keep in (12, 8, 3):
        solution = results[keep]
        assert len(solution.kept) == keep
        removed = np.setdiff1d(np.arange(16), solution.kept)
        columns = (removed[:, None] * group + np.arange(group)).reshape(-1)
        assert not solution.weight[:, columns].any()  # removed channels' columns are zero
        measured = float(np.sum((X @ (solution.weight - W).T) ** 2) / np.sum((X @ W.T) ** 2))
        assert solution.err == pytest.approx(measured, rel=0.05, abs=1e-6)
        errors.append(solution.err)
    assert errors == sorted(errors)  # fewer channels kept, more error


def test_compensation_beats_dropping_the_same_channels():
    X, W, b, H, _ = _data(24, 1)
    solution = remove_channels(W, H, 1, [8])[8]
    dropped = np.zeros_like(W)
    dropped[:, solution.kept] = W[:, solution.kept]
    assert _rel(X, solution.weight, b, W, b) < 0.5 * _rel(X, dropped, b, W, b)


def test_the_bias_column_absorbs_the_removed_channels_mean():
    X, W, b, H, mean = _data(24, 1)
    with_bias = remove_channels(W, H, 1, [6], bias=b, mean=mean)[6]
    without = remove_channels(W, H, 1, [6])[6]
    assert with_bias.bias is not None and without.bias is None
    assert _rel(X, with_bias.weight, with_bias.bias, W, b) <= _rel(X, without.weight, b, W, b)


def test_one_consumer_jointly_is_the_plain_pass():
    _, W, _, H, _ = _data(16, 3)
    plain = remove_channels(W, H, 3, [12, 8, 4], percdamp=0.1)
    joint = remove_channels_jointly([(W, H, 3)], [12, 8, 4], percdamp=0.1)
    for keep, solution in plain.items():
        (same,) = joint[keep]
        np.testing.assert_array_equal(same.kept, solution.kept)
        np.testing.assert_allclose(same.weight, solution.weight, rtol=1e-6, atol=1e-6)
        assert same.err == pytest.approx(solution.err)


def test_consumers_of_one_group_lose_the_same_channels_each_compensated():
    # two consumers of the same input channels, one with outputs 1000x larger: the channel set
    # is shared, each consumer gets its own update, and the large one does not decide alone
    X, W1, _, H, _ = _data(16, 1, seed=1)
    W2 = 1000.0 * np.random.default_rng(2).standard_normal((5, 16))
    joint = remove_channels_jointly([(W1, H, 1), (W2, H, 1)], [10], percdamp=0.01)
    first, second = joint[10]
    np.testing.assert_array_equal(first.kept, second.kept)
    removed = np.setdiff1d(np.arange(16), first.kept)
    for W, solution in ((W1, first), (W2, second)):
        assert not solution.weight[:, removed].any()
        dropped = W.copy()
        dropped[:, removed] = 0.0
        assert _rel(X, solution.weight, 0, W, 0) < _rel(X, dropped, 0, W, 0)
        assert solution.err == pytest.approx(_rel(X, solution.weight, 0, W, 0), rel=0.05)
    alone = remove_channels(W2, H, 1, [10], percdamp=0.01)[10]
    assert second.err >= alone.err - 1e-12  # sharing costs the big consumer, never helps it
    with pytest.raises(ValueError, match="different channel counts"):
        remove_channels_jointly([(W1, H, 1), (W1[:, :8], H[:8, :8], 1)], [4])


def test_moved_channels_go_from_every_position_and_no_segment_is_emptied():
    # a group of 8 indices in two segments (a Split's pieces 0-3 and 4-7): one consumer reads
    # them all, one only the second piece, one the first piece twice (a Concat of it with itself)
    X, W_all, _, H_all, _ = _data(8, 1, seed=3)
    rng = np.random.default_rng(4)
    second, twice = np.arange(4, 8), np.array([0, 1, 2, 3, 0, 1, 2, 3])
    W_second, W_twice = rng.standard_normal((5, 4)), rng.standard_normal((6, 8))
    H_second = H_all[np.ix_(second, second)]
    H_twice = H_all[np.ix_(twice, twice)]
    segments = np.array([0, 0, 0, 0, 1, 1, 1, 1])

    def counts(keep: int) -> np.ndarray:
        return np.array([keep // 2, keep - keep // 2])

    parts = [(W_all, H_all, 1, np.arange(8)), (W_second, H_second, 1, second),
             (W_twice, H_twice, 1, twice)]
    joint = remove_channels_jointly(parts, [6, 2], percdamp=0.1, width=8, segments=segments,
                                    counts=counts)
    for keep, solutions in joint.items():
        kept = solutions[0].kept
        assert all((s.kept == kept).all() for s in solutions)
        np.testing.assert_array_equal(np.bincount(segments[kept], minlength=2), counts(keep))
        for (_, _, _, index), solution in zip(parts, solutions, strict=True):
            gone = ~np.isin(index, kept)
            assert not solution.weight[:, gone].any()  # every position of a removed index
            assert solution.weight[:, ~gone].any()
            assert solution.err >= 0.0
    # a consumer that reads none of the removed indices keeps its weight untouched
    untouched = remove_channels_jointly(parts[:2], [5], percdamp=0.1, width=8,
                                        segments=segments,
                                        counts=lambda keep: np.array([keep - 4, 4]))[5]
    np.testing.assert_array_equal(untouched[0].kept, [untouched[0].kept[0], 4, 5, 6, 7])
    np.testing.assert_array_equal(untouched[1].weight, W_second.astype(np.float32))
    assert untouched[1].err == 0.0
