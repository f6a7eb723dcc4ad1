"""Gated, tree and detail-preserving pooling in Keras: forward and every gradient (input and learnable
parameters) equal to the NumPy reference's vjp in float64, on the shared research cases, at the
operators' edge cases (zero and saturated gates, alpha = 0, huge values), and the layers' weights.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import poolkit.keras as PK
import poolkit.keras.functional as KF
import poolkit.ops as P
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.keras.layers.stochastic import clamp_straight_through

from cases import RESEARCH_CASES, Case
from keras_helpers import X64, tensor, to_numpy, value_and_grads

x64 = pytest.mark.skipif(not X64, reason="exact float64 comparisons")
CLOSE = dict(rtol=1e-10, atol=1e-12)


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


def _window(case: Case) -> dict:
    return dict(
        kernel_size=case.kernel_size, stride=case.stride, padding=case.padding, ceil_mode=case.ceil_mode
    )


def _kernel(case: Case) -> tuple[int, ...]:
    k = case.kernel_size
    return tuple(k) if isinstance(k, tuple) else (k,) * case.nd


def _check(
    name: str, arrays: dict, rng: np.random.Generator, tol=CLOSE, grad_atol: dict | None = None, **settings
) -> np.ndarray:
    """``name(*arrays.values(), **settings)`` (positional arrays: x and the parameters, in the NumPy
    signature's order), forward and the gradient of every array, Keras against NumPy's vjp."""
    settings = {"data_format": "channels_first", **settings}  # NumPy's default; Keras' is channels_last
    out, pullback = P.vjp(name, *arrays.values(), **settings)
    g = rng.standard_normal(np.shape(out))
    ref = pullback(g)
    got, grads = value_and_grads(lambda *ts: getattr(KF, name)(*ts, **settings), list(arrays.values()), g)
    np.testing.assert_allclose(got, out, **tol)
    for label, gr in zip(arrays, grads):
        close = tol | ({"atol": grad_atol[label]} if grad_atol and label in grad_atol else {})
        np.testing.assert_allclose(gr, ref[label], err_msg=label, **close)
    return got


# --------------------------------------------------------------------------- gated


@x64
@pytest.mark.parametrize("per_channel", [False, True], ids=["shared", "per-channel"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_gated_equals_numpy(case: Case, layout, per_channel, rng):
    x = _layout(case.input(rng), layout)
    weight = rng.standard_normal((*case.shape[1:2], *_kernel(case)) if per_channel else _kernel(case))
    _check(f"gated_pool{case.nd}d", {"x": x, "weight": weight}, rng, **_window(case), data_format=layout)


@x64
@pytest.mark.parametrize("scale", [0.0, 1e4, -1e4], ids=["zero-gate", "saturated-max", "saturated-avg"])
def test_gated_zero_and_saturated_gates(scale, rng):
    """Filters at 0 (the layers' initialisation) still get a gradient; saturated gates give exactly
    the max or the average."""
    x = rng.uniform(0.1, 2.0, (2, 3, 6, 6))  # positive windows: the sign of the filter saturates the gate
    w = np.full((2, 2), scale)
    y = _check("gated_pool2d", {"x": x, "weight": w}, rng, kernel_size=2, data_format="channels_first")
    if scale:
        base = P.max_pool2d(x, 2) if scale > 0 else P.avg_pool2d(x, 2)
        np.testing.assert_allclose(y, base, **CLOSE)


def test_gated_non_finite_windows_give_nan(rng):
    x = np.ones((1, 1, 2, 6))
    x[0, 0, 0, 0], x[0, 0, 1, 3] = np.nan, np.inf
    y = to_numpy(KF.gated_pool2d(tensor(x), np.full((2, 2), 1e4), 2, data_format="channels_first"))
    np.testing.assert_array_equal(y, P.gated_pool2d(x, np.full((2, 2), 1e4), 2))
    assert np.isnan(y[0, 0, 0, :2]).all() and y[0, 0, 0, 2] == 1.0


# --------------------------------------------------------------------------- tree


@x64
@pytest.mark.parametrize(
    "depth,leaves_per_channel,gates_per_channel",
    [(1, False, False), (2, False, False), (2, True, False), (3, True, True)],
    ids=["depth1", "depth2-shared", "depth2-per-channel-leaves", "depth3-per-channel"],
)
@pytest.mark.parametrize("case,layout", [RESEARCH_CASES[i] for i in (1, 2, 4, 5, 6)])
def test_tree_equals_numpy(case: Case, layout, depth, leaves_per_channel, gates_per_channel, rng):
    x = _layout(case.input(rng), layout)
    n_leaves, c, k = 2 ** (depth - 1), case.shape[1], _kernel(case)
    leaves = rng.standard_normal((n_leaves, *((c,) if leaves_per_channel else ()), *k))
    gates = rng.standard_normal((n_leaves - 1, *((c,) if gates_per_channel else ()), *k))
    arrays = {"x": x, "leaves": leaves, "gates": gates}
    _check(f"tree_pool{case.nd}d", arrays, rng, **_window(case), data_format=layout)


@x64
def test_tree_saturated_gates_pick_a_leaf(rng):
    # positive inputs: the gate logit -1e4 * sum(x) saturates the gate at 0 (the right leaf)
    x = np.abs(rng.standard_normal((1, 2, 6, 6))) + 0.1
    leaves = rng.standard_normal((2, 2, 2))
    y = _check(
        "tree_pool2d", {"x": x, "leaves": leaves, "gates": np.full((1, 2, 2), -1e4)}, rng, kernel_size=2
    )
    np.testing.assert_allclose(y, P.tree_pool2d(x, leaves[1:], np.zeros((0, 2, 2)), 2), **CLOSE)


# --------------------------------------------------------------------------- detail-preserving


@x64
@pytest.mark.parametrize("asymmetric", [False, True], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_dpp_equals_numpy(case: Case, layout, asymmetric, rng):
    x = _layout(case.input(rng), layout)
    c = case.shape[1]
    per_channel = case.nd != 2  # scalars on the 2-D cases, per channel on 1-D and 3-D
    alpha = rng.uniform(0.1, 2.0, c) if per_channel else np.float64(0.7)
    lam = rng.uniform(0.0, 3.0, c) if per_channel else np.float64(1.5)
    arrays = {"x": x, "alpha": np.asarray(alpha), "lam": np.asarray(lam)}
    _check(f"dpp_pool{case.nd}d", arrays, rng, **_window(case), asymmetric=asymmetric, data_format=layout)


@x64
@pytest.mark.parametrize(
    "alpha,lam,eps,scale",
    [
        (0.0, 2.0, 1e-3, 1.0),
        (1.0, 0.0, 1e-3, 1.0),
        (0.0, 8.0, 1e-9, 1e-3),
        (0.5, 2.0, 1e-3, 1e100),
        (0.5, 1.0, 1e-3, 1e200),
    ],
    ids=["alpha-0", "lam-0", "tiny-eps-large-lam", "huge", "d2-capped"],
)
def test_dpp_edge_parameters_and_extreme_values(alpha, lam, eps, scale, rng):
    """alpha = 0 keeps a finite gradient (NumPy's), weights never overflow or vanish, and d^2 past the
    cap keeps NumPy's gradient rule."""
    x = rng.standard_normal((1, 3, 6, 6)) * scale
    arrays = {"x": x, "alpha": np.full(3, alpha), "lam": np.full(3, lam)}
    atol = None
    if scale > 1e150:
        # every d^2 is capped: all rho are equal, so dD/dalpha = sum_q (I_q - D) / S and dD/dlam =
        # sum_q (I_q - D) rho_q log(rho_q) / (lam S) are 0 up to rounding of terms |x| / max weight and
        # |x| log(big) / 2 (max weight = sqrt(big)^lam); compare at those scales.
        big = np.finfo(np.float64).max / 4
        size = np.abs(x).max() * x.size
        atol = {"alpha": 1e-12 * size / np.sqrt(big) ** lam, "lam": 1e-12 * size * np.log(big)}
    y = _check("dpp_pool2d", arrays, rng, grad_atol=atol, kernel_size=3, stride=1, padding=1, eps=eps)
    assert np.isfinite(y).all()


def test_dpp_non_finite_windows_give_nan():
    x = np.ones((1, 1, 2, 6))
    x[0, 0, 0, 0], x[0, 0, 1, 3] = np.nan, np.inf
    y = to_numpy(KF.dpp_pool2d(tensor(x), 1.0, 1.0, 2, data_format="channels_first"))
    assert np.isnan(y[0, 0, 0, :2]).all() and y[0, 0, 0, 2] == 1.0


# --------------------------------------------------------------------------- layers


@x64
def test_layer_clamps_are_straight_through(rng):
    """Out-of-range weights act as the nearest valid value, and their gradient is NumPy's there."""
    x = rng.standard_normal((1, 2, 6, 6))
    alpha, lam = np.array([-0.5, 0.8]), np.array([1.2, -1.0])
    out, pullback = P.vjp("dpp_pool2d", x, np.maximum(alpha, 0), np.maximum(lam, 0), 2)
    g = rng.standard_normal(out.shape)
    ref = pullback(g)

    def call(a: object, b: object) -> object:
        a, b = clamp_straight_through(a, 0.0), clamp_straight_through(b, 0.0)
        return KF.dpp_pool2d(tensor(x), a, b, 2, data_format="channels_first")

    got, (ga, gl) = value_and_grads(call, [alpha, lam], g)
    np.testing.assert_allclose(got, out, **CLOSE)
    np.testing.assert_allclose(ga, ref["alpha"], **CLOSE)
    np.testing.assert_allclose(gl, ref["lam"], **CLOSE)
    a = np.array([-0.2, 0.4, 1.7])
    got, (gx,) = value_and_grads(lambda t: clamp_straight_through(t, 0.0, 1.0) * 2.0, [a], np.ones(3))
    np.testing.assert_array_equal(got, [0.0, 0.8, 2.0])
    np.testing.assert_array_equal(gx, [2.0, 2.0, 2.0])


@pytest.mark.parametrize("per_channel", [False, True])
def test_layer_weights_shapes_and_initial_values(per_channel, rng):
    x = tensor(rng.standard_normal((2, 8, 6, 3)).astype(np.float32))
    per = (3,) if per_channel else ()
    gated = PK.GatedPool2D(2, per_channel=per_channel)
    np.testing.assert_allclose(
        to_numpy(gated(x)),
        (to_numpy(KF.max_pool2d(x, 2)) + to_numpy(KF.avg_pool2d(x, 2))) / 2,
        rtol=1e-5,
        atol=1e-6,
    )
    assert tuple(gated.weight.shape) == (*per, 2, 2) and not to_numpy(gated.weight).any()
    tree = PK.TreePool2D((2, 3), depth=3, per_channel=per_channel, seed=0)
    tree(x)
    assert tuple(tree.leaves.shape) == (4, *per, 2, 3) and tuple(tree.gates.shape) == (3, *per, 2, 3)
    leaves = to_numpy(tree.leaves)
    assert abs(leaves.mean() - 1 / 6) < 0.1 / 6 and 0.05 / 6 < leaves.std() < 0.2 / 6
    assert not to_numpy(tree.gates).any()
    np.testing.assert_array_equal(
        to_numpy(PK.TreePool2D((2, 3), depth=3, per_channel=per_channel, seed=0)(x)), to_numpy(tree(x))
    )
    dpp = PK.DPPPool2D(2, per_channel=per_channel)
    dpp(x)
    assert (
        tuple(dpp.alpha.shape) == per and (to_numpy(dpp.alpha) == 1).all() and (to_numpy(dpp.lam) == 1).all()
    )
    assert len(dpp.trainable_weights) == 2 and len(tree.trainable_weights) == 2


def test_tree_layer_of_depth_one_is_one_linear_filter(rng):
    x = rng.standard_normal((1, 6, 6, 2)).astype(np.float32)
    layer = PK.TreePool2D(2, depth=1, seed=1)
    y = to_numpy(layer(tensor(x)))
    assert tuple(layer.gates.shape) == (0, 2, 2)
    ref = P.tree_pool2d(x, to_numpy(layer.leaves), np.zeros((0, 2, 2)), 2, data_format="channels_last")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gated_pool2d", "tree_pool2d", "dpp_pool2d"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_dtype_is_kept(name, dtype, rng):
    x = rng.standard_normal((1, 4, 4, 2)).astype(dtype)
    params = {
        "gated_pool2d": (np.full((2, 2), 0.3),),
        "tree_pool2d": (np.full((2, 2, 2), 0.25), np.full((1, 2, 2), 0.1)),
        "dpp_pool2d": (1.0, 2.0),
    }[name]
    y = getattr(KF, name)(tensor(x), *params, 2)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    ref = getattr(P, name)(x, *params, 2, data_format="channels_last")
    np.testing.assert_allclose(to_numpy(y).astype(np.float64), ref, rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call,err,words",
    [
        (lambda x: KF.gated_pool2d(x, np.zeros((3, 3)), 2), PoolingInputError, "weight must have shape"),
        (lambda x: KF.gated_pool2d(x, ops.zeros((3, 2, 2)), 2), PoolingInputError, "weight must have shape"),
        (
            lambda x: KF.gated_pool2d(x, np.array(["a"] * 4).reshape(2, 2), 2),
            PoolingInputError,
            "real-valued",
        ),
        (lambda x: KF.gated_pool2d(x, np.zeros((2, 2)), 2, dilation=2), TypeError, "dilation"),
        (
            lambda x: KF.tree_pool2d(x, np.zeros((3, 2, 2)), np.zeros((2, 2, 2)), 2),
            PoolingInputError,
            "leaf filters",
        ),
        (
            lambda x: KF.tree_pool2d(x, np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), 2),
            PoolingInputError,
            "gates",
        ),
        (
            lambda x: KF.tree_pool2d(x, ops.zeros((2, 2, 2)), ops.zeros((2, 2, 2)), 2),
            PoolingInputError,
            "gates",
        ),
        (lambda x: KF.dpp_pool2d(x, -1.0, 1.0, 2), PoolingConfigError, "alpha"),
        (lambda x: KF.dpp_pool2d(x, 1.0, np.ones(3), 2), PoolingInputError, "lam"),
        (lambda x: KF.dpp_pool2d(x, ops.ones((3,)), 1.0, 2), PoolingInputError, "alpha"),
        (lambda x: KF.dpp_pool2d(x, 1.0, 1.0, 2, eps=0.0), PoolingConfigError, "eps"),
        (lambda x: KF.dpp_pool2d(x, 1.0, 1.0, 2, asymmetric=1), PoolingConfigError, "asymmetric"),
        (lambda x: KF.dpp_pool2d(x, 1.0, 1.0, 5), PoolingInputError, "does not fit"),
        (lambda x: PK.GatedPool2D(2, per_channel="yes"), PoolingConfigError, "per_channel"),
        (lambda x: PK.GatedPool2D(2, strides=0), PoolingConfigError, "strides"),
        (lambda x: PK.TreePool2D(2, depth=0), PoolingConfigError, "depth"),
        (lambda x: PK.TreePool2D(2, seed=0.5), PoolingConfigError, "seed"),
        (lambda x: PK.DPPPool2D(2, eps=-1.0), PoolingConfigError, "eps"),
        (lambda x: PK.DPPPool2D(2, padding=3), PoolingConfigError, "padding"),
        (lambda x: PK.DPPPool3D(2)(x), PoolingInputError, "5-D"),
    ],
    ids=[
        "weight-shape",
        "weight-tensor-shape",
        "weight-dtype",
        "no-dilation",
        "leaves-count",
        "gates-count",
        "gates-tensor-count",
        "alpha-negative",
        "lam-shape",
        "alpha-tensor-shape",
        "eps",
        "asymmetric",
        "window-too-large",
        "layer-per-channel",
        "layer-strides",
        "layer-depth",
        "layer-seed",
        "layer-eps",
        "layer-padding",
        "layer-rank",
    ],
)
def test_errors_name_the_argument(call, err, words, rng):
    x = tensor(rng.standard_normal((1, 4, 4, 2)))  # channels_last (Keras' default): C = 2, 4 x 4
    with pytest.raises(err, match=words):
        call(x)
