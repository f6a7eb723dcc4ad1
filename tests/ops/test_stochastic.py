"""stochastic_pool: a slow-loop oracle, sampling statistics, gradients, degenerate inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.geometry import window_spec
from poolkit.ops import max_pool2d, vjp
from poolkit.ops.stochastic import stochastic_pool, stochastic_pool1d, stochastic_pool2d

from cases import RESEARCH_CASES, Case
from helpers import check_grads, chisquare_p, numeric_grad, traced_peak


def _window_taps(spatial, window):
    """For every output position, the input coordinates of its taps inside the input (row-major)."""
    spec = window_spec(spatial, **window)
    per_axis = [
        [[c for c in range(st, st + ax.kernel) if 0 <= c < ax.size] for st in ax.starts] for ax in spec.axes
    ]
    out = {}
    for o in itertools.product(*(range(ax.out) for ax in spec.axes)):
        out[o] = list(itertools.product(*(per_axis[j][o[j]] for j in range(len(o)))))
    return spec.output_size, out


def _reference(x, window, training, seed=None, g=None):
    """Zeiler & Fergus by the book, one window at a time (channels-first float64)."""
    out_sp, windows = _window_taps(x.shape[2:], window)
    n, c = x.shape[:2]
    y = np.zeros((n, c, *out_sp))
    gx = np.zeros_like(x)
    g = np.ones_like(y) if g is None else g
    u = np.random.default_rng(seed).random(y.shape) if training else None
    for i, j in itertools.product(range(n), range(c)):
        for o, taps in windows.items():
            vals = np.array([x[(i, j, *t)] for t in taps])
            a = np.maximum(vals, 0)
            s = a.sum()
            if s == 0:
                continue
            if training:
                win = int(np.argmax(np.cumsum(a) > u[(i, j, *o)] * s))
                y[(i, j, *o)] = vals[win]
                gx[(i, j, *taps[win])] += g[(i, j, *o)]
            else:
                yo = (a * a).sum() / s
                y[(i, j, *o)] = yo
                for t, ai in zip(taps, a):
                    if ai > 0:
                        gx[(i, j, *t)] += g[(i, j, *o)] * (2 * ai - yo) / s
    return y, gx


def _to_layout(a, layout):
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _from_layout(a, layout):
    return np.moveaxis(a, -1, 1) if layout == "channels_last" else a


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_matches_slow_loop_reference(case: Case, layout, training, rng):
    x = case.input(rng)
    y, pullback = vjp(
        "stochastic_pool",
        _to_layout(x, layout),
        data_format=layout,
        training=training,
        rng=3,
        **case.window(),
    )
    g = rng.standard_normal(_from_layout(y, layout).shape)
    gx = _from_layout(pullback(_to_layout(g, layout))["x"], layout)
    ry, rgx = _reference(x, case.window(), training, 3, g)
    np.testing.assert_allclose(_from_layout(y, layout), ry, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gx, rgx, rtol=1e-10, atol=1e-12)


def check_fd_seeded(op, x, gen, **settings):
    """``check_grads`` for calls that take ``rng=`` (which check_grads keeps for itself)."""
    y, pullback = vjp(op, x, **settings)
    g = gen.standard_normal(y.shape)
    numeric = numeric_grad(lambda v: vjp(op, v, **settings)[0], x, g)
    np.testing.assert_allclose(pullback(g)["x"], numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences_evaluation(case: Case, layout, rng):
    x = _to_layout(case.input(rng), layout)
    check_grads("stochastic_pool", {"x": x}, rng, data_format=layout, training=False, **case.window())


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences_training(case: Case, layout, rng):
    # A fixed seed makes the training-mode function deterministic: the sample stays put under eps.
    x = _to_layout(case.input(rng), layout)
    check_fd_seeded("stochastic_pool", x, rng, data_format=layout, rng=11, **case.window())


def test_one_hot_windows_equal_max(rng):
    x = np.zeros((2, 3, 6, 6))
    x[:, :, ::2, 1::2] = rng.uniform(0.5, 2.0, size=(2, 3, 3, 3))  # one positive value per 2x2 window
    for training in (True, False):
        np.testing.assert_array_equal(stochastic_pool2d(x, 2, training=training, rng=0), max_pool2d(x, 2))


def test_sampling_frequencies_match_probabilities():
    # 4000 identical windows [[1, 0, 2], [-1, 3, 4]] in one call: p = [.1, 0, .2, 0, .3, .4].
    m = 4000
    pattern = np.array([[1.0, 0.0, 2.0], [-1.0, 3.0, 4.0]])
    x = np.tile(pattern, (1, m))[None, None]
    y, pullback = vjp("stochastic_pool2d", x, kernel_size=(2, 3), rng=12345)
    picked = pullback(np.ones_like(y))["x"].reshape(2, m, 3)
    assert (picked.sum(axis=(0, 2)) == 1).all()  # exactly one sample per window
    counts = picked.sum(axis=1).ravel()
    p = np.maximum(pattern, 0).ravel() / 10.0
    assert counts[p == 0].sum() == 0  # zero and negative taps are never sampled
    assert chisquare_p(counts[p > 0], m * p[p > 0]) > 1e-3
    # the output is the sampled value itself
    np.testing.assert_array_equal(
        y.ravel(), pattern.ravel()[np.argmax(picked.transpose(1, 0, 2).reshape(m, 6), 1)]
    )


def test_training_mean_converges_to_evaluation(rng):
    x0 = rng.standard_normal((1, 3, 4, 4))
    m = 3000
    x = np.repeat(x0, m, axis=0)
    ys = stochastic_pool2d(x, 2, rng=7)
    ev = stochastic_pool2d(x0, 2, training=False)[0]
    # exact standard deviation of one sample from the window's distribution
    a = np.maximum(x0[0], 0).reshape(3, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(3, 2, 2, 4)
    s = a.sum(-1)
    second = np.divide((a**3).sum(-1), s, out=np.zeros_like(s), where=s > 0)
    sd = np.sqrt(np.maximum(second - ev**2, 0))
    assert np.all(np.abs(ys.mean(axis=0) - ev) <= 4 * sd / np.sqrt(m) + 1e-12)
    assert (sd > 0).any()


class _FixedUniform(np.random.Generator):
    """A Generator whose uniforms are all ``u``: pins the sampling rule at its two ends."""

    def __init__(self, u):
        super().__init__(np.random.PCG64(0))
        self.u = u

    def random(self, size=None, dtype=np.float64, out=None):
        return np.full(size, self.u, dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_sampling_rule_at_the_ends_of_the_unit_interval(dtype):
    x = np.array([[[0.0, 0.3, -1.0, 0.7, 0.2, 0.0], [0.0, 0.0, 5.0, 0.0, 0.0, 0.0]]], dtype=dtype)
    # u = 0: the first positive tap, never a zero tap before it
    first = stochastic_pool1d(x, 6, rng=_FixedUniform(0.0))
    np.testing.assert_array_equal(first, np.array([[[0.3], [5.0]]], dtype=dtype))
    # u just below 1 (rounds to 1 in float32): the last positive tap, not "no sample"
    last = stochastic_pool1d(x, 6, rng=_FixedUniform(np.nextafter(1.0, 0.0)))
    np.testing.assert_array_equal(last, np.array([[[0.2], [5.0]]], dtype=dtype))


def test_seeded_runs_are_reproducible(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    a = stochastic_pool2d(x, 2, rng=5)
    np.testing.assert_array_equal(a, stochastic_pool2d(x, 2, rng=np.random.default_rng(5)))
    assert not np.array_equal(a, stochastic_pool2d(x, 2, rng=6))
    gen = np.random.default_rng(1)
    assert not np.array_equal(stochastic_pool2d(x, 2, rng=gen), stochastic_pool2d(x, 2, rng=gen))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_channels_last_equals_channels_first(training, rng):
    x = rng.standard_normal((2, 3, 7, 6))
    y, pb = vjp("stochastic_pool2d", x, kernel_size=3, stride=2, padding=1, training=training, rng=4)
    yl, pbl = vjp(
        "stochastic_pool2d",
        np.moveaxis(x, 1, -1),
        kernel_size=3,
        stride=2,
        padding=1,
        training=training,
        rng=4,
        data_format="channels_last",
    )
    np.testing.assert_array_equal(np.moveaxis(yl, -1, 1), y)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(np.moveaxis(pbl(np.moveaxis(g, 1, -1))["x"], -1, 1), pb(g)["x"], rtol=1e-14)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_windows_without_positive_values_give_zero_and_no_gradient(training):
    x = np.array(
        [[[[0.0, 0.0, -1.0, -2.0], [0.0, 0.0, -3.0, -np.inf], [2.0, 2.0, 5.0, 0.0], [2.0, 2.0, 0.0, 0.0]]]]
    )
    with np.errstate(all="raise"):
        y, pullback = vjp("stochastic_pool2d", x, kernel_size=2, training=training, rng=0)
        gx = pullback(np.ones_like(y))["x"]
    # all-zero, all-negative -> 0; all-equal -> the value; one-hot -> its value
    np.testing.assert_array_equal(y, [[[[0.0, 0.0], [2.0, 5.0]]]])
    assert (gx[..., :2, :] == 0).all()
    if training:
        assert gx[..., 2:, :2].sum() == 1 and gx[0, 0, 2, 2] == 1
    else:
        np.testing.assert_allclose(gx[..., 2:, :2], 0.25)  # (2 * 2 - 2) / 8 on each tap
        assert gx[0, 0, 2, 2] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_large_values_stay_finite(dtype, training, rng):
    x = (rng.standard_normal((2, 2, 6, 6)) * 1e4).astype(dtype)
    with np.errstate(all="raise"):
        y, pullback = vjp("stochastic_pool2d", x, kernel_size=3, stride=1, training=training, rng=2)
        gx = pullback(np.ones_like(y))["x"]
    assert np.isfinite(y).all() and np.isfinite(gx).all()
    ry, _ = _reference(x.astype(np.float64), dict(kernel_size=3, stride=1), training, 2)
    np.testing.assert_allclose(y, ry, rtol=1e-5 if dtype == np.float32 else 1e-12)
    big = np.full((1, 1, 2, 2), np.finfo(dtype).max / 2, dtype=dtype)  # sum(a^2) would overflow
    with np.errstate(all="raise"):
        np.testing.assert_allclose(
            stochastic_pool2d(big, 2, training=training, rng=0), big[..., :1, :1], rtol=1e-6
        )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_non_finite_inputs_follow_the_documented_rule(training):
    x = np.array(
        [[[[np.nan, 1.0, np.inf, 1.0, np.inf, np.inf], [2.0, 3.0, 2.0, 3.0, 0.0, -5.0]]]]
    )  # windows: NaN | one +inf | two +inf
    with np.errstate(all="raise"):
        y, pullback = vjp("stochastic_pool2d", x, kernel_size=2, training=training, rng=0)
        gx = pullback(np.ones_like(y))["x"]
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == np.inf and y[0, 0, 0, 2] == np.inf
    assert (gx[..., :2] == 0).all()  # NaN windows pass no gradient
    if training:
        assert gx[0, 0, 0, 2] == 1 and gx[..., 2:4].sum() == 1  # the +inf tap is the sample
        assert gx[0, 0, 0, 4:].sum() == 1 and (gx[0, 0, 1, 4:] == 0).all()
    else:
        assert (gx == 0).all()


def test_plus_inf_windows_sample_uniformly_among_their_inf_taps():
    m = 2000
    x = np.tile(np.array([[np.inf, 1.0], [np.inf, 5.0]]), (1, m))[None, None]
    y, pullback = vjp("stochastic_pool2d", x, kernel_size=2, rng=9)
    assert (y == np.inf).all()
    picked = pullback(np.ones_like(y))["x"].reshape(2, m, 2)
    assert (picked[:, :, 1] == 0).all()
    k = int(picked[0, :, 0].sum())
    assert chisquare_p([k, m - k]) > 1e-3


def test_padding_is_never_sampled(rng):
    x = rng.uniform(0.1, 1.0, size=(2, 2, 7, 7))  # positive everywhere: a padding zero would show
    for seed in range(20):
        y = stochastic_pool2d(x, 3, 2, 1, ceil_mode=True, rng=seed)
        assert (y >= 0.1).all()


def test_float16_empty_and_unbatched(rng):
    x = rng.uniform(-1, 2, size=(2, 3, 6, 6))
    for training in (True, False):
        y16, pb = vjp("stochastic_pool2d", x.astype(np.float16), kernel_size=2, training=training, rng=1)
        assert y16.dtype == np.float16 and pb(np.ones_like(y16))["x"].dtype == np.float16
        y32 = stochastic_pool2d(x.astype(np.float16).astype(np.float32), 2, training=training, rng=1)
        np.testing.assert_array_equal(y16, y32.astype(np.float16))
        y, pb = vjp("stochastic_pool2d", np.zeros((0, 3, 6, 6)), kernel_size=2, training=training)
        assert y.shape == (0, 3, 3, 3) and pb(y)["x"].shape == (0, 3, 6, 6)
        np.testing.assert_array_equal(
            stochastic_pool2d(x[0], 2, training=training, rng=3),
            stochastic_pool2d(x[:1], 2, training=training, rng=3)[0],
        )
    np.testing.assert_array_equal(stochastic_pool1d(np.array([[[0.0, 2.0]]]), 2), [[[2.0]]])


def test_errors(rng):
    x = rng.standard_normal((1, 1, 4, 4))
    with pytest.raises(PoolingConfigError, match="rng must be None, an int seed or a numpy.random.Generator"):
        stochastic_pool2d(x, 2, rng="seed")
    with pytest.raises(PoolingConfigError, match="rng must be None"):
        stochastic_pool2d(x, 2, rng=np.random.RandomState(0))
    with pytest.raises(PoolingConfigError, match="training must be True or False"):
        stochastic_pool2d(x, 2, training=1)
    with pytest.raises(PoolingConfigError, match="kernel_size must be >= 1"):
        stochastic_pool2d(x, 0)
    with pytest.raises(PoolingInputError, match="stochastic_pool2d expects a 4-D array"):
        stochastic_pool2d(x[0, 0], 2)
    with pytest.raises(PoolingInputError, match="floating-point"):
        stochastic_pool(x.astype(int), 2)
    with pytest.raises(PoolingInputError, match="grad_output must have shape"):
        vjp("stochastic_pool2d", x, kernel_size=2, rng=0)[1](np.ones((1, 1, 3, 3)))


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param(dict(kernel_size=3, stride=1, padding=1, training=False), id="eval-stride1"),
        pytest.param(dict(kernel_size=3, stride=2, padding=1, training=True, rng=0), id="train-stem"),
    ],
)
def test_peak_memory_within_three_times_input_plus_output(kw):
    # 16 MiB: the engine works block by block, as on real tensors; a kernel-volume copy would be 9x
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    out = window_spec((128, 128), kw["kernel_size"], kw["stride"], kw["padding"]).output_size
    g = np.ones((16, 16, *out), np.float32)  # the upstream gradient is the caller's memory
    peak, y = traced_peak("stochastic_pool2d", x, **kw, grad=g)
    io = x.nbytes + y.nbytes
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"


@pytest.mark.parametrize("training", [True, False])
def test_inputs_are_never_modified(training):
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    x0 = x.copy()
    y, pullback = vjp(
        "stochastic_pool2d", x, **dict(kernel_size=3, stride=1, padding=1, training=training, rng=0)
    )
    g = np.ones_like(y)
    pullback(g)
    np.testing.assert_array_equal(x, x0)
    assert (g == 1).all()


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_explicit_samples_reproduce_the_rng_draws(layout, rng):
    x = rng.standard_normal((2, 3, 7, 6))
    xin = np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x
    kw = dict(kernel_size=3, stride=2, padding=1, data_format=layout)
    u = np.random.default_rng(8).random((2, 3, 4, 3))  # (N, C, *out) whatever the layout
    y, pb = vjp("stochastic_pool2d", xin, samples=u, **kw)
    y_rng, pb_rng = vjp("stochastic_pool2d", xin, rng=8, **kw)
    np.testing.assert_array_equal(y, y_rng)
    g = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(pb(g)["x"], pb_rng(g)["x"])
    # unbatched input takes (C, *out); evaluation ignores the samples (but checks them)
    np.testing.assert_array_equal(stochastic_pool2d(xin[0], samples=u[0], **kw), y[0])
    np.testing.assert_array_equal(
        stochastic_pool2d(xin, samples=u, training=False, **kw), stochastic_pool2d(xin, training=False, **kw)
    )


def test_samples_are_checked():
    x = np.ones((1, 2, 4, 4))
    with pytest.raises(PoolingInputError, match=r"samples must have shape \(N, C, \*out\) = \(1, 2, 2, 2\)"):
        stochastic_pool2d(x, 2, samples=np.zeros((1, 2, 4, 4)))
    with pytest.raises(PoolingInputError, match=r"samples must be floats in \[0, 1\)"):
        stochastic_pool2d(x, 2, samples=np.ones((1, 2, 2, 2)), training=False)
    with pytest.raises(PoolingInputError, match=r"samples must be floats in \[0, 1\), got dtype int64"):
        stochastic_pool2d(x, 2, samples=np.zeros((1, 2, 2, 2), dtype=np.int64))
