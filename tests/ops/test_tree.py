"""tree_pool: a slow loop reference, leaf selection, uniform leaves, gradients, shape checks, edges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poolkit.errors import PoolingInputError
from poolkit.geometry import window_spec
from poolkit.ops import avg_pool, vjp
from poolkit.ops.tree import tree_pool, tree_pool1d, tree_pool2d

from cases import RESEARCH_CASES, Case
from helpers import check_grads, traced_peak


def _windows(spatial, window):
    """Each output index with its taps: (kernel offset, input coordinate or None when outside)."""
    spec = window_spec(
        spatial,
        window["kernel_size"],
        window.get("stride"),
        window.get("padding", 0),
        1,
        window.get("ceil_mode", False),
    )
    for o in np.ndindex(*spec.output_size):
        taps = []
        for k in np.ndindex(*spec.kernel_size):
            coord = tuple(int(ax.starts[oi]) + ki for ax, oi, ki in zip(spec.axes, o, k))
            inside = all(0 <= ci < ax.size for ci, ax in zip(coord, spec.axes))
            taps.append((k, coord if inside else None))
        yield o, taps


def _slow_tree(x, leaves, gates, window):
    """The tree evaluated recursively, window by window; taps outside the input count as 0."""
    nd = x.ndim - 2
    wins = list(_windows(x.shape[2:], window))
    out = tuple(np.max([o for o, _ in wins], axis=0) + 1)
    n_leaves = leaves.shape[0]
    y = np.zeros((*x.shape[:2], *out))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for o, taps in wins:

                def dot(f, c=c, n=n, taps=taps):
                    f = f if f.ndim == nd else f[c]
                    return sum(f[k] * x[(n, c, *q)] for k, q in taps if q is not None)

                def node(j):
                    if j >= n_leaves - 1:
                        return dot(leaves[j - (n_leaves - 1)])
                    s = 1.0 / (1.0 + math.exp(-dot(gates[j])))
                    return s * node(2 * j + 1) + (1 - s) * node(2 * j + 2)

                y[(n, c, *o)] = node(0)
    return y


def _kernel(case: Case) -> tuple[int, ...]:
    k = case.kernel_size
    return tuple(k) if isinstance(k, tuple) else (k,) * case.nd


def _layout(x, layout):
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


def _filters(rng, count, case: Case, per_channel: bool, scale: float = 1.0):
    c = (case.shape[1],) if per_channel else ()
    return rng.standard_normal((count, *c, *_kernel(case))) * scale


@pytest.mark.parametrize(
    "depth,leaf_pc,gate_pc", [(1, True, False), (2, False, True), (3, True, True)], ids=["d1", "d2", "d3"]
)
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_matches_slow_reference(case: Case, layout, depth, leaf_pc, gate_pc, rng):
    x = case.input(rng)
    n_leaves = 2 ** (depth - 1)
    leaves = _filters(rng, n_leaves, case, leaf_pc)
    gates = _filters(rng, n_leaves - 1, case, gate_pc)
    y = tree_pool(_layout(x, layout), leaves, gates, data_format=layout, **case.window())
    if layout == "channels_last":
        y = np.moveaxis(y, -1, 1)
    np.testing.assert_allclose(y, _slow_tree(x, leaves, gates, case.window()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences(case: Case, layout, rng):
    x = _layout(case.input(rng), layout)
    leaves = _filters(rng, 2, case, True)
    gates = _filters(rng, 1, case, False)
    check_grads(
        "tree_pool", {"x": x, "leaves": leaves, "gates": gates}, rng, data_format=layout, **case.window()
    )


def test_finite_differences_depth_three(rng):
    case = Case((1, 2, 5, 6), 3, 2, 1, ceil_mode=True)
    grads = check_grads(
        "tree_pool2d",
        {
            "x": case.input(rng),
            "leaves": _filters(rng, 4, case, False),
            "gates": _filters(rng, 3, case, True),
        },
        rng,
        **case.window(),
    )
    assert grads["leaves"].shape == (4, 3, 3) and grads["gates"].shape == (3, 2, 3, 3)


@pytest.mark.parametrize("leaf", range(4))
def test_saturated_gates_select_one_leaf_filter(leaf, rng):
    x = rng.uniform(1.0, 2.0, (2, 3, 7, 7))  # positive: the sign of a gate filter decides it
    win = dict(kernel_size=3, stride=2, padding=1)
    leaves = rng.standard_normal((4, 3, 3, 3))
    # Heap order: root 0 picks node 1 (leaves 0, 1) or node 2 (leaves 2, 3).
    signs = np.zeros(3)
    signs[0] = 1 if leaf < 2 else -1
    signs[1 if leaf < 2 else 2] = 1 if leaf % 2 == 0 else -1
    gates = signs.reshape(3, 1, 1) * np.full((3, 3, 3), 1e4)
    with np.errstate(all="raise"):
        y, pullback = vjp("tree_pool2d", x, leaves, gates, **win)
        grads = pullback(np.ones_like(y))
    expect = tree_pool2d(x, leaves[leaf : leaf + 1], np.zeros((0, 3, 3)), **win)  # depth 1: that filter
    np.testing.assert_array_equal(y, expect)
    np.testing.assert_allclose(
        expect, _slow_tree(x, leaves[leaf : leaf + 1], np.zeros((0, 3, 3)), win), rtol=1e-12
    )
    assert (grads["gates"] == 0).all()
    used = np.zeros(4, dtype=bool)
    used[leaf] = True
    assert (grads["leaves"][~used] == 0).all() and (grads["leaves"][used] != 0).all()


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_leaves_give_average_pooling(depth, dtype, rng):
    x = rng.standard_normal((2, 3, 7, 9)).astype(dtype)
    n_leaves = 2 ** (depth - 1)
    for win in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), stride=(1, 2))):
        k = win["kernel_size"]
        k = (k, k) if isinstance(k, int) else k
        assert all(ax.overhang == 0 for ax in window_spec(x.shape[2:], **win).axes)
        leaves = np.full((n_leaves, *k), 1.0 / np.prod(k))
        gates = rng.standard_normal((n_leaves - 1, 3, *k))  # any gate: all leaves agree
        tol = 1e-5 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(
            tree_pool2d(x, leaves, gates, **win), avg_pool(x, **win), rtol=tol, atol=tol
        )


def test_ceil_overhang_counts_as_zero():
    # [1, 2, 3, 4, 5], k=2, s=2, ceil: the last window is [5, (overhang)] -> 5 / 2 with mean leaves,
    # while avg_pool divides by the one tap inside.
    y = tree_pool1d(
        np.array([[[1.0, 2, 3, 4, 5]]]), np.full((1, 2), 0.5), np.zeros((0, 2)), 2, ceil_mode=True
    )
    np.testing.assert_array_equal(y, [[[1.5, 3.5, 2.5]]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_and_degenerate_inputs_stay_finite_without_warnings(dtype, rng):
    leaves = rng.standard_normal((2, 3, 3, 3)).astype(dtype)
    gates = rng.standard_normal((1, 3, 3)).astype(dtype)
    win = dict(kernel_size=3, stride=2, padding=1)
    with np.errstate(all="raise"):
        big = (np.sign(rng.standard_normal((2, 3, 7, 7))) * 1e4).astype(dtype)
        y, pullback = vjp("tree_pool2d", big, leaves, gates, **win)
        grads = pullback(np.ones_like(y))
        assert np.isfinite(y).all() and all(np.isfinite(v).all() for v in grads.values())
        zero = np.zeros((1, 3, 6, 6), dtype)
        y, pullback = vjp("tree_pool2d", zero, leaves, gates, kernel_size=3)
        grads = pullback(np.ones_like(y))
        assert (y == 0).all() and (grads["leaves"] == 0).all() and (grads["gates"] == 0).all()
        same = np.full((1, 3, 6, 6), 2.0, dtype)  # all-equal windows: a leaf gives 2 * sum(v)
        y = tree_pool2d(same, np.full((2, 3, 3), 1.0 / 9, dtype), gates, kernel_size=3)
        np.testing.assert_allclose(y, 2.0, rtol=1e-6)


def test_non_finite_inputs_follow_ieee_arithmetic():
    x = np.zeros((1, 3, 2, 4))
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 1, 1] = np.inf
    x[0, 2, 0, 0], x[0, 2, 1, 0] = np.inf, -np.inf
    leaves = np.full((1, 2, 2), 0.25)
    with np.errstate(all="raise"):
        y, pullback = vjp("tree_pool2d", x, leaves, np.zeros((0, 2, 2)), kernel_size=2)
        grads = pullback(np.ones_like(y))
        y2 = tree_pool2d(x, np.full((2, 2, 2), 0.25), np.full((1, 2, 2), 1e4), kernel_size=2)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 1, 0, 0] == np.inf and np.isnan(y[0, 2, 0, 0])
    assert (y[0, :, 0, 1] == 0).all()
    # dL/dv_k sums x at tap k over every window and channel: NaN, -inf and inf reach the shared filter.
    np.testing.assert_array_equal(grads["leaves"], [[[np.nan, 0.0], [-np.inf, np.inf]]])
    assert np.isnan(y2[0, :, 0, 0]).all()  # a saturated gate takes 0 * inf or inf - inf
    assert (y2[0, :, 0, 1] == 0).all()


def test_channels_last_unbatched_float16_empty(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    leaves, gates = rng.standard_normal((2, 3, 3, 3)), rng.standard_normal((1, 3, 3))
    win = dict(kernel_size=3, stride=2, padding=1)
    y, pb = vjp("tree_pool2d", x, leaves, gates, **win)
    yl, pbl = vjp("tree_pool2d", np.moveaxis(x, 1, -1), leaves, gates, data_format="channels_last", **win)
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=1e-13, atol=1e-15)
    g = rng.standard_normal(y.shape)
    ga, gl = pb(g), pbl(np.moveaxis(g, 1, -1))
    np.testing.assert_allclose(np.moveaxis(gl["x"], -1, 1), ga["x"], rtol=1e-12, atol=1e-14)
    for name in ("leaves", "gates"):
        np.testing.assert_allclose(gl[name], ga[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tree_pool2d(x[0], leaves, gates, **win), y[0], rtol=1e-14)
    x0, g0 = x.copy(), g.copy()
    pb(g)
    np.testing.assert_array_equal(x, x0)  # inputs and the upstream gradient are never written
    np.testing.assert_array_equal(g, g0)
    x16 = x.astype(np.float16)
    y16, pb16 = vjp("tree_pool2d", x16, leaves.astype(np.float32), gates, **win)
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(
        y16, tree_pool2d(x16.astype(np.float32), leaves, gates, **win).astype(np.float16)
    )
    grads = pb16(np.ones_like(y16))
    assert grads["x"].dtype == np.float16 and grads["leaves"].dtype == np.float32
    assert grads["gates"].dtype == np.float64
    y, pb = vjp("tree_pool2d", np.zeros((0, 3, 7, 6)), leaves, gates, **win)
    grads = pb(np.zeros(y.shape))
    assert y.shape == (0, 3, 4, 3) and grads["x"].shape == (0, 3, 7, 6)
    assert (grads["leaves"] == 0).all() and grads["gates"].shape == (1, 3, 3)


@pytest.mark.parametrize(
    "leaves,gates,match",
    [
        (np.zeros((3, 2, 2)), np.zeros((2, 2, 2)), r"L = 2\*\*\(depth - 1\) leaf filters .* got L = 3"),
        (np.zeros((0, 2, 2)), np.zeros((0, 2, 2)), "got L = 0"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), r"L = 2 leaves has L - 1 = 1 gates, got 2"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2)), r"gates must have shape \(L - 1, 2, 2\)"),
        (
            np.zeros((2, 3, 3)),
            np.zeros((1, 2, 2)),
            r"leaves must have shape \(L, 2, 2\) .* or \(L, 4, 2, 2\)",
        ),
        (np.zeros((2, 3, 2, 2)), np.zeros((1, 2, 2)), r"C=4, got shape \(2, 3, 2, 2\)"),
        (np.zeros((2, 2, 2), dtype=complex), np.zeros((1, 2, 2)), "leaves must be a real-valued array"),
    ],
)
def test_bad_shapes_are_rejected(leaves, gates, match):
    with pytest.raises(PoolingInputError, match=match):
        tree_pool2d(np.zeros((1, 4, 6, 6)), leaves, gates, 2)


def test_peak_memory_within_three_times_input_plus_output():
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    leaves = np.full((2, 16, 3, 3), 1 / 9, np.float32)
    gates = np.full((1, 3, 3), 0.1, np.float32)
    g = np.ones_like(x)  # stride 1, padding 1: the output is input-sized
    io = x.nbytes + g.nbytes
    peak, y = traced_peak("tree_pool2d", x, leaves, gates, kernel_size=3, stride=1, padding=1, grad=g)
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"
