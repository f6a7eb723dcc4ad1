"""gated_pool: a slow loop reference, saturation limits, padding rules, gradients, edges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.geometry import window_spec
from poolkit.ops import avg_pool, max_pool, vjp
from poolkit.ops.gated import gated_pool, gated_pool1d, gated_pool2d

from cases import RESEARCH_CASES, Case
from helpers import check_grads, distinct, traced_peak


def _windows(spatial, window):
    """Each output index with its taps: (kernel offset, input coordinate or None, inside input+padding)."""
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
            padded = all(-ax.pad_lo <= ci < ax.size + ax.pad_hi for ci, ax in zip(coord, spec.axes))
            taps.append((k, coord if inside else None, padded))
        yield o, taps


def _slow_gated(x, w, window):
    """The paper's formula window by window: gate over the taps inside the input (padding = 0),
    max over the taps inside, average over input + explicit padding (PyTorch's divisor)."""
    nd = x.ndim - 2
    wins = list(_windows(x.shape[2:], window))
    out = tuple(np.max([o for o, _ in wins], axis=0) + 1)
    y = np.zeros((*x.shape[:2], *out))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            wc = w if w.ndim == nd else w[c]
            for o, taps in wins:
                vals = [x[(n, c, *q)] for _, q, _ in taps if q is not None]
                z = sum(wc[k] * x[(n, c, *q)] for k, q, _ in taps if q is not None)
                s = 1.0 / (1.0 + math.exp(-z))
                avg = sum(vals) / sum(p for _, _, p in taps)
                y[(n, c, *o)] = s * max(vals) + (1 - s) * avg
    return y


def _kernel(case: Case) -> tuple[int, ...]:
    k = case.kernel_size
    return tuple(k) if isinstance(k, tuple) else (k,) * case.nd


def _layout(x, layout):
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-layer", "per-channel"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_matches_slow_reference(case: Case, layout, per_channel, rng):
    x = case.input(rng)
    w = rng.standard_normal(((x.shape[1],) if per_channel else ()) + _kernel(case))
    y = gated_pool(_layout(x, layout), w, data_format=layout, **case.window())
    if layout == "channels_last":
        y = np.moveaxis(y, -1, 1)
    np.testing.assert_allclose(y, _slow_gated(x, w, case.window()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences(case: Case, layout, rng):
    x = _layout(distinct(case.shape, rng, scale=10.0), layout)  # tie-free: the max is differentiable
    w = rng.standard_normal((case.shape[1], *_kernel(case)))
    check_grads("gated_pool", {"x": x, "weight": w}, rng, data_format=layout, **case.window())


def test_finite_differences_per_layer_weight(rng):
    x = distinct((1, 2, 5, 6), rng, scale=10.0)
    w = rng.standard_normal((3, 3))
    grads = check_grads("gated_pool2d", {"x": x, "weight": w}, rng, kernel_size=3, stride=2, padding=1)
    assert grads["weight"].shape == (3, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "win", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)]
)
def test_saturated_gate_gives_exactly_max_or_average(dtype, win, rng):
    x = (rng.uniform(1.0, 2.0, (2, 3, 7, 6))).astype(dtype)  # positive: the sign of w decides the gate
    k = win["kernel_size"]
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(gated_pool(x, np.full((k, k), 1e4), **win), max_pool(x, **win))
        np.testing.assert_array_equal(gated_pool(x, np.full((k, k), -1e4), **win), avg_pool(x, **win))
        # Saturated gates pass no gradient to the weight and all of it to the chosen branch.
        y, pullback = vjp("gated_pool2d", x, np.full((k, k), 1e4), **win)
        g = rng.standard_normal(y.shape).astype(dtype)
        grads = pullback(g)
    np.testing.assert_array_equal(grads["weight"], 0)
    np.testing.assert_allclose(grads["x"], vjp("max_pool2d", x, **win)[1](g)["x"], rtol=1e-6)


def test_gate_derivative_stays_accurate_when_nearly_saturated():
    # z = 40: s = 1 - 4e-18 rounds to 1, but s (1 - s) = e^-40 / (1 + e^-40)^2 is computed directly.
    x = np.array([[[1.0, 2.0]]])
    for z in (40.0, -40.0):
        y, pullback = vjp("gated_pool1d", x, np.array([z, 0.0]), kernel_size=2)
        e = math.exp(-abs(z))
        ds = e / (1 + e) ** 2
        np.testing.assert_allclose(
            pullback(np.ones_like(y))["weight"], [ds * 0.5 * 1.0, ds * 0.5 * 2.0], rtol=1e-12
        )


def test_zero_weight_is_the_mean_of_max_and_average(rng):
    x = rng.standard_normal((2, 3, 7, 7))
    win = dict(kernel_size=3, stride=2, padding=1)
    expect = 0.5 * (max_pool(x, **win) + avg_pool(x, **win))
    np.testing.assert_allclose(gated_pool(x, np.zeros((3, 3)), **win), expect, rtol=1e-14)


def test_padding_is_minus_inf_for_the_max_and_zero_for_the_gate_and_average():
    x = np.array([[[-4.0, -1.0, -6.0]]])
    # Window 0 is [pad, -4, -1]: max -1 (not 0), avg -5/3 (the pad counts), gate 5 * 0 - 4 - 1.
    w = np.array([5.0, 1.0, 1.0])
    s = 1 / (1 + np.exp(5.0))
    y = gated_pool1d(x, w, 3, 2, 1)[0, 0, 0]
    np.testing.assert_allclose(y, s * -1.0 + (1 - s) * -5.0 / 3.0, rtol=1e-14)
    w = np.array([1.0, 0.0, 0.0])  # only the padded tap: z = 0, s = 1/2
    np.testing.assert_allclose(
        gated_pool1d(x, w, 3, 2, 1)[0, 0, 0], 0.5 * -1.0 + 0.5 * -5.0 / 3.0, rtol=1e-14
    )
    # Windows [pad, -3, -6] and [-3, -6, pad]: the average divides by 3 (not by the 2 valid taps).
    y = gated_pool1d(np.array([[[-3.0, -6.0]]]), np.zeros(3), 3, 1, 1)
    np.testing.assert_allclose(y, [[[-3.0, -3.0]]], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_and_degenerate_inputs_stay_finite_without_warnings(dtype, rng):
    w = rng.standard_normal((3, 3, 3)).astype(dtype)
    win = dict(kernel_size=3, stride=2, padding=1)
    with np.errstate(all="raise"):
        big = (np.sign(rng.standard_normal((2, 3, 7, 7))) * 1e4).astype(dtype)
        y, pullback = vjp("gated_pool2d", big, w * 100, **win)
        grads = pullback(np.ones_like(y))
        assert np.isfinite(y).all() and all(np.isfinite(v).all() for v in grads.values())
        assert (np.abs(y) <= 1e4).all()
        same = np.full((1, 3, 6, 6), 2.5, dtype)  # all-equal windows: max = avg = the value
        np.testing.assert_array_equal(gated_pool2d(same, w, 3), np.full((1, 3, 2, 2), 2.5, dtype))
        zero = np.zeros((1, 3, 6, 6), dtype)
        y, pullback = vjp("gated_pool2d", zero, w, kernel_size=3)
        assert (y == 0).all()
        grads = pullback(np.ones_like(y))
        assert np.isfinite(grads["x"]).all() and (grads["weight"] == 0).all()


def test_non_finite_windows_give_nan_and_leave_the_others_alone():
    x = np.zeros((1, 4, 2, 4))
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 1, 1] = np.inf
    x[0, 2, 0, 1] = -np.inf
    x[0, 3, 0, 0], x[0, 3, 0, 1] = np.inf, -np.inf
    for w in (np.zeros((2, 2)), np.full((2, 2), 1e4), np.full((2, 2), -1e4)):
        with np.errstate(all="raise"):
            y, pullback = vjp("gated_pool2d", x, w, kernel_size=2)
            grads = pullback(np.ones_like(y))
        assert np.isnan(y[0, :, 0, 0]).all()
        assert (y[0, :, 0, 1] == 0).all()
        assert np.isnan(grads["weight"]).all()  # the NaN windows' gradients reach the shared weight


def test_channels_last_and_unbatched_equal_channels_first(rng):
    x = distinct((2, 3, 7, 6), rng, scale=10.0)
    w = rng.standard_normal((3, 3, 3))
    win = dict(kernel_size=3, stride=2, padding=1)
    y, pb = vjp("gated_pool2d", x, w, **win)
    yl, pbl = vjp("gated_pool2d", np.moveaxis(x, 1, -1), w, data_format="channels_last", **win)
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=1e-13)
    g = rng.standard_normal(y.shape)
    ga, gl = pb(g), pbl(np.moveaxis(g, 1, -1))
    np.testing.assert_allclose(np.moveaxis(gl["x"], -1, 1), ga["x"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gl["weight"], ga["weight"], rtol=1e-12)
    np.testing.assert_allclose(gated_pool2d(x[1], w, **win), y[1], rtol=1e-14)


def test_float16_empty_batch_and_inputs_untouched(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((2, 2)).astype(np.float32)
    x16 = x.astype(np.float16)
    y16, pb = vjp("gated_pool2d", x16, w, kernel_size=2)
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16, gated_pool2d(x16.astype(np.float32), w, 2).astype(np.float16))
    grads = pb(np.ones_like(y16))
    assert grads["x"].dtype == np.float16 and grads["weight"].dtype == np.float32
    x0, w0 = x.copy(), w.copy()
    y, pb = vjp("gated_pool2d", x, w, kernel_size=2)
    g = np.ones_like(y)
    pb(g)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(g, 1)
    y, pb = vjp("gated_pool2d", np.zeros((0, 3, 6, 6)), w, kernel_size=2)
    grads = pb(np.zeros(y.shape))
    assert y.shape == (0, 3, 3, 3) and grads["x"].shape == (0, 3, 6, 6)
    np.testing.assert_array_equal(grads["weight"], np.zeros((2, 2)))


@pytest.mark.parametrize(
    "weight,error,match",
    [
        (np.zeros((3, 3)), PoolingInputError, r"weight must have shape \(2, 2\) .* or \(4, 2, 2\)"),
        (np.zeros((3, 2, 2)), PoolingInputError, r"C=4, got shape \(3, 2, 2\)"),
        (np.zeros((1, 4, 2, 2)), PoolingInputError, "weight must have shape"),
        (np.zeros((2, 2), dtype=complex), PoolingInputError, "weight must be a real-valued array"),
        (np.zeros((2, 2), dtype=bool), PoolingInputError, "real-valued"),
    ],
)
def test_bad_weights_are_rejected(weight, error, match):
    with pytest.raises(error, match=match):
        gated_pool2d(np.zeros((1, 4, 6, 6)), weight, 2)


def test_bad_settings_are_rejected():
    with pytest.raises(PoolingConfigError, match="kernel_size must be >= 1"):
        gated_pool2d(np.zeros((1, 1, 4, 4)), np.zeros((2, 2)), 0)
    with pytest.raises(PoolingConfigError, match="padding=2 .* more than half"):
        gated_pool2d(np.zeros((1, 1, 4, 4)), np.zeros((2, 2)), 2, padding=2)
    with pytest.raises(PoolingInputError, match="expects a 4-D array"):
        gated_pool2d(np.zeros((4, 4)), np.zeros((2, 2)), 2)


@pytest.mark.parametrize(
    "kw",
    [dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, padding=1)],
    ids=["s1", "s2"],
)
def test_peak_memory_within_three_times_input_plus_output(kw):
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    w = np.full((16, 3, 3), 0.1, np.float32)
    out = window_spec(x.shape[2:], **kw).output_size
    g = np.ones((16, 16, *out), np.float32)  # the upstream gradient is the caller's memory
    io = x.nbytes + g.nbytes
    peak, y = traced_peak("gated_pool2d", x, w, **kw, grad=g)
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"
