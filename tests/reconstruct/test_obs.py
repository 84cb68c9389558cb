"""Tests of onnxprune/reconstruct/obs.py and of the layouts' mask pickers through its seam.

Numpy only. Layers are small random ones with correlated inputs, where reconstruction matters.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxprune.layouts.block import block_mask, block_scores, check_block
from onnxprune.layouts.channel import channel_mask, check_channel
from onnxprune.layouts.nm import check_nm, nm_mask
from onnxprune.layouts.unstructured import unstructured_mask
from onnxprune.reconstruct.obs import ObsSolver, Solution, obs_prune


def solve_unstructured(solver: ObsSolver, sparsity: float) -> Solution:
    """What the unstructured layout asks of the solver: its picker, per lazy block."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return solver.prune(lambda S: unstructured_mask(S, sparsity), window=solver.blocksize)


def solve_nm(solver: ObsSolver, n: int, m: int) -> Solution:
    if solver.columns % m:
        raise ValueError(f"N:M {n}:{m} does not fit K={solver.columns}")
    return solver.prune(lambda S: nm_mask(S, n, m), window=m)


def solve_block(solver: ObsSolver, bk: int, bn: int, keep: int, col_unit: int = 1) -> Solution:
    return solver.prune(lambda S: block_mask(S, bk, bn, keep, col_unit))


def solve_channel(solver: ObsSolver, keep: int) -> Solution:
    return solver.keep_rows(lambda energy: channel_mask(energy, keep))

N, K, SAMPLES = 32, 64, 512


def _layer(seed: int, rows: int = N, cols: int = K, samples: int = SAMPLES):
    """Random W [rows, cols], correlated calibration inputs X [samples, cols], H = (2/n)·XᵀX."""
    rng = np.random.default_rng(seed)
    mixing = np.eye(cols) + 0.6 * rng.standard_normal((cols, cols)) / np.sqrt(cols)
    scale = np.exp(0.7 * rng.standard_normal(cols))
    X = (rng.standard_normal((samples, cols)) @ mixing) * scale
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    H = 2.0 / samples * X.T @ X
    return W, X, H


def _direct_err(weight: np.ndarray, W: np.ndarray, X: np.ndarray) -> float:
    """‖(Ŵ − W)Xᵀ‖² / ‖WXᵀ‖² computed from the activations themselves."""
    W64 = W.astype(np.float64)
    D = weight.astype(np.float64) - W64
    return float(np.sum((D @ X.T) ** 2) / np.sum((W64 @ X.T) ** 2))


# (layout, params); block params are (bk, bn, keep_blocks, col_unit) on K=64, N=32.
LAYOUTS = [
    ("unstructured", (0.5,)),
    ("unstructured", (0.8,)),
    ("nm", (2, 4)),
    ("nm", (1, 4)),
    ("nm", (4, 8)),
    ("block", (8, 4, 3, 1)),
    ("block", (16, 8, 2, 1)),
    ("block", (4, 2, 5, 1)),
    ("block", (1, 8, 3, 4)),  # Conv-like: column block = 1 input channel x 4 kernel taps
]


def _solve(solver: ObsSolver, layout: str, params: tuple) -> Solution:
    if layout == "unstructured":
        return solve_unstructured(solver, *params)
    if layout == "nm":
        return solve_nm(solver, *params)
    return solve_block(solver, *params)


def _pick(S: np.ndarray, layout: str, params: tuple) -> np.ndarray:
    if layout == "unstructured":
        return unstructured_mask(S, *params)
    if layout == "nm":
        return nm_mask(S, *params)
    return block_mask(S, *params)


def _pattern_holds(mask: np.ndarray, layout: str, params: tuple) -> bool:
    if layout == "unstructured":
        return int((~mask).sum()) == round(mask.size * params[0])
    if layout == "nm":
        n, m = params
        return check_nm(mask, n, m) and int(mask.sum()) == mask.size * n // m
    return check_block(mask, *params)


@pytest.fixture(scope="module")
def layer():
    W, X, H = _layer(0)
    return W, X, H, ObsSolver(W, H)


@pytest.mark.parametrize(("layout", "params"), LAYOUTS)
def test_obs_beats_magnitude_and_err_is_exact(layer, layout: str, params: tuple) -> None:
    W, X, _, solver = layer
    sol = _solve(solver, layout, params)

    assert sol.mask.dtype == bool and sol.mask.shape == W.shape
    assert sol.weight.dtype == np.float32 and sol.weight.shape == W.shape
    assert _pattern_holds(sol.mask, layout, params)
    assert np.all(sol.weight[~sol.mask] == 0.0)

    direct = _direct_err(sol.weight, W, X)
    assert sol.err == pytest.approx(direct, rel=1e-6)

    same_mask = solver.solve_magnitude(sol.mask)
    magnitude = solver.solve_magnitude(_pick(W.astype(np.float64) ** 2, layout, params))
    assert same_mask.err == pytest.approx(_direct_err(same_mask.weight, W, X), rel=1e-6)
    assert sol.err <= same_mask.err * (1 + 1e-9)
    assert sol.err <= magnitude.err * (1 + 1e-9)
    assert 0.0 < sol.err < 1.0


def test_obs_beats_magnitude_on_other_layers() -> None:
    for seed in range(1, 4):
        W, X, H = _layer(seed, rows=16, cols=48, samples=200)
        solver = ObsSolver(W, H, blocksize=16)
        for layout, params in [("unstructured", (0.6,)), ("nm", (2, 4)), ("block", (8, 4, 2, 1))]:
            sol = _solve(solver, layout, params)
            magnitude = solver.solve_magnitude(_pick(W.astype(np.float64) ** 2, layout, params))
            assert sol.err <= solver.solve_magnitude(sol.mask).err * (1 + 1e-9)
            assert sol.err <= magnitude.err * (1 + 1e-9)
            assert sol.err == pytest.approx(_direct_err(sol.weight, W, X), rel=1e-6)


def _ls_optimum(w: np.ndarray, H: np.ndarray, pruned: np.ndarray) -> float:
    """min over the kept weights of (ŵ − w) H (ŵ − w)ᵀ with ŵ[pruned] = 0 (Schur complement)."""
    P, F = pruned, ~pruned
    if not F.any():
        return float(w @ H @ w)
    schur = H[np.ix_(P, P)] - H[np.ix_(P, F)] @ np.linalg.solve(H[np.ix_(F, F)], H[np.ix_(F, P)])
    return float(w[P] @ schur @ w[P])


@pytest.mark.parametrize("percdamp", [0.0, 0.01])
def test_brute_force_single_row(percdamp: float) -> None:
    """1 x 4 layer, one weight pruned: OBS <= best magnitude choice, >= least-squares optimum."""
    for seed in range(20):
        W, _, H = _layer(100 + seed, rows=1, cols=4, samples=40)
        w = W[0].astype(np.float64)
        total = float(w @ H @ w)
        choices = [np.arange(4) == p for p in range(4)]
        magnitude = [w[p] ** 2 * H[p, p] / total for p in range(4)]
        optimum = [_ls_optimum(w, H, pruned) / total for pruned in choices]

        sol = solve_unstructured(ObsSolver(W, H, percdamp=percdamp), 0.25)
        chosen = int(np.flatnonzero(~sol.mask[0])[0])
        assert (~sol.mask).sum() == 1
        assert sol.err >= optimum[chosen] - 1e-9
        assert sol.err >= min(optimum) - 1e-9
        slack = 1e-9 if percdamp == 0.0 else 1e-2  # damping slightly perturbs the choice
        assert sol.err <= min(magnitude) * (1 + slack)


def test_pruned_prefix_reaches_least_squares_optimum() -> None:
    """When every row prunes only columns before all its kept ones, the sweep is exact OBS."""
    W, _, H = _layer(7, rows=6, cols=20, samples=300)
    keep = np.ones(W.shape, dtype=bool)
    for r, prefix in enumerate([0, 1, 3, 7, 12, 20]):
        keep[r, :prefix] = False
    sol = obs_prune(W, H, lambda S: keep, blocksize=8, percdamp=0.0)
    w64 = W.astype(np.float64)
    optimum = sum(_ls_optimum(w64[r], H, ~keep[r]) for r in range(6))
    assert sol.err == pytest.approx(optimum / float(np.sum((w64 @ H) * w64)), rel=1e-6)


def _sparsegpt_reference(
    W: np.ndarray,
    H: np.ndarray,
    blocksize: int,
    percdamp: float,
    keep: np.ndarray | None = None,
    nm: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Straight port of SparseGPT's fasterprune (rank-1 in-block updates), no dead columns."""
    W = W.astype(np.float64).copy()
    H = H.copy()
    columns = W.shape[1]
    H[np.diag_indices(columns)] += percdamp * np.mean(np.diag(H))
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T
    kept = np.ones(W.shape, dtype=bool) if keep is None else keep.copy()
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                tmp = W1[:, i : i + m] ** 2 / np.diag(Hinv1)[i : i + m] ** 2
                top = np.argsort(-tmp, axis=1)[:, :n]
                group = np.zeros(tmp.shape, dtype=bool)
                np.put_along_axis(group, top, True, axis=1)
                kept[:, i1 + i : i1 + i + m] = group
            w = W1[:, i]
            q = np.where(kept[:, i1 + i], w, 0.0)
            Q1[:, i] = q
            err1 = (w - q) / Hinv1[i, i]
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, kept


def test_sweep_matches_sparsegpt_reference() -> None:
    W, _, H = _layer(3)
    solver = ObsSolver(W, H, blocksize=16)
    scale = float(np.abs(W).max())

    sol = solve_block(solver, 8, 4, 3)
    ref, _ = _sparsegpt_reference(W, H, 16, 0.01, keep=sol.mask)
    np.testing.assert_allclose(sol.weight, ref, rtol=1e-5, atol=1e-6 * scale)

    sol = solve_nm(solver, 2, 4)
    ref, ref_keep = _sparsegpt_reference(W, H, 16, 0.01, nm=(2, 4))
    np.testing.assert_array_equal(sol.mask, ref_keep)
    np.testing.assert_allclose(sol.weight, ref, rtol=1e-5, atol=1e-6 * scale)


def test_fixed_mask_result_does_not_depend_on_blocksize() -> None:
    W, _, H = _layer(4)
    small = solve_block(ObsSolver(W, H, blocksize=8), 16, 8, 2)
    large = solve_block(ObsSolver(W, H, blocksize=128), 16, 8, 2)
    np.testing.assert_array_equal(small.mask, large.mask)
    np.testing.assert_allclose(small.weight, large.weight, rtol=1e-5, atol=1e-6)


def test_generic_seam_matches_methods(layer) -> None:
    W, _, H, solver = layer
    by_method = solve_block(solver, 8, 4, 3)
    by_seam = obs_prune(W, H, lambda S: block_mask(S, 8, 4, 3))
    np.testing.assert_array_equal(by_seam.mask, by_method.mask)
    np.testing.assert_array_equal(by_seam.weight, by_method.weight)
    adaptive = obs_prune(W, H, lambda S: nm_mask(S, 2, 4), window=4)
    np.testing.assert_array_equal(adaptive.weight, solve_nm(solver, 2, 4).weight)


def test_level_zero_leaves_weight_unchanged(layer) -> None:
    W, _, H, solver = layer
    for sol in [
        solve_unstructured(solver, 0.0),
        solve_nm(solver, 4, 4),
        solve_block(solver, 8, 4, K // 8),
        solve_channel(solver, N),
        solver.solve_magnitude(np.ones(W.shape, dtype=bool)),
        obs_prune(W, H, lambda S: np.ones(S.shape, dtype=bool)),
    ]:
        assert sol.mask.all()
        np.testing.assert_array_equal(sol.weight, W)
        assert sol.err == 0.0


def test_channel_keeps_highest_energy_rows(layer) -> None:
    W, X, H, solver = layer
    sol = solve_channel(solver, 20)
    assert check_channel(sol.mask, 20)
    assert np.all(sol.weight[~sol.mask.all(axis=1)] == 0.0)
    np.testing.assert_array_equal(sol.weight[sol.mask], W[sol.mask])  # no update of kept rows
    energy = np.sum((W.astype(np.float64) @ X.T) ** 2, axis=1)
    assert set(np.flatnonzero(sol.mask[:, 0])) == set(np.argsort(-energy)[:20])
    assert sol.err == pytest.approx(_direct_err(sol.weight, W, X), rel=1e-6)
    assert solve_channel(solver, 0).err == pytest.approx(1.0)


def test_dead_inputs_give_no_nans() -> None:
    W, X, _ = _layer(5)
    dead = [3, 10, 40]
    X[:, dead] = 0.0
    H = 2.0 / len(X) * X.T @ X
    solver = ObsSolver(W, H, blocksize=16)
    assert np.all(solver.saliency()[:, dead] == 0.0)
    for layout, params in LAYOUTS:
        sol = _solve(solver, layout, params)
        assert np.isfinite(sol.weight).all() and np.isfinite(sol.err)
        assert sol.err == pytest.approx(_direct_err(sol.weight, W, X), rel=1e-6)
    # Dead inputs are the first thing pruned, and the layer's output does not move for them.
    sol = solve_unstructured(solver, 0.5)
    assert not sol.mask[:, dead].any()
    np.testing.assert_array_equal(solve_unstructured(solver, 0.0).weight, W)

    empty = ObsSolver(W, np.zeros((K, K)))  # no calibration data at all
    sol = solve_nm(empty, 2, 4)
    assert np.isfinite(sol.weight).all() and sol.err == 0.0


def test_identity_hessian_is_magnitude_pruning(layer) -> None:
    W = layer[0]
    solver = ObsSolver(W, np.eye(K), percdamp=0.0)
    sol = solve_unstructured(solver, 0.5)
    np.testing.assert_array_equal(sol.weight, np.where(sol.mask, W, 0.0))
    W64 = W.astype(np.float64)
    assert sol.err == pytest.approx(float(np.sum(W64[~sol.mask] ** 2) / np.sum(W64**2)))


def test_solution_arrays_are_read_only(layer) -> None:
    sol = solve_nm(layer[3], 2, 4)
    with pytest.raises(ValueError):
        sol.weight[0, 0] = 1.0
    with pytest.raises(ValueError):
        sol.mask[0, 0] = False


def test_invalid_layouts_raise(layer) -> None:
    W, _, H, solver = layer
    with pytest.raises(ValueError, match="N:M"):
        solve_nm(solver, 2, 5)  # 64 % 5 != 0
    with pytest.raises(ValueError, match="multiple of bn"):
        solve_block(solver, 8, 5, 2)
    with pytest.raises(ValueError, match="keep_blocks"):
        solve_block(solver, 8, 4, 9)
    with pytest.raises(ValueError, match="sparsity"):
        solve_unstructured(solver, 1.5)
    with pytest.raises(ValueError, match="mask picker"):
        obs_prune(W, H, lambda S: np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="H must be"):
        ObsSolver(W, H[:-1, :-1])


# ---------------------------------------------------------------------- mask pickers


def test_unstructured_mask_keeps_the_top_fraction() -> None:
    S = np.random.default_rng(0).random((8, 10))
    keep = unstructured_mask(S, 0.3)
    assert (~keep).sum() == 24
    assert S[keep].min() > S[~keep].max()
    assert unstructured_mask(S, 0.0).all() and not unstructured_mask(S, 1.0).any()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 3)])
def test_nm_mask_keeps_n_largest_per_group(n: int, m: int) -> None:
    S = np.random.default_rng(1).random((5, 24))
    keep = nm_mask(S, n, m)
    assert check_nm(keep, n, m)
    groups, kept = S.reshape(5, -1, m), keep.reshape(5, -1, m)
    assert np.all(kept.sum(axis=-1) == n)
    expected = np.sort(groups, axis=-1)[..., m - n :].sum(axis=-1)
    np.testing.assert_allclose(np.where(kept, groups, 0).sum(axis=-1), expected)
    with pytest.raises(ValueError):
        nm_mask(S[:, :23], n, m)


def test_check_nm_detects_violations() -> None:
    mask = np.zeros((2, 8), dtype=bool)
    mask[0, :3] = True
    assert not check_nm(mask, 2, 4)
    assert check_nm(mask, 3, 4)
    assert not check_nm(mask[:, :6], 2, 4)  # K not a multiple of m


@pytest.mark.parametrize(
    ("bk", "bn", "keep", "col_unit"), [(4, 2, 3, 1), (2, 4, 1, 3), (6, 1, 0, 2)]
)
def test_block_mask_is_balanced_and_picks_best_blocks(
    bk: int, bn: int, keep: int, col_unit: int
) -> None:
    S = np.random.default_rng(2).random((8, 36))
    mask = block_mask(S, bk, bn, keep, col_unit)
    assert check_block(mask, bk, bn, keep, col_unit)
    scores = block_scores(S, bk, bn, col_unit)
    kept_blocks = block_scores(mask.astype(float), bk, bn, col_unit) > 0
    for group in range(scores.shape[0]):
        best = set(np.argsort(-scores[group])[:keep])
        assert set(np.flatnonzero(kept_blocks[group])) == best


def test_block_mask_column_blocks_are_whole_conv_channels() -> None:
    # Conv W[O=4, C=6, 2, 2] -> [4, 24]; bk=2 channels -> column blocks of 2·4 = 8 columns.
    S = np.zeros((4, 24))
    S[:, 8:16] = 1.0  # input channels 2 and 3
    mask = block_mask(S, bk=2, bn=2, keep_blocks=1, col_unit=4)
    kept_channels = mask.reshape(4, 6, 4).all(axis=-1)
    assert np.all(kept_channels == np.array([False, False, True, True, False, False]))


def test_check_block_detects_violations() -> None:
    mask = block_mask(np.random.default_rng(3).random((4, 16)), 4, 2, 2)
    assert check_block(mask, 4, 2, 2)
    assert not check_block(mask, 4, 2, 1)  # wrong count
    assert not check_block(mask, 4, 3, 2)  # N not a multiple of bn
    broken = mask.copy()
    broken[0, np.flatnonzero(mask[0])[0]] = False  # a partial block
    assert not check_block(broken, 4, 2, 2)


def test_channel_mask_and_check() -> None:
    scores = np.array([0.5, 3.0, 1.0, 2.0])
    np.testing.assert_array_equal(channel_mask(scores, 2), [False, True, False, True])
    mask = np.zeros((4, 3), dtype=bool)
    mask[[1, 3]] = True
    assert check_channel(mask, 2)
    assert not check_channel(mask, 3)
    mask[0, 0] = True
    assert not check_channel(mask, 2)


def test_pickers_keep_exact_counts_on_ties() -> None:
    S = np.ones((4, 8))
    assert unstructured_mask(S, 0.5).sum() == 16
    assert np.all(nm_mask(S, 2, 4).reshape(4, 2, 4).sum(-1) == 2)
    assert check_block(block_mask(S, 2, 2, 3), 2, 2, 3)
    assert all(
        check_channel(np.repeat(channel_mask(S[:, 0], k)[:, None], 8, 1), k) for k in range(5)
    )


def test_every_layout_keeps_its_pattern_for_many_levels(layer) -> None:
    W, _, _, solver = layer
    for keep in range(0, K // 8 + 1):
        sol = solve_block(solver, 8, 8, keep)
        assert check_block(sol.mask, 8, 8, keep) and np.all(sol.weight[~sol.mask] == 0)
    for n, m in itertools.product([1, 2, 3], [4]):
        sol = solve_nm(solver, n, m)
        assert check_nm(sol.mask, n, m) and np.all(sol.weight[~sol.mask] == 0)


def test_singular_hessian_without_damping_is_rescued(caplog) -> None:
    W, X, _ = _layer(6, samples=20)  # 20 samples < K = 64: H is singular
    H = 2.0 / len(X) * X.T @ X
    with caplog.at_level("WARNING", logger="onnxprune"):
        solver = ObsSolver(W, H, percdamp=0.0)
    assert solver.damp > 0.0
    sol = solve_nm(solver, 2, 4)
    assert np.isfinite(sol.weight).all()
    assert sol.err == pytest.approx(_direct_err(sol.weight, W, X), rel=1e-6)
