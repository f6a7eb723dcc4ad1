"""mixed_pool: reductions to max/avg pooling, gradients for x and alpha, lambda statistics."""

from __future__ import annotations

import numpy as np
import pytest

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.geometry import window_spec
from poolkit.ops import avg_pool, avg_pool2d, max_pool, max_pool2d, vjp
from poolkit.ops.mixed import mixed_pool, mixed_pool1d, mixed_pool2d

from cases import RESEARCH_CASES, Case
from helpers import check_grads, chisquare_p, distinct, numeric_grad, traced_peak

MODES = ["layer", "channel", "window"]


def _to_layout(a, layout):
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _alpha(mode, x_cf, window, rng):
    shape = {
        "layer": (),
        "channel": (x_cf.shape[1],),
        "window": window_spec(x_cf.shape[2:], **window).output_size,
    }[mode]
    return rng.uniform(0.1, 0.9, size=shape)


def _broadcast(a, mode, nd):
    """alpha -> broadcastable against a channels-first output."""
    if mode == "channel":
        return a.reshape(1, -1, *[1] * nd)
    if mode == "window":
        return a.reshape(1, 1, *a.shape)
    return a


def _check_fd(x, g, settings, wrt="x"):
    """Finite differences of ``mixed_pool`` in ``x`` or in the keyword ``alpha``."""
    y, pullback = vjp("mixed_pool", x, **settings)
    analytic = pullback(g)[wrt]
    if wrt == "x":
        numeric = numeric_grad(lambda v: mixed_pool(v, **settings), x, g)
    else:
        numeric = numeric_grad(lambda a: mixed_pool(x, **{**settings, "alpha": a}), settings["alpha"], g)
        assert analytic.shape == np.shape(settings["alpha"]) and analytic.dtype == np.float64
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=wrt)


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences_x_and_alpha(case: Case, layout, rng):
    x_cf = distinct(case.shape, rng)  # no ties: max pooling is differentiable
    x = _to_layout(x_cf, layout)
    out_shape = window_spec(case.shape[2:], **case.window()).output_size
    g = rng.standard_normal((case.shape[0], case.shape[1], *out_shape))
    g = _to_layout(g, layout)
    for i, mode in enumerate(MODES):
        kw = dict(
            alpha=_alpha(mode, x_cf, case.window(), rng), mode=mode, data_format=layout, **case.window()
        )
        _check_fd(x, g, kw, "alpha")
        if i == (case.shape[-1] + len(case.shape)) % 3:  # x's gradient: one mode per case suffices
            _check_fd(x, g, kw, "x")


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences_with_a_random_lambda(case: Case, layout, rng):
    x = _to_layout(distinct(case.shape, rng), layout)
    mode = MODES[len(case.shape) % 3]
    # a seeded lambda stays fixed during the check (check_grads keeps `rng=` for itself)
    kw = dict(mode=mode, rng=8, data_format=layout, **case.window())
    y, pullback = vjp("mixed_pool", x, **kw)
    assert set(pullback(np.ones_like(y))) == {"x"}
    _check_fd(x, rng.standard_normal(y.shape), kw)


def test_evaluation_gradient_is_that_of_alpha_one_half(rng):
    x = distinct((2, 3, 7, 6), rng)
    kw = dict(kernel_size=3, stride=2, padding=1)
    y, pullback = vjp("mixed_pool2d", x, training=False, mode="channel", **kw)
    y2, pullback2 = vjp("mixed_pool2d", x, alpha=0.5, **kw)
    g = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(pullback(g)["x"], pullback2(g)["x"])


def test_check_grads_with_alpha_as_a_setting(rng):
    x = distinct((1, 2, 5, 5), rng)
    check_grads("mixed_pool2d", {"x": x}, rng, kernel_size=3, stride=2, padding=1, alpha=0.3)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    "window", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)]
)
def test_alpha_one_is_max_pool_and_alpha_zero_is_avg_pool_exactly(dtype, window, rng):
    x = (rng.standard_normal((2, 3, 7, 8)) - 2.0).astype(dtype)  # mostly negative: padding must be -inf
    for mode in MODES:
        a = _alpha(mode, x, window, rng)
        np.testing.assert_array_equal(
            mixed_pool2d(x, alpha=np.ones_like(a), mode=mode, **window), max_pool2d(x, **window)
        )
        np.testing.assert_array_equal(
            mixed_pool2d(x, alpha=np.zeros_like(a), mode=mode, **window),
            avg_pool2d(x, count_include_pad=True, **window),
        )
    # gradients reduce too
    y, pb = vjp("mixed_pool2d", x, alpha=1.0, **window)
    g = np.ones_like(y)
    np.testing.assert_array_equal(pb(g)["x"], vjp("max_pool2d", x, **window)[1](g)["x"])
    y, pb = vjp("mixed_pool2d", x, alpha=0.0, **window)
    np.testing.assert_array_equal(pb(g)["x"], vjp("avg_pool2d", x, **window)[1](g)["x"])


def test_per_channel_and_per_window_alpha_mix_each_part(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    mx, av = max_pool2d(x, 2), avg_pool2d(x, 2)
    a = np.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(
        mixed_pool2d(x, 2, alpha=a, mode="channel"), a[:, None, None] * mx + (1 - a[:, None, None]) * av
    )
    w = rng.uniform(size=(3, 3))
    np.testing.assert_allclose(mixed_pool2d(x, 2, alpha=w, mode="window"), w * mx + (1 - w) * av)
    np.testing.assert_allclose(mixed_pool2d(x, 2, alpha=[0.3]), 0.3 * mx + 0.7 * av)
    assert vjp("mixed_pool2d", x, kernel_size=2, alpha=[0.3])[1](np.ones((2, 3, 3, 3)))["alpha"].shape == (1,)


def test_evaluation_is_the_expectation(rng):
    x = rng.standard_normal((2, 3, 7, 7))
    kw = dict(kernel_size=3, stride=2, padding=1)
    for mode in MODES:
        np.testing.assert_allclose(
            mixed_pool2d(x, mode=mode, training=False, **kw),
            0.5 * max_pool2d(x, **kw) + 0.5 * avg_pool2d(x, **kw),
        )


def _lambdas(x, y, **kw):
    """Recover lambda in {0, 1} from an output: it is exactly the max or exactly the average."""
    mx, av = max_pool(x, **kw), avg_pool(x, **kw)
    is_max, is_avg = y == mx, y == av
    assert (is_max ^ is_avg).all()  # distinct inputs: max != avg, and y is one of them
    return is_max


def test_lambda_frequencies_are_one_half_per_mode(rng):
    # layer: one lambda per call
    x = distinct((1, 2, 2, 4), rng)
    gen = np.random.default_rng(2024)
    mx = max_pool2d(x, 2)
    ys = [mixed_pool2d(x, 2, rng=gen) for _ in range(500)]
    lam = [_lambdas(x, y, kernel_size=2) for y in ys[:5]]
    assert all(v.all() or not v.any() for v in lam)  # one lambda for the whole call
    per_call = np.array([(y == mx).all() for y in ys])
    assert chisquare_p([int(per_call.sum()), per_call.size - int(per_call.sum())]) > 1e-3
    # channel: one lambda per channel, shared by the batch
    x = distinct((2, 3000, 2, 2), rng)
    lam = _lambdas(x, mixed_pool2d(x, 2, mode="channel", rng=7), kernel_size=2)
    assert (lam[0] == lam[1]).all()
    assert chisquare_p([int(lam[0].sum()), 3000 - int(lam[0].sum())]) > 1e-3
    # window: one lambda per output position, shared by the batch and the channels
    x = distinct((2, 2, 2, 6000), rng)
    lam = _lambdas(x, mixed_pool2d(x, 2, mode="window", rng=9), kernel_size=2)
    assert (lam == lam[:1, :1]).all()
    assert chisquare_p([int(lam[0, 0].sum()), lam[0, 0].size - int(lam[0, 0].sum())]) > 1e-3


def test_drawn_lambda_passed_as_alpha_reproduces_the_call(rng):
    x = distinct((2, 3, 6, 6), rng)
    y = mixed_pool2d(x, 2, mode="window", rng=3)
    lam = _lambdas(x, y, kernel_size=2)[0, 0].astype(float)
    np.testing.assert_array_equal(mixed_pool2d(x, 2, alpha=lam, mode="window"), y)


def test_seeded_runs_are_reproducible(rng):
    x = distinct((2, 64, 4, 4), rng)
    a = mixed_pool2d(x, 2, mode="channel", rng=5)
    np.testing.assert_array_equal(a, mixed_pool2d(x, 2, mode="channel", rng=np.random.default_rng(5)))
    assert not np.array_equal(a, mixed_pool2d(x, 2, mode="channel", rng=6))


@pytest.mark.parametrize("learn", [True, False], ids=["alpha", "random"])
def test_channels_last_equals_channels_first(learn, rng):
    x = distinct((2, 3, 7, 6), rng)
    kw = dict(kernel_size=3, stride=2, padding=1, mode="channel", rng=4)
    if learn:
        kw["alpha"] = rng.uniform(size=3)
    y, pb = vjp("mixed_pool2d", x, **kw)
    yl, pbl = vjp("mixed_pool2d", np.moveaxis(x, 1, -1), data_format="channels_last", **kw)
    # avg_pool sums in a layout-dependent order: equal up to rounding
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=1e-14, atol=1e-15)
    g = rng.standard_normal(y.shape)
    gf, gl = pb(g), pbl(np.moveaxis(g, 1, -1))
    np.testing.assert_allclose(np.moveaxis(gl["x"], -1, 1), gf["x"], rtol=1e-14, atol=1e-15)
    if learn:
        np.testing.assert_allclose(gl["alpha"], gf["alpha"], rtol=1e-12)


def test_degenerate_and_extreme_inputs():
    x = np.array(
        [
            [
                [[3.0, 3.0, 0.0, 0.0], [3.0, 3.0, 0.0, 0.0]],  # all equal | all zero
                [[1e4, -1e4, np.inf, 1.0], [-1e4, 1e4, 2.0, 3.0]],  # +-1e4 | +inf
                [[np.nan, 1.0, -np.inf, 1.0], [2.0, 3.0, 2.0, 3.0]],  # NaN | -inf
            ]
        ]
    )
    with np.errstate(all="raise"):
        for alpha in (0.0, 0.3, 1.0):
            y, pb = vjp("mixed_pool2d", x, kernel_size=2, alpha=alpha)
            grads = pb(np.ones_like(y))
            assert y[0, 0, 0, 0] == 3.0 and y[0, 0, 0, 1] == 0.0
            np.testing.assert_allclose(y[0, 1, 0, 0], alpha * 1e4)
            assert np.isnan(y[0, 2, 0, 0])  # the NaN is both the max and in the average
            assert y[0, 1, 0, 1] == np.inf
            assert y[0, 2, 0, 1] == (3.0 if alpha == 1.0 else -np.inf)  # a zero coefficient drops -inf
            assert np.isfinite(grads["alpha"])  # non-finite windows add nothing to alpha's gradient
            np.testing.assert_allclose(grads["alpha"], 1e4)  # only the finite windows: max - avg
        y16 = mixed_pool2d(x.astype(np.float16), 2, alpha=0.5)
    assert y16.dtype == np.float16 and y16[0, 1, 0, 0] == np.float16(5e3)


def test_inf_and_minus_inf_in_one_window():
    x = np.array([[[np.inf, -np.inf]]])
    with np.errstate(all="raise"):
        assert mixed_pool1d(x, 2, alpha=1.0)[0, 0, 0] == np.inf  # the max; the NaN average is dropped
        assert np.isnan(mixed_pool1d(x, 2, alpha=0.5)[0, 0, 0])


def test_float16_empty_and_unbatched(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    y16, pb = vjp("mixed_pool2d", x.astype(np.float16), kernel_size=2, alpha=np.float16(0.3))
    grads = pb(np.ones_like(y16))
    assert y16.dtype == np.float16 and grads["x"].dtype == np.float16 and grads["alpha"].dtype == np.float16
    ref = mixed_pool2d(x.astype(np.float16).astype(np.float32), 2, alpha=np.float32(np.float16(0.3)))
    np.testing.assert_array_equal(y16, ref.astype(np.float16))
    y, pb = vjp("mixed_pool2d", np.zeros((0, 3, 6, 6)), kernel_size=2, alpha=np.full(3, 0.5), mode="channel")
    grads = pb(y)
    assert y.shape == (0, 3, 3, 3) and grads["x"].shape == (0, 3, 6, 6) and (grads["alpha"] == 0).all()
    np.testing.assert_array_equal(mixed_pool2d(x[0], 2, rng=1), mixed_pool2d(x[:1], 2, rng=1)[0])


def test_errors(rng):
    x = rng.standard_normal((1, 3, 4, 4))
    with pytest.raises(
        PoolingConfigError, match="mode must be one of 'layer', 'channel', 'window', got 'region'"
    ):
        mixed_pool2d(x, 2, mode="region")
    with pytest.raises(PoolingConfigError, match=r"alpha must lie in \[0, 1\]"):
        mixed_pool2d(x, 2, alpha=1.5)
    with pytest.raises(PoolingConfigError, match=r"alpha must lie in \[0, 1\]"):
        mixed_pool2d(x, 2, alpha=np.array([0.5, -0.1, 0.2]), mode="channel")
    with pytest.raises(PoolingConfigError, match=r"alpha must lie in \[0, 1\]"):
        mixed_pool2d(x, 2, alpha=np.nan)
    with pytest.raises(PoolingConfigError, match="alpha must be real numbers"):
        mixed_pool2d(x, 2, alpha=True)
    with pytest.raises(PoolingConfigError, match="alpha must be real numbers"):
        mixed_pool2d(x, 2, alpha="0.5")
    with pytest.raises(
        PoolingInputError, match=r"mode='layer' alpha must have shape \(\) \(a scalar\), got shape \(3,\)"
    ):
        mixed_pool2d(x, 2, alpha=np.full(3, 0.5))
    with pytest.raises(PoolingInputError, match=r"mode='channel' alpha must have shape \(3,\)"):
        mixed_pool2d(x, 2, alpha=np.full(4, 0.5), mode="channel")
    with pytest.raises(PoolingInputError, match=r"mode='window' alpha must have shape \(2, 2\)"):
        mixed_pool2d(x, 2, alpha=np.full((3,), 0.5), mode="window")
    with pytest.raises(PoolingConfigError, match="rng must be None, an int seed or a numpy.random.Generator"):
        mixed_pool2d(x, 2, rng=1.5)
    with pytest.raises(PoolingConfigError, match="training must be True or False"):
        mixed_pool2d(x, 2, training="no")
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=2"):
        mixed_pool2d(x, 2, padding=2)


def test_peak_memory_within_three_times_input_plus_output():
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    kw = dict(kernel_size=3, stride=1, padding=1, alpha=np.full(16, 0.5, np.float32), mode="channel")
    g = np.ones_like(x)  # stride 1, padding 1: the output has the input's shape
    peak, y = traced_peak("mixed_pool2d", x, **kw, grad=g)
    io = x.nbytes + y.nbytes
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"


@pytest.mark.parametrize("training", [True, False])
def test_inputs_are_never_modified(training):
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    x0 = x.copy()
    y, pullback = vjp(
        "mixed_pool2d",
        x,
        **dict(
            kernel_size=3,
            stride=1,
            padding=1,
            alpha=np.full(3, 0.4) if training else None,
            mode="channel",
            rng=0,
        ),
    )
    g = np.ones_like(y)
    pullback(g)
    np.testing.assert_array_equal(x, x0)
    assert (g == 1).all()
