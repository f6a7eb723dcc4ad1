"""Stochastic, mixed and S3 pooling in Keras: equal to the NumPy reference given the same draws
(forward and every gradient, float64), draws from ``seed`` distributed as NumPy's probabilities
(chi-square, fixed seeds), non-finite and extreme inputs, the layers' training/inference split.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from keras import ops

import poolkit.keras as PK
import poolkit.keras.functional as KF
import poolkit.ops as P
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.geometry import window_spec

from cases import RESEARCH_CASES, Case
from helpers import chisquare_p
from keras_helpers import X64, tensor, to_numpy, value_and_grads

x64 = pytest.mark.skipif(not X64, reason="exact float64 comparisons")
CLOSE = dict(rtol=1e-10, atol=1e-12)


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


def _check(name: str, x: np.ndarray, rng: np.random.Generator, kw_arrays: dict | None = None, **settings):
    """Forward and the gradients of ``x`` and of every array in ``kw_arrays``, Keras against NumPy's vjp."""
    kw_arrays = kw_arrays or {}
    settings = {"data_format": "channels_first", **settings}  # NumPy's default; Keras' is channels_last
    out, pullback = P.vjp(name, x, **kw_arrays, **settings)
    g = rng.standard_normal(np.shape(out))
    ref = pullback(g)

    def call(t, *more):
        return getattr(KF, name)(t, **dict(zip(kw_arrays, more)), **settings)

    got, grads = value_and_grads(call, [x, *kw_arrays.values()], g)
    np.testing.assert_allclose(got, out, **CLOSE)
    for label, gr in zip(["x", *kw_arrays], grads):
        np.testing.assert_allclose(gr, ref[label], err_msg=label, **CLOSE)
    return got


def _window(case: Case) -> dict:
    return dict(
        kernel_size=case.kernel_size, stride=case.stride, padding=case.padding, ceil_mode=case.ceil_mode
    )


def _out(case: Case) -> tuple[int, ...]:
    spec = window_spec(case.shape[2:], case.kernel_size, case.stride, case.padding, 1, case.ceil_mode)
    return (*case.shape[:2], *spec.output_size)


# --------------------------------------------------------------------------- stochastic


@x64
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_stochastic_equals_numpy_given_the_samples(case: Case, layout, training, rng):
    x = _layout(case.input(rng), layout)
    u = rng.random(_out(case))
    name = f"stochastic_pool{case.nd}d"
    _check(name, x, rng, **_window(case), training=training, samples=u, data_format=layout)


@x64
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_stochastic_non_finite_extreme_and_non_positive_windows(training, rng):
    big = np.finfo(np.float64).max
    x = np.array(
        [
            [np.nan, 1.0, np.inf, 1.0, np.inf, np.inf, -np.inf, 2.0, -1.0, -3.0, 0.0, 0.0],
            [2.0, 3.0, 2.0, 3.0, 0.0, -5.0, 1.0, 4.0, -2.0, -1.0, 0.0, 0.0],
            [1e300, 3e300, big / 2, big, 1e-300, 2e-300, 5.0, 5.0, 1e4, 3e4, 7.0, 0.0],
        ]
    )[None, None]
    # (2, 2) windows over rows 0-1 (NaN | +inf | two +inf | -inf | all <= 0 | all 0) and rows 1-2
    # (huge, near the float maximum, tiny, ties, large): u at both ends of [0, 1)
    u = np.array([[0.0, 0.3, 0.5, 0.999, np.nextafter(1.0, 0.0), 0.7], [0.7, 0.999, 0.0, 0.5, 0.3, 0.1]])
    kw = dict(
        kernel_size=2, stride=(1, 2), training=training, samples=u[None, None], data_format="channels_first"
    )
    y = _check("stochastic_pool2d", x, rng, **kw)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == y[0, 0, 0, 2] == np.inf
    np.testing.assert_array_equal(y[0, 0, 0, 4:], 0.0)


@x64
def test_stochastic_large_windows_do_not_overflow(rng):
    x = np.full((1, 1, 2, 2), np.finfo(np.float64).max / 2)
    for training in (True, False):
        y = _check(
            "stochastic_pool2d",
            x,
            rng,
            kernel_size=2,
            training=training,
            samples=np.full((1, 1, 1, 1), 0.5),
            data_format="channels_first",
        )
        np.testing.assert_array_equal(y, x[..., :1, :1])


def test_stochastic_samples_follow_the_probabilities():
    """4000 identical windows [1, 0, 2, -1, 3, 4]: p = [.1, 0, .2, 0, .3, .4], drawn from one seed."""
    m = 4000
    pattern = np.array([1.0, 0.0, 2.0, -1.0, 3.0, 4.0], np.float32)
    x = np.tile(pattern, m)[None, None]
    y = to_numpy(KF.stochastic_pool1d(tensor(x), 6, seed=12345, data_format="channels_first")).ravel()
    counts = np.array([(y == v).sum() for v in pattern])
    p = np.maximum(pattern, 0) / 10.0
    assert counts.sum() == m and counts[p == 0].sum() == 0  # zero and negative taps are never sampled
    assert chisquare_p(counts[p > 0], m * p[p > 0]) > 1e-3
    # a +inf window samples uniformly among its +inf taps
    picked = _sample_positions(np.tile(np.array([np.inf, 1.0, np.inf], np.float32), m)[None, None])
    assert set(np.unique(picked)) <= {0, 2}
    k = int((picked == 0).sum())
    assert chisquare_p([k, m - k]) > 1e-3


def _sample_positions(x: np.ndarray) -> np.ndarray:
    """Which tap of each (1, 3)-window the seeded draw picked (the gradient's one-hot)."""
    _, (gx,) = value_and_grads(
        lambda t: KF.stochastic_pool1d(t, 3, seed=7, data_format="channels_first"),
        [x],
        np.ones((1, 1, x.shape[-1] // 3), x.dtype),
    )
    assert (gx.reshape(-1, 3).sum(1) == 1).all()
    return gx.reshape(-1, 3).argmax(1)


def test_stochastic_seeds_and_the_layer_split(rng):
    x = tensor(rng.uniform(0.1, 1.0, (2, 6, 6, 3)).astype(np.float32))
    a, b, c = (to_numpy(KF.stochastic_pool2d(x, 2, seed=s)) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    layer = PK.StochasticPool2D(2, seed=0)
    t1, t2 = to_numpy(layer(x, training=True)), to_numpy(layer(x, training=True))
    assert not np.array_equal(t1, t2)  # the generator advances
    np.testing.assert_array_equal(t1, to_numpy(PK.StochasticPool2D(2, seed=0)(x, training=True)))
    xn = to_numpy(x)
    windows = (
        np.moveaxis(xn, -1, 1).reshape(2, 3, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 3, 4)
    )
    assert np.isin(np.moveaxis(t1, -1, 1)[..., None], windows).any(-1).all()  # samples are window members
    inference = P.stochastic_pool2d(xn, 2, training=False, data_format="channels_last")
    np.testing.assert_allclose(to_numpy(layer(x)), inference, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), inference, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_stochastic_keeps_the_dtype(dtype, rng):
    x = rng.standard_normal((1, 4, 4, 2)).astype(dtype)
    for training in (True, False):
        y = KF.stochastic_pool2d(tensor(x), 2, training=training, seed=0)
        assert keras.backend.standardize_dtype(y.dtype) == dtype
    ref = P.stochastic_pool2d(x, 2, training=False, data_format="channels_last")
    np.testing.assert_allclose(to_numpy(KF.stochastic_pool2d(tensor(x), 2, training=False)), ref, rtol=1e-3)


# --------------------------------------------------------------------------- mixed


@x64
@pytest.mark.parametrize("mode", ["layer", "channel", "window"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_mixed_alpha_equals_numpy_with_its_gradient(case: Case, layout, mode, rng):
    x = _layout(case.input(rng), layout)
    shape = {"layer": (), "channel": case.shape[1:2], "window": _out(case)[2:]}[mode]
    alpha = rng.choice([0.0, 0.3, 0.5, 0.7, 1.0], size=shape)
    _check(f"mixed_pool{case.nd}d", x, rng, {"alpha": alpha}, **_window(case), mode=mode, data_format=layout)


@x64
@pytest.mark.parametrize("a", [0.0, 0.25, 0.5, 1.0])
def test_mixed_non_finite_windows(a, rng):
    x = np.array([[[1.0, np.inf, -np.inf, np.inf, np.nan, 2.0, -np.inf, -np.inf, 3.0, 4.0]]])
    _check("mixed_pool1d", x, rng, {"alpha": np.full((), a)}, kernel_size=2, data_format="channels_first")


@x64
def test_mixed_inference_is_the_half_mix(rng):
    c = RESEARCH_CASES[1].values[0]
    _check(
        "mixed_pool2d",
        c.input(rng),
        rng,
        **_window(c),
        training=False,
        mode="window",
        data_format="channels_first",
    )


def test_mixed_draws_lambda_fairly_and_reproducibly(rng):
    x = rng.standard_normal((1, 2, 40, 40))
    mx, av = P.max_pool2d(x, 2), P.avg_pool2d(x, 2)
    y = to_numpy(KF.mixed_pool2d(tensor(x), 2, mode="window", seed=5, data_format="channels_first"))
    lam = np.isclose(y, mx, rtol=1e-6, atol=1e-6)[0, 0].astype(np.float64)
    np.testing.assert_allclose(y, np.where(lam == 1, mx, av), rtol=1e-5, atol=1e-6)  # 0 or 1 per window
    np.testing.assert_array_equal(lam, np.isclose(y, mx, rtol=1e-6, atol=1e-6)[0, 1])  # shared by channels
    k = int(lam.sum())
    assert chisquare_p([k, lam.size - k]) > 1e-3
    np.testing.assert_allclose(P.mixed_pool2d(x, 2, alpha=lam, mode="window"), y, rtol=1e-5, atol=1e-6)
    again = to_numpy(KF.mixed_pool2d(tensor(x), 2, mode="window", seed=5, data_format="channels_first"))
    np.testing.assert_array_equal(again, y)


def test_mixed_layer_modes_and_clamped_alpha(rng):
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    ref = lambda a, mode: P.mixed_pool2d(x, 2, alpha=a, mode=mode, data_format="channels_last")  # noqa: E731
    fixed = PK.MixedPool2D(2, alpha=0.2, mode="channel")
    np.testing.assert_allclose(
        to_numpy(fixed(tensor(x))), ref(np.full(3, 0.2), "channel"), rtol=1e-5, atol=1e-6
    )
    assert not fixed.trainable_weights
    layer = PK.MixedPool2D(2, learnable=True, mode="window")
    layer.build(x.shape)
    assert tuple(layer.alpha_weight.shape) == (3, 3)
    layer.alpha_weight.assign(
        np.array([[-1.0, 0.0, 0.5]] * 3, np.float32).T + np.array([0, 0.3, 1.5], np.float32)
    )
    # values past [0, 1] act as the ends (the gradient still reaches them: straight-through)
    clipped = np.clip(to_numpy(layer.alpha_weight), 0, 1)
    np.testing.assert_allclose(to_numpy(layer(tensor(x))), ref(clipped, "window"), rtol=1e-5, atol=1e-6)
    rand = PK.MixedPool2D(2, seed=1)
    np.testing.assert_allclose(
        to_numpy(rand(tensor(x))),
        P.mixed_pool2d(x, 2, training=False, data_format="channels_last"),
        rtol=1e-5,
        atol=1e-6,
    )
    y = to_numpy(rand(tensor(x), training=True))
    mx, av = (f(x, 2, data_format="channels_last") for f in (P.max_pool2d, P.avg_pool2d))
    assert np.allclose(y, mx, rtol=1e-6) or np.allclose(y, av, rtol=1e-6)  # one lambda for the layer


# --------------------------------------------------------------------------- S3


def _rows(case_shape: tuple[int, ...], grid: int, stride: int, seed: int) -> list[np.ndarray]:
    from poolkit.ops.s3 import _rows as draw

    gen = np.random.default_rng(seed)
    return [draw(gen, n, grid, stride) for n in case_shape[2:]]


@x64
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "shape,k,grid,stride,layout",
    [
        ((2, 3, 8, 8), 2, 4, 2, "channels_first"),
        ((1, 2, 9, 7), 3, 2, 2, "channels_last"),
        ((2, 2, 11), 2, 6, 3, "channels_first"),
        ((1, 2, 5, 6, 7), 2, 2, 1, "channels_first"),
    ],
    ids=["2d-grid4", "2d-k3-odd-channels-last", "1d-partial-cell", "3d-stride1"],
)
def test_s3_equals_numpy_given_the_rows(shape, k, grid, stride, layout, training, rng):
    x = _layout(rng.integers(-3, 4, shape).astype(np.float64), layout)  # ties: the first maximum wins
    rows = _rows(shape, grid, stride, 3)
    settings = dict(grid_size=grid, stride=stride, training=training, samples=rows, data_format=layout)
    nd = len(shape) - 2
    _check(f"s3_pool{nd}d", x, rng, kernel_size=k, **settings)


@x64
def test_s3_takes_tensor_rows(rng):
    x = rng.standard_normal((1, 2, 8, 6))
    rows = _rows(x.shape, 4, 2, 1)
    ref = P.s3_pool2d(x, 2, 4, samples=rows)
    got = KF.s3_pool2d(
        tensor(x), 2, 4, samples=[ops.convert_to_tensor(r) for r in rows], data_format="channels_first"
    )
    np.testing.assert_array_equal(to_numpy(got), ref)


def test_s3_draws_uniform_ordered_subsets(rng):
    """Each full cell of 4 keeps a uniform 2-subset (6 equally likely); a partial cell of 3 keeps 2 of 3."""
    n_cells = 600
    x = np.arange(n_cells * 4 + 3, dtype=np.float32)[None, None]  # kernel 1: m = x, each value its row
    y = to_numpy(KF.s3_pool1d(tensor(x), 1, 4, stride=2, seed=11, data_format="channels_first"))[0, 0]
    rows = y.astype(int)
    assert (np.diff(rows) > 0).all()
    full = rows[: 2 * n_cells].reshape(n_cells, 2) % 4
    subsets = list(itertools.combinations(range(4), 2))
    counts = [int(((full[:, 0] == a) & (full[:, 1] == b)).sum()) for a, b in subsets]
    assert sum(counts) == n_cells and chisquare_p(counts) > 1e-3
    assert len(rows) == 2 * n_cells + 2 and set(rows[-2:]) <= set(range(4 * n_cells, 4 * n_cells + 3))
    # partial cells of 3, many draws through the layer's generator
    layer = PK.S3Pool1D(1, 2, data_format="channels_first", grid_size=4, seed=0)
    picks = [tuple(to_numpy(layer(tensor(x[..., :3]), training=True))[0, 0].astype(int)) for _ in range(120)]
    counts = [picks.count(s) for s in itertools.combinations(range(3), 2)]
    assert sum(counts) == 120 and chisquare_p(counts) > 1e-3


def test_s3_layer_inference_and_shapes(rng):
    x = rng.standard_normal((2, 9, 7, 3)).astype(np.float32)
    layer = PK.S3Pool2D(3, grid_size=4, seed=0)
    ref = P.s3_pool2d(x, 3, 4, training=False, data_format="channels_last")
    np.testing.assert_array_equal(to_numpy(layer(tensor(x))), ref)
    assert tuple(layer(tensor(x), training=True).shape) == ref.shape == layer.compute_output_shape(x.shape)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call,err,words",
    [
        (lambda x: KF.stochastic_pool2d(x, 2, samples=np.zeros((1, 2, 3, 3))), PoolingInputError, "samples"),
        (
            lambda x: KF.stochastic_pool2d(x, 2, samples=np.full((1, 2, 2, 2), 1.0)),
            PoolingInputError,
            r"\[0, 1\)",
        ),
        (lambda x: KF.stochastic_pool2d(x, 2, samples=ops.zeros((1, 2, 3, 3))), PoolingInputError, "samples"),
        (lambda x: KF.stochastic_pool2d(x, 2, seed=1.5), PoolingConfigError, "seed"),
        (lambda x: KF.stochastic_pool2d(x, 2, training="yes"), PoolingConfigError, "training"),
        (lambda x: KF.stochastic_pool2d(x, 2, dilation=2), TypeError, "dilation"),
        (lambda x: KF.mixed_pool2d(x, 2, alpha=1.5), PoolingConfigError, r"\[0, 1\]"),
        (lambda x: KF.mixed_pool2d(x, 2, alpha=np.full(3, 0.5), mode="channel"), PoolingInputError, "alpha"),
        (lambda x: KF.mixed_pool2d(x, 2, alpha=ops.ones((3,)), mode="channel"), PoolingInputError, "alpha"),
        (lambda x: KF.mixed_pool2d(x, 2, mode="pixel"), PoolingConfigError, "mode"),
        (lambda x: KF.s3_pool2d(x, 2, 3), PoolingConfigError, "grid_size"),
        (lambda x: KF.s3_pool2d(x, 2, 4, samples=[np.array([0, 1])]), PoolingInputError, "samples"),
        (
            lambda x: KF.s3_pool2d(x, 2, 4, samples=[np.array([1, 0]), np.array([0, 2])]),
            PoolingInputError,
            "increasing",
        ),
        (
            lambda x: KF.s3_pool2d(x, 2, 4, samples=[ops.zeros((2,)), ops.zeros((2,))]),
            PoolingInputError,
            "integer",
        ),
        (lambda x: PK.StochasticPool2D(0), PoolingConfigError, "pool_size"),
        (lambda x: PK.StochasticPool2D(2, seed="a"), PoolingConfigError, "seed"),
        (lambda x: PK.MixedPool2D(2, alpha=-0.1), PoolingConfigError, "alpha"),
        (lambda x: PK.MixedPool2D(2, mode="x"), PoolingConfigError, "mode"),
        (lambda x: PK.S3Pool2D(2, strides=2, grid_size=3), PoolingConfigError, "multiple of strides"),
        (lambda x: PK.S3Pool2D(strides=0), PoolingConfigError, "strides"),
    ],
    ids=[
        "samples-shape",
        "samples-range",
        "samples-tensor-shape",
        "seed",
        "training",
        "no-dilation",
        "alpha-range",
        "alpha-shape",
        "alpha-tensor-shape",
        "mode",
        "grid",
        "rows-count",
        "rows-order",
        "rows-dtype",
        "layer-pool-size",
        "layer-seed",
        "layer-alpha",
        "layer-mode",
        "layer-grid",
        "layer-strides",
    ],
)
def test_errors_name_the_argument(call, err, words, rng):
    x = tensor(rng.standard_normal((1, 4, 4, 2)))  # channels_last (Keras' default): C = 2, 4 x 4
    with pytest.raises(err, match=words):
        call(x)
