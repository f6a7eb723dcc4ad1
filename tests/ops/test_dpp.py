"""dpp_pool: a slow loop reference, its limits (average pooling), stability, gradients, checks."""

from __future__ import annotations

import numpy as np
import pytest

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.geometry import window_spec
from poolkit.ops import avg_pool, max_pool, vjp
from poolkit.ops.dpp import dpp_pool, dpp_pool1d, dpp_pool2d

from cases import RESEARCH_CASES, Case
from helpers import check_grads, traced_peak


def _windows(spatial, window):
    """Each output index with the input coordinates of its taps inside the input."""
    spec = window_spec(
        spatial,
        window["kernel_size"],
        window.get("stride"),
        window.get("padding", 0),
        1,
        window.get("ceil_mode", False),
    )
    for o in np.ndindex(*spec.output_size):
        coords = []
        for k in np.ndindex(*spec.kernel_size):
            coord = tuple(int(ax.starts[oi]) + ki for ax, oi, ki in zip(spec.axes, o, k))
            if all(0 <= ci < ax.size for ci, ax in zip(coord, spec.axes)):
                coords.append(coord)
        yield o, coords


def _slow_dpp(x, alpha, lam, window, asymmetric=False, eps=1e-3):
    """The paper's formula, window by window, with Itilde the mean of the window's taps."""
    wins = list(_windows(x.shape[2:], window))
    out = tuple(np.max([o for o, _ in wins], axis=0) + 1)
    y = np.zeros((*x.shape[:2], *out))
    alpha = np.broadcast_to(alpha, x.shape[1])
    lam = np.broadcast_to(lam, x.shape[1])
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for o, coords in wins:
                vals = np.array([x[(n, c, *q)] for q in coords])
                d = vals - vals.mean()
                if asymmetric:
                    d = np.maximum(d, 0.0)
                w = alpha[c] + np.sqrt(d**2 + eps**2) ** lam[c]
                y[(n, c, *o)] = (w * vals).sum() / w.sum()
    return y


def _layout(x, layout):
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


def _params(rng, c, per_channel=True):
    shape = (c,) if per_channel else ()
    return np.array(rng.uniform(0.2, 1.0, shape)), np.array(rng.uniform(0.5, 3.0, shape))


@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_matches_slow_reference(case: Case, layout, asymmetric, rng):
    x = case.input(rng)
    alpha, lam = _params(rng, x.shape[1], per_channel=case.nd != 1)
    if alpha.ndim:
        alpha[0] = 0.0  # allowed: only rho weighs
    y = dpp_pool(_layout(x, layout), alpha, lam, asymmetric=asymmetric, data_format=layout, **case.window())
    if layout == "channels_last":
        y = np.moveaxis(y, -1, 1)
    expect = _slow_dpp(x, alpha, lam, case.window(), asymmetric)
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences(case: Case, layout, rng):
    x = _layout(case.input(rng), layout)
    alpha, lam = _params(rng, case.shape[1])
    arrays = {"x": x, "alpha": alpha, "lam": lam}
    check_grads("dpp_pool", arrays, rng, data_format=layout, **case.window())


@pytest.mark.parametrize("per_channel", [False, True])
def test_finite_differences_asymmetric(per_channel, rng):
    case = Case((1, 3, 5, 6), 3, 2, 1, ceil_mode=True)
    alpha, lam = _params(rng, 3, per_channel)
    grads = check_grads(
        "dpp_pool2d",
        {"x": case.input(rng), "alpha": alpha, "lam": lam},
        rng,
        asymmetric=True,
        **case.window(),
    )
    assert grads["alpha"].shape == alpha.shape and grads["lam"].shape == lam.shape


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_lam_zero_is_average_pooling_over_the_valid_taps(case: Case, layout, rng):
    x = case.input(rng)
    y = dpp_pool(x, rng.uniform(0, 2, x.shape[1]), 0.0, **case.window())
    np.testing.assert_allclose(
        y, avg_pool(x, count_include_pad=False, **case.window()), rtol=1e-12, atol=1e-14
    )


def test_large_alpha_tends_to_average_pooling(rng):
    x = rng.standard_normal((2, 3, 7, 7))
    win = dict(kernel_size=3, stride=2, padding=1)
    avg = avg_pool(x, count_include_pad=False, **win)
    err = [np.abs(dpp_pool2d(x, a, 2.0, **win) - avg).max() for a in (1e2, 1e4, 1e6, 1e8)]
    # The weights are alpha + O(1): D - avg shrinks like 1 / alpha.
    assert err[0] > 1e-3 and all(e1 > 50 * e2 for e1, e2 in zip(err, err[1:])) and err[-1] < 1e-7


@pytest.mark.parametrize("asymmetric", [False, True])
def test_outputs_lie_between_window_min_and_max_and_asymmetric_favours_high_values(asymmetric, rng):
    x = rng.standard_normal((2, 3, 9, 8)) * 3
    win = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    y = dpp_pool2d(x, rng.uniform(0, 1, 3), 4.0, asymmetric=asymmetric, **win)
    assert (y <= max_pool(x, **win)).all() and (y >= -max_pool(-x, **win)).all()
    if asymmetric:  # weights grow with the value: a weighted mean at least the plain mean
        assert (y >= avg_pool(x, count_include_pad=False, **win) - 1e-12).all()


def test_detail_is_preserved():
    x = np.array([[[0.0, 0.0, 0.0, 3.0]]])
    np.testing.assert_allclose(dpp_pool1d(x, 0.0, 1.0, 4, eps=1e-12), [[[1.5]]], rtol=1e-12)  # |d| weights
    # Asymmetric: taps below the mean weigh only eps^lam, so the bright detail survives.
    np.testing.assert_allclose(dpp_pool1d(x, 0.0, 1.0, 4, asymmetric=True), [[[3.0]]], rtol=2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_parameters_and_inputs_stay_finite_without_warnings(dtype, rng):
    win = dict(kernel_size=3, stride=2, padding=1)
    x = rng.standard_normal((2, 3, 7, 7))
    with np.errstate(all="raise"):
        for scale, alpha, lam in [(1e4, 0.5, 10.0), (1.0, 0.0, 60.0), (1e-3, 0.0, 200.0), (1e4, 1e30, 3.0)]:
            # (2e4)^10 overflows float32, eps^60 underflows it: the weights are computed scaled.
            xs = (x * scale).astype(dtype)
            y, pullback = vjp("dpp_pool2d", xs, alpha, lam, **win)
            grads = pullback(np.ones_like(y))
            assert np.isfinite(y).all() and np.isfinite(grads["x"]).all() and np.isfinite(grads["lam"])
            assert (y <= max_pool(xs, **win)).all() and (y >= -max_pool(-xs, **win)).all()
            y64, pb64 = vjp("dpp_pool2d", xs.astype(np.float64), alpha, lam, **win)
            np.testing.assert_allclose(y, y64, rtol=1e-3, atol=1e-3 * scale)
            # dD/dalpha = sum_q (I[q] - D) / sum_q w: with alpha = 0 and weights like |d|^60 or
            # e^-1300 it is beyond the dtype's range, and only then is it infinite.
            ga64 = pb64(np.ones_like(y64))["alpha"]
            representable = np.isfinite(ga64) and abs(ga64) < np.finfo(dtype).max / 1e3
            assert np.isfinite(grads["alpha"]) == representable, (scale, alpha, lam, ga64)
        same = np.full((1, 3, 6, 6), 2.5, dtype)
        np.testing.assert_allclose(dpp_pool2d(same, 0.0, 1.0, 3), 2.5, rtol=1e-6)
        zero = np.zeros((1, 3, 6, 6), dtype)
        y, pullback = vjp("dpp_pool2d", zero, np.ones(3), np.full(3, 2.0), kernel_size=3)
        grads = pullback(np.ones_like(y))
        assert (y == 0).all() and (grads["alpha"] == 0).all() and (grads["lam"] == 0).all()
        for eps in (1e-30, 1e30):  # clamped to keep eps^2 normal and finite
            assert np.isfinite(dpp_pool2d(x.astype(dtype), 0.5, 0.0, 3, eps=eps)).all()


def test_non_finite_windows_give_nan_and_leave_the_others_alone():
    x = np.zeros((1, 3, 2, 4))
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 1, 1] = np.inf
    x[0, 2, 0, 1] = -np.inf
    with np.errstate(all="raise"):
        y, pullback = vjp("dpp_pool2d", x, 0.5, 2.0, kernel_size=2)
        grads = pullback(np.ones_like(y))
    assert np.isnan(y[0, :, 0, 0]).all() and (y[0, :, 0, 1] == 0).all()
    assert np.isnan(grads["alpha"]) and np.isnan(grads["lam"])  # scalars: the sum reaches NaN


def test_channels_last_unbatched_float16_empty_and_gradient_dtypes(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    alpha, lam = _params(rng, 3)
    win = dict(kernel_size=3, stride=2, padding=1)
    y, pb = vjp("dpp_pool2d", x, alpha, lam, **win)
    yl, pbl = vjp("dpp_pool2d", np.moveaxis(x, 1, -1), alpha, lam, data_format="channels_last", **win)
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=1e-13, atol=1e-15)
    g = rng.standard_normal(y.shape)
    ga, gl = pb(g), pbl(np.moveaxis(g, 1, -1))
    np.testing.assert_allclose(np.moveaxis(gl["x"], -1, 1), ga["x"], rtol=1e-12, atol=1e-14)
    for name in ("alpha", "lam"):
        np.testing.assert_allclose(gl[name], ga[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dpp_pool2d(x[0], alpha, lam, **win), y[0], rtol=1e-14)
    x0, g0 = x.copy(), g.copy()
    pb(g)
    np.testing.assert_array_equal(x, x0)  # inputs and the upstream gradient are never written
    np.testing.assert_array_equal(g, g0)
    x16 = x.astype(np.float16)
    y16, pb16 = vjp("dpp_pool2d", x16, np.float32(0.5), lam.astype(np.float32), **win)
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16, dpp_pool2d(x16.astype(np.float32), 0.5, lam, **win).astype(np.float16))
    grads = pb16(np.ones_like(y16))
    assert grads["x"].dtype == np.float16 and grads["lam"].dtype == np.float32
    assert grads["alpha"].shape == () and grads["alpha"].dtype == np.float32
    y, pb = vjp("dpp_pool2d", np.zeros((0, 3, 7, 6)), alpha, 2.0, **win)
    grads = pb(np.zeros(y.shape))
    assert y.shape == (0, 3, 4, 3) and grads["x"].shape == (0, 3, 7, 6)
    assert (grads["alpha"] == 0).all() and grads["alpha"].shape == (3,) and grads["lam"].shape == ()


@pytest.mark.parametrize(
    "kw,error,match",
    [
        (dict(alpha=-0.1), PoolingConfigError, r"alpha must be finite and >= 0, got -0.1"),
        (dict(alpha=np.array([1.0, -1.0, 0.0])), PoolingConfigError, r"alpha must be finite and >= 0"),
        (dict(lam=-1.0), PoolingConfigError, "lam must be finite and >= 0"),
        (dict(lam=np.nan), PoolingConfigError, "lam must be finite"),
        (dict(alpha=np.inf), PoolingConfigError, "alpha must be finite"),
        (dict(alpha=np.ones(4)), PoolingInputError, r"alpha must be a scalar .* or shaped \(C,\) = \(3,\)"),
        (dict(lam=np.ones((1, 3))), PoolingInputError, r"lam must be a scalar .* got shape \(1, 3\)"),
        (dict(lam=np.ones(3, dtype=complex)), PoolingInputError, "lam must be a real-valued array"),
        (dict(eps=0.0), PoolingConfigError, "eps must be > 0"),
        (dict(eps=np.nan), PoolingConfigError, "eps must be a finite number"),
        (dict(asymmetric="yes"), PoolingConfigError, "asymmetric must be True or False"),
    ],
)
def test_bad_settings_are_rejected(kw, error, match):
    args = dict(alpha=1.0, lam=1.0) | kw
    alpha, lam = args.pop("alpha"), args.pop("lam")
    with pytest.raises(error, match=match):
        dpp_pool2d(np.zeros((1, 3, 6, 6)), alpha, lam, 2, **args)


def test_peak_memory_within_three_times_input_plus_output():
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    alpha, lam = np.full(16, 0.5, np.float32), np.float32(2.0)
    g = np.ones_like(x)  # stride 1, padding 1: the output is input-sized
    io = x.nbytes + g.nbytes
    peak, y = traced_peak("dpp_pool2d", x, alpha, lam, kernel_size=3, stride=1, padding=1, grad=g)
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"
