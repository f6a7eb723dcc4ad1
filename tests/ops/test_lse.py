"""lse_pool: timm's LsePlus formula, limits, stability, gradients for x and r, edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import avg_pool, max_pool, max_pool2d, vjp
from poolkit.ops.lse import lse_pool, lse_pool1d, lse_pool2d

from cases import RESEARCH_CASES, Case
from helpers import check_grads, numeric_grad, traced_peak


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


def _r(kind: str, c: int) -> float | np.ndarray:
    return 3.0 if kind == "scalar" else np.linspace(0.5, 8.0, c)


def _torch_windows(x: torch.Tensor, k: int, s: int, pad: int, out: tuple[int, int]) -> torch.Tensor:
    """``(N, C, L, k*k)`` windows of a 2-D input padded with -inf (right side extended for ceil mode)."""
    extra = [max(0, (o - 1) * s + k - (n + 2 * pad)) for o, n in zip(out, x.shape[2:])]
    xp = F.pad(x, (pad, pad + extra[1], pad, pad + extra[0]), value=-np.inf)
    w = xp.unfold(2, k, s).unfold(3, k, s)[:, :, : out[0], : out[1]]
    return w.reshape(*w.shape[:4], k * k)


def _lse_reference(x: np.ndarray, r, k, s, pad, out, g):
    """A slow torch oracle: ``(logsumexp(r x_R) - log n) / r`` over -inf-padded windows, with autograd."""
    xt = torch.tensor(x, requires_grad=True)
    rt = torch.tensor(np.asarray(r, dtype=np.float64), requires_grad=True)
    rr = rt.reshape(1, -1, 1, 1, 1) if rt.ndim else rt
    w = _torch_windows(xt, k, s, pad, out)
    inside = torch.isfinite(w)
    # r * pad would give r a NaN gradient: pad with 0 and add the constant -inf after.
    masked = rr * torch.where(inside, w, 0.0) + torch.where(inside, 0.0, -torch.inf)
    y = (torch.logsumexp(masked, dim=-1) - torch.log(inside.sum(-1).double())) / rr[..., 0]
    y.backward(torch.tensor(g))
    return y.detach().numpy(), xt.grad.numpy(), rt.grad.numpy()


# --------------------------------------------------------------------------- gradients


# x's gradient on every case, with r alternately per channel and shared (r's own gradient: both on every case).
X_CASES = [
    pytest.param(
        *c.values, "scalar" if i % 2 else "per-channel", id=f"{c.id}-{'scalar' if i % 2 else 'per-channel'}"
    )
    for i, c in enumerate(RESEARCH_CASES)
]


@pytest.mark.parametrize("case,layout,kind", X_CASES)
def test_finite_differences_x(case: Case, layout, kind, rng):
    x = _layout(case.input(rng), layout)
    check_grads("lse_pool", {"x": x}, rng, data_format=layout, r=_r(kind, case.shape[1]), **case.window())


@pytest.mark.parametrize("kind", ["scalar", "per-channel"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences_r(case: Case, layout, kind, rng):
    x = _layout(case.input(rng), layout)
    r = np.array(_r(kind, case.shape[1]), dtype=np.float64)
    kw = dict(data_format=layout, **case.window())
    y, pullback = vjp("lse_pool", x, r=r, **kw)
    g = rng.standard_normal(y.shape)
    analytic = pullback(g)["r"]
    numeric = numeric_grad(lambda v: lse_pool(x, r=v, **kw), r, g)
    assert np.shape(analytic) == r.shape
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


def test_parameter_gradient_types(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    y, pullback = vjp("lse_pool2d", x, kernel_size=2)
    gr = pullback(np.ones_like(y))["r"]
    assert isinstance(gr, float)
    y, pullback = vjp("lse_pool2d", x, kernel_size=2, r=np.full(3, 10.0, dtype=np.float32))
    grc = pullback(np.ones_like(y))["r"]
    assert grc.shape == (3,) and grc.dtype == np.float32
    np.testing.assert_allclose(grc.sum(), gr, rtol=1e-6)


# --------------------------------------------------------------------------- reference formulas


@pytest.mark.parametrize("kind", ["scalar", "per-channel"])
def test_global_matches_timm_lse_plus(kind, rng):
    """timm's ``x_max + log(mean(exp(r (x - x_max)))) / r`` over the whole map, in float64 torch."""
    x = rng.standard_normal((2, 3, 5, 6)) * 3
    r = _r(kind, 3)
    y, pullback = vjp("lse_pool2d", x, kernel_size=(5, 6), r=r)
    xt = torch.tensor(x, requires_grad=True)
    rt = torch.tensor(np.asarray(r, dtype=np.float64), requires_grad=True)
    rr = rt.reshape(1, -1, 1, 1) if rt.ndim else rt
    x_max = F.adaptive_max_pool2d(xt, 1)
    ref = x_max + torch.log(F.adaptive_avg_pool2d(torch.exp(rr * (xt - x_max)), 1)) / rr
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-13)
    g = rng.standard_normal(y.shape)
    ref.backward(torch.tensor(g))
    grads = pullback(g)
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["r"], rt.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "k,s,pad,ceil", [(2, 2, 0, False), (3, 2, 1, False), (3, 1, 1, False), (2, 3, 0, True)]
)
def test_windows_match_a_slow_logsumexp_oracle(k, s, pad, ceil, rng):
    x = rng.standard_normal((2, 3, 7, 8)) * 2
    r = np.array([0.5, 4.0, 30.0])
    y, pullback = vjp("lse_pool2d", x, kernel_size=k, stride=s, padding=pad, ceil_mode=ceil, r=r)
    g = rng.standard_normal(y.shape)
    ref, gx, gr = _lse_reference(x, r, k, s, pad, y.shape[2:], g)
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-14)
    grads = pullback(g)
    np.testing.assert_allclose(grads["x"], gx, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["r"], gr, rtol=1e-11)


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("r", [1e2, 1e3, 1e5])
def test_large_r_approaches_max_pool(r, rng):
    x = rng.standard_normal((2, 3, 7, 7))
    kw = dict(kernel_size=3, stride=2, padding=1)
    m = max_pool(x, **kw)
    n = 9 * np.ones_like(m)
    n[..., 0, :] = 6
    n[..., :, 0] = 6
    n[..., 0, 0] = 4
    y = lse_pool(x, r=r, **kw)
    assert (y <= m).all()
    assert (y >= m - np.log(n) / r - 1e-15).all()  # within log(n) / r of the maximum


def test_small_r_approaches_the_mean(rng):
    x = rng.standard_normal((2, 3, 7, 7))
    kw = dict(kernel_size=3, stride=2, padding=1)
    mean = avg_pool(x, count_include_pad=False, **kw)
    for r in (1e-3, 1e-5):
        # LSE = mean + (r/2) var + O(r^2)
        np.testing.assert_allclose(lse_pool(x, r=r, **kw), mean, atol=5 * r)


def test_large_r_and_large_x_in_float32(rng):
    x = (rng.standard_normal((1, 2, 6, 6)) * 1e4).astype(np.float32)
    with np.errstate(all="raise"):
        y, pullback = vjp("lse_pool2d", x, kernel_size=2, r=1e3)
        grads = pullback(np.ones_like(y))
    m = max_pool2d(x, 2)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert (y <= m).all() and (y >= m - np.log(4) / 1e3 - 2e-3).all()  # one float32 ulp at 1e4 is 1e-3
    np.testing.assert_allclose(y, lse_pool2d(x.astype(np.float64), 2, r=1e3), rtol=1e-7)
    assert np.isfinite(grads["x"]).all() and np.isfinite(grads["r"])
    # At this scale the softmax is one-hot: the gradient is max pooling's.
    np.testing.assert_array_equal(grads["x"], vjp("max_pool2d", x, kernel_size=2)[1](np.ones_like(y))["x"])


def test_reference_overflows_where_we_do_not():
    x = np.full((1, 1, 2, 2), 100.0, dtype=np.float32)
    xt = torch.tensor(x)
    naive = (torch.log(F.avg_pool2d(torch.exp(10.0 * xt), 2)) / 10.0).numpy()  # no max subtraction
    assert np.isinf(naive).all()
    np.testing.assert_array_equal(lse_pool2d(x, 2), [[[[100.0]]]])


# --------------------------------------------------------------------------- degenerate inputs


def test_constant_and_zero_windows_are_exact():
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(
            lse_pool2d(np.full((1, 1, 4, 4), -3.5), 2, r=7.0), np.full((1, 1, 2, 2), -3.5)
        )
        y, pullback = vjp(
            "lse_pool2d", np.zeros((1, 2, 4, 4), np.float32), kernel_size=2, r=np.array([1.0, 50.0])
        )
        grads = pullback(np.ones_like(y))
    assert (y == 0).all()
    np.testing.assert_array_equal(grads["x"], np.full((1, 2, 4, 4), 0.25, np.float32))  # equal weights
    np.testing.assert_array_equal(grads["r"], [0.0, 0.0])  # y = max whatever r


def test_non_finite_inputs_follow_the_documented_rule():
    x = np.array(
        [
            [
                [[np.nan, 1.0], [2.0, 3.0]],
                [[np.inf, 1.0], [2.0, 3.0]],
                [[-np.inf] * 2] * 2,
                [[-np.inf, 1.0], [2.0, 3.0]],
            ]
        ]
    )
    x = np.concatenate([x, np.tile([[1.0, 2.0], [3.0, 4.0]], (1, 4, 1, 1))], axis=-1)  # ordinary windows
    with np.errstate(all="raise"):
        y, pullback = vjp("lse_pool2d", x, kernel_size=2, r=np.array([1.0, 2.0, 3.0, 4.0]))
        grads = pullback(np.ones_like(y))
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 1, 0, 0] == np.inf and y[0, 2, 0, 0] == -np.inf
    # -inf beside finite values: weight 0, still one of the n = 4 taps.
    expected = 3.0 + np.log((np.exp(-8.0) + np.exp(-4.0) + 1.0) / 4) / 4.0
    np.testing.assert_allclose(y[0, 3, 0, 0], expected, rtol=1e-14)
    ordinary = lse_pool2d(x[..., 2:], 2, r=np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(y[..., 1:], ordinary)
    gx, gr = grads["x"], grads["r"]
    assert np.isfinite(gx).all() and np.isfinite(gr).all()
    assert (gx[0, :3, :, :2] == 0).all()  # NaN, +inf and all--inf windows pass no gradient
    assert gx[0, 3, 0, 0] == 0 and (gx[0, 3, :, :2].ravel()[1:] > 0).all()
    ref = vjp("lse_pool2d", x[..., 2:], kernel_size=2, r=np.array([1.0, 2.0, 3.0, 4.0]))[1](
        np.ones((1, 4, 1, 1))
    )
    np.testing.assert_allclose(gr[:3], ref["r"][:3], rtol=1e-14)  # degenerate windows add nothing to r


# --------------------------------------------------------------------------- layouts, dtypes, shapes


def test_channels_last_unbatched_float16_and_empty(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    r = np.array([1.0, 5.0, 20.0])
    y, pb = vjp("lse_pool2d", x, kernel_size=3, stride=2, padding=1, r=r)
    yl, pbl = vjp(
        "lse_pool2d",
        np.moveaxis(x, 1, -1),
        kernel_size=3,
        stride=2,
        padding=1,
        r=r,
        data_format="channels_last",
    )
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=1e-14)
    g = rng.standard_normal(y.shape)
    gc, gl = pb(g), pbl(np.moveaxis(g, 1, -1))
    np.testing.assert_allclose(np.moveaxis(gl["x"], -1, 1), gc["x"], rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(gl["r"], gc["r"], rtol=1e-12)
    np.testing.assert_allclose(lse_pool2d(x[0], 3, 2, 1, r=r), y[0], rtol=1e-14)
    # 1-D equals 2-D with a (1, k) window
    y1 = lse_pool1d(x[:, :, 0], 3, 2, 1, r=r)
    y2 = lse_pool(x[:, :, :1], (1, 3), (1, 2), ((0, 0), (1, 1)), r=r)
    np.testing.assert_allclose(y1, y2[:, :, 0], rtol=1e-14)
    x16 = x.astype(np.float16)
    y16, pb16 = vjp("lse_pool2d", x16, kernel_size=2, r=r)
    assert y16.dtype == np.float16 and pb16(np.ones_like(y16))["x"].dtype == np.float16
    np.testing.assert_array_equal(y16, lse_pool2d(x16.astype(np.float32), 2, r=r).astype(np.float16))
    ye, pbe = vjp("lse_pool2d", np.zeros((0, 3, 6, 6)), kernel_size=2, r=r)
    ge = pbe(np.zeros(ye.shape))
    assert ye.shape == (0, 3, 3, 3) and ge["x"].shape == (0, 3, 6, 6) and (ge["r"] == 0).all()


def test_input_and_gradient_are_not_modified(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    x0 = x.copy()
    y, pullback = vjp("lse_pool2d", x, kernel_size=3, stride=1, padding=1)
    g = np.ones_like(y)
    pullback(g)
    np.testing.assert_array_equal(x, x0)
    assert (g == 1).all()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "r,err,match",
    [
        (0.0, PoolingConfigError, r"lse_pool2d: r must be > 0 and finite, got 0\.0"),
        (-2, PoolingConfigError, r"r must be > 0 and finite, got -2\.0"),
        (np.inf, PoolingConfigError, r"r must be > 0 and finite, got inf"),
        (np.array([1.0, np.nan, 3.0]), PoolingConfigError, r"r must be > 0 and finite, got nan"),
        (None, PoolingConfigError, r"r must be a positive real number or an array of 3"),
        (np.ones(4), PoolingInputError, r"r must be a scalar or have shape \(3,\).*got shape \(4,\)"),
    ],
)
def test_bad_r(r, err, match):
    with pytest.raises(err, match=match):
        lse_pool2d(np.ones((1, 3, 4, 4)), 2, r=r)


def test_bad_gradient_shape():
    with pytest.raises(PoolingInputError, match="grad_output must have shape"):
        vjp("lse_pool2d", np.ones((1, 3, 4, 4)), kernel_size=2)[1](np.ones((1, 3, 4, 4)))


# --------------------------------------------------------------------------- memory


def test_peak_memory_within_three_times_input_plus_output():
    r = np.full(16, 10.0)  # the per-channel path: also slices r's broadcast view per block
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    kw = dict(kernel_size=3, stride=1, padding=1, r=r)
    y = vjp("lse_pool2d", x, **kw)[0]
    g = np.ones_like(y)
    io = x.nbytes + y.nbytes
    peak, y = traced_peak("lse_pool2d", x, **kw, grad=g)
    assert peak <= 3 * io, f"peak {peak / io:.2f} x (input + output)"
