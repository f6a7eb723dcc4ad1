"""lip_pool: the reference formula, reductions, stability, gradients for x and logits, edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingInputError
from poolkit.ops import avg_pool, avg_pool2d, max_pool2d, vjp
from poolkit.ops.lip import lip_pool, lip_pool1d, lip_pool2d

from cases import RESEARCH_CASES, Case
from helpers import check_grads, traced_peak


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


def _reference(x: np.ndarray, logits: np.ndarray, k, s, p, ceil=False, g=None):
    """sebgao/LIP's ``avg_pool(x * exp(l)) / avg_pool(exp(l))`` (zero padding) in torch, with autograd."""
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.tensor(logits, requires_grad=True)
    w = torch.exp(lt)
    y = F.avg_pool2d(xt * w, k, s, p, ceil) / F.avg_pool2d(w, k, s, p, ceil)
    if g is None:
        return y.detach().numpy()
    y.backward(torch.tensor(g, dtype=y.dtype))
    return y.detach().numpy(), xt.grad.numpy(), lt.grad.numpy()


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences(case: Case, layout, rng):
    x = _layout(case.input(rng), layout)
    logits = _layout(rng.standard_normal(case.shape) * 2, layout)
    grads = check_grads("lip_pool", {"x": x, "logits": logits}, rng, data_format=layout, **case.window())
    assert set(grads) == {"x", "logits"}


# --------------------------------------------------------------------------- reference formula


@pytest.mark.parametrize(
    "k,s,p,ceil", [(2, 2, 0, False), (3, 2, 1, False), (3, 1, 1, False), (2, 3, 0, True)]
)
def test_matches_the_reference_formula(k, s, p, ceil, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    logits = rng.standard_normal(x.shape) * 4
    y, pullback = vjp("lip_pool2d", x, logits, kernel_size=k, stride=s, padding=p, ceil_mode=ceil)
    g = rng.standard_normal(y.shape)
    ref, gx, gl = _reference(x, logits, k, s, p, ceil, g)
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-15)
    grads = pullback(g)
    np.testing.assert_allclose(grads["x"], gx, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["logits"], gl, rtol=1e-12, atol=1e-15)


def test_paper_logits_in_float32(rng):
    """The paper's ``12 * sigmoid(.)`` logits, in float32: the reference stays finite there, and we agree."""
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    logits = (12 / (1 + np.exp(-rng.standard_normal(x.shape) * 3))).astype(np.float32)
    np.testing.assert_allclose(
        lip_pool2d(x, logits, 3, 2, 1), _reference(x, logits, 3, 2, 1), rtol=2e-5, atol=2e-6
    )


def test_reference_overflows_where_we_do_not(rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    logits = np.where(rng.random(x.shape) < 0.5, 1e4, -1e4).astype(np.float32)
    assert np.isnan(_reference(x, logits, 2, 2, 0)).any()  # exp(1e4) = inf, inf / inf
    with np.errstate(all="raise"):
        y, pullback = vjp("lip_pool2d", x, logits, kernel_size=2)
        grads = pullback(np.ones_like(y))
    assert np.isfinite(y).all() and all(np.isfinite(v).all() for v in grads.values())
    # Exactly the average over the taps holding the window's largest logit.
    hot = (logits == max_pool2d(logits, 2).repeat(2, -1).repeat(2, -2)).astype(np.float32)
    expect = avg_pool2d(x * hot, 2) / avg_pool2d(hot, 2)
    np.testing.assert_allclose(y, expect, rtol=1e-6)


def test_large_inputs_are_finite(rng):
    x = (rng.standard_normal((1, 2, 6, 6)) * 1e4).astype(np.float32)
    logits = rng.standard_normal(x.shape).astype(np.float32)
    with np.errstate(all="raise"):
        y, pullback = vjp("lip_pool2d", x, logits, kernel_size=3, stride=1, padding=1)
        grads = pullback(np.ones_like(y))
    np.testing.assert_allclose(
        y, lip_pool2d(x.astype(np.float64), logits.astype(np.float64), 3, 1, 1), rtol=1e-5, atol=0.05
    )
    assert all(np.isfinite(v).all() for v in grads.values())


# --------------------------------------------------------------------------- reductions


@pytest.mark.parametrize(
    "kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)]
)
def test_zero_logits_are_avg_pool_without_padding(kw, rng):
    # Integers and power-of-two counts: every sum and quotient is exact.
    xi = rng.integers(-50, 50, (2, 3, 8, 8)).astype(np.float64)
    if kw["kernel_size"] == 2:
        np.testing.assert_array_equal(lip_pool(xi, np.zeros_like(xi), **kw), avg_pool(xi, **kw))
    x = rng.standard_normal((2, 3, 7, 9))
    np.testing.assert_allclose(
        lip_pool(x, np.zeros_like(x), **kw),
        avg_pool(x, count_include_pad=False, **kw),
        rtol=1e-15,
        atol=1e-16,
    )
    # Any logit constant over a window is the same.
    np.testing.assert_allclose(
        lip_pool(x, np.full_like(x, -7e3), **kw),
        avg_pool(x, count_include_pad=False, **kw),
        rtol=1e-15,
        atol=1e-16,
    )


def test_logits_equal_to_x_is_soft_pool(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    y, pullback = vjp("lip_pool2d", x, x, kernel_size=3, stride=2, padding=1)
    ys, pbs = vjp("soft_pool2d", x, kernel_size=3, stride=2, padding=1)
    np.testing.assert_allclose(y, ys, rtol=1e-14)
    g = rng.standard_normal(y.shape)
    grads = pullback(g)
    np.testing.assert_allclose(grads["x"] + grads["logits"], pbs(g)["x"], rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- degenerate inputs


def test_non_finite_logits_and_inputs_follow_the_documented_rule():
    ones = np.ones((2, 2))
    x = np.stack(
        [ones * 2.0] * 5
        + [[[np.nan, 1.0], [2.0, 3.0]], [[np.inf, 1.0], [2.0, 3.0]], [[np.inf, 1.0], [2.0, 3.0]]]
    )
    logits = np.stack(
        [
            [[np.nan, 0.0], [0.0, 0.0]],  # NaN logit: NaN
            [[np.inf, 0.0], [0.0, 0.0]],  # +inf logit: NaN (inf / inf)
            [[-np.inf] * 2] * 2,  # no weight: NaN
            [[-np.inf, 0.0], [0.0, 0.0]],  # -inf: weight 0
            [[1e4, -1e4], [0.0, 0.0]],
            ones * 0,  # NaN input: NaN
            ones * 0,  # +inf input: +inf
            [[-1e4, 0.0], [0.0, 0.0]],  # +inf input with an underflowed weight: 0 * inf = NaN
        ]
    )
    x, logits = x[None], logits[None]
    x = np.concatenate([x, np.tile([[1.0, 2.0], [3.0, 4.0]], (1, 8, 1, 1))], axis=-1)  # ordinary windows
    logits = np.concatenate([logits, np.tile([[0.5, -1.0], [2.0, 0.0]], (1, 8, 1, 1))], axis=-1)
    with np.errstate(all="raise"):
        y, pullback = vjp("lip_pool2d", x, logits, kernel_size=2)
        grads = pullback(np.ones_like(y))
    first = y[0, :, 0, 0]
    assert np.isnan(first[[0, 1, 2, 5, 7]]).all() and first[6] == np.inf
    assert first[3] == 2.0 and first[4] == 2.0
    np.testing.assert_array_equal(y[..., 1], lip_pool2d(x[..., 2:], logits[..., 2:], 2)[..., 0])
    gx, gl = grads["x"], grads["logits"]
    assert np.isfinite(gx).all() and np.isfinite(gl).all()
    for c in (0, 1, 2, 5, 6, 7):  # no gradient from windows with a non-finite output
        assert (gx[0, c, :, :2] == 0).all() and (gl[0, c, :, :2] == 0).all()
    np.testing.assert_allclose(gx[0, 3, :, :2], [[0, 1 / 3], [1 / 3, 1 / 3]], rtol=1e-15)
    np.testing.assert_array_equal(gx[0, 4, :, :2], [[1, 0], [0, 0]])
    ordinary = vjp("lip_pool2d", x[..., 2:], logits[..., 2:], kernel_size=2)[1](np.ones((1, 8, 1, 1)))
    np.testing.assert_array_equal(gx[..., 2:], ordinary["x"])
    np.testing.assert_array_equal(gl[..., 2:], ordinary["logits"])


def test_all_zero_inputs_and_equal_logits(rng):
    with np.errstate(all="raise"):
        y, pullback = vjp(
            "lip_pool2d", np.zeros((1, 2, 4, 4), np.float32), rng.standard_normal((1, 2, 4, 4)), kernel_size=2
        )
        grads = pullback(np.ones_like(y))
    assert (y == 0).all() and y.dtype == np.float32
    assert grads["logits"].dtype == np.float64 and (grads["logits"] == 0).all()  # x - y = 0
    np.testing.assert_allclose(grads["x"].reshape(1, 2, 2, 2, 2, 2).sum(axis=(3, 5)), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------- layouts, dtypes, shapes, errors


def test_channels_last_unbatched_float16_and_empty(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    logits = rng.standard_normal(x.shape)
    y, pb = vjp("lip_pool2d", x, logits, kernel_size=3, stride=2, padding=1)
    to_cl = lambda a: np.moveaxis(a, 1, -1)  # noqa: E731
    yl, pbl = vjp(
        "lip_pool2d", to_cl(x), to_cl(logits), kernel_size=3, stride=2, padding=1, data_format="channels_last"
    )
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=1e-14)
    g = rng.standard_normal(y.shape)
    gc, gcl = pb(g), pbl(to_cl(g))
    for name in ("x", "logits"):
        np.testing.assert_allclose(np.moveaxis(gcl[name], -1, 1), gc[name], rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(lip_pool2d(x[0], logits[0], 3, 2, 1), y[0], rtol=1e-14)
    # 1-D equals 2-D with a (1, k) window
    y1 = lip_pool1d(x[:, :, 0], logits[:, :, 0], 3, 2, 1)
    y2 = lip_pool(x[:, :, :1], logits[:, :, :1], (1, 3), (1, 2), ((0, 0), (1, 1)))
    np.testing.assert_allclose(y1, y2[:, :, 0], rtol=1e-14)
    x16, l16 = x.astype(np.float16), logits.astype(np.float16)
    y16, pb16 = vjp("lip_pool2d", x16, l16, kernel_size=2)
    g16 = pb16(np.ones_like(y16))
    assert y16.dtype == np.float16 and g16["x"].dtype == np.float16 and g16["logits"].dtype == np.float16
    np.testing.assert_array_equal(
        y16, lip_pool2d(x16.astype(np.float32), l16.astype(np.float32), 2).astype(np.float16)
    )
    ye, pbe = vjp("lip_pool2d", np.zeros((0, 3, 6, 6)), np.zeros((0, 3, 6, 6)), kernel_size=2)
    ge = pbe(np.zeros(ye.shape))
    assert ye.shape == (0, 3, 3, 3) and ge["x"].shape == ge["logits"].shape == (0, 3, 6, 6)


def test_inputs_and_gradient_are_not_modified(rng):
    x, logits = rng.standard_normal((2, 2, 3, 6, 6))
    x0, l0 = x.copy(), logits.copy()
    y, pullback = vjp("lip_pool2d", x, logits, kernel_size=3, stride=1, padding=1)
    g = np.ones_like(y)
    pullback(g)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(logits, l0)
    assert (g == 1).all()


def test_errors():
    x = np.ones((1, 3, 4, 4))
    with pytest.raises(
        PoolingInputError,
        match=r"lip_pool2d: logits must have the shape of x \(1, 3, 4, 4\).*got \(1, 3, 4\)",
    ):
        lip_pool2d(x, np.ones((1, 3, 4)), 2)
    with pytest.raises(PoolingInputError, match=r"logits must have the shape of x \(1, 4, 4, 3\)"):
        lip_pool2d(np.ones((1, 4, 4, 3)), x, 2, data_format="channels_last")
    with pytest.raises(PoolingInputError, match="expects a floating-point logits"):
        lip_pool2d(x, np.ones((1, 3, 4, 4), dtype=np.int32), 2)
    with pytest.raises(PoolingInputError, match="grad_output must have shape"):
        vjp("lip_pool2d", x, x, kernel_size=2)[1](np.ones((1, 3, 4, 4)))


# --------------------------------------------------------------------------- memory


def test_peak_memory_within_three_times_inputs_plus_output():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 16, 128, 128), dtype=np.float32)
    logits = rng.standard_normal(x.shape, dtype=np.float32)
    kw = dict(kernel_size=3, stride=1, padding=1)
    y = vjp("lip_pool2d", x, logits, **kw)[0]
    g = np.ones_like(y)
    io = x.nbytes + y.nbytes  # logits are a second input, left out of the budget on purpose
    peak, y = traced_peak("lip_pool2d", x, logits, **kw, grad=g)
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"
