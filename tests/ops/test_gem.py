"""gem_pool and global_gem_pool: reference formulas, limits, gradients for x and p, edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import avg_pool, max_pool, vjp
from poolkit.ops.gem import gem_pool, gem_pool1d, gem_pool2d, global_gem_pool

from cases import RESEARCH_CASES, Case
from helpers import check_grads, numeric_grad, traced_peak

EPS = 1e-6


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(x, 1, -1).copy() if layout == "channels_last" else x


def _p(kind: str, c: int) -> float | np.ndarray:
    return 2.5 if kind == "scalar" else np.linspace(1.5, 4.0, c)


def _cirtorch(x: np.ndarray, p, *pool_args, eps: float = EPS, g: np.ndarray | None = None):
    """cirtorch's ``avg_pool2d(x.clamp(min=eps).pow(p), window).pow(1/p)`` in float64 torch (+ grads)."""
    xt = torch.tensor(x, requires_grad=True)
    pt = torch.tensor(np.asarray(p, dtype=np.float64), requires_grad=True)
    pp = pt.reshape(1, -1, 1, 1) if pt.ndim else pt
    pool_args = pool_args or (tuple(x.shape[2:]),)
    y = F.avg_pool2d(xt.clamp(min=eps).pow(pp), *pool_args, count_include_pad=False).pow(1.0 / pp)
    if g is None:
        return y.detach().numpy()
    y.backward(torch.tensor(g))
    return y.detach().numpy(), xt.grad.numpy(), pt.grad.numpy()


# --------------------------------------------------------------------------- gradients


# x's gradient on every case, with p alternately per channel and shared (p's own gradient: both on every case).
X_CASES = [
    pytest.param(
        *c.values, "scalar" if i % 2 else "per-channel", id=f"{c.id}-{'scalar' if i % 2 else 'per-channel'}"
    )
    for i, c in enumerate(RESEARCH_CASES)
]


@pytest.mark.parametrize("case,layout,kind", X_CASES)
def test_finite_differences_x(case: Case, layout, kind, rng):
    x = _layout(case.input(rng), layout)  # about half the inputs below eps: the clamp's zero gradient
    check_grads("gem_pool", {"x": x}, rng, data_format=layout, p=_p(kind, case.shape[1]), **case.window())


@pytest.mark.parametrize("kind", ["scalar", "per-channel"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences_p(case: Case, layout, kind, rng):
    x = _layout(np.abs(case.input(rng)) + 0.1, layout)
    p = np.array(_p(kind, case.shape[1]), dtype=np.float64)
    kw = dict(data_format=layout, **case.window())
    y, pullback = vjp("gem_pool", x, p=p, **kw)
    g = rng.standard_normal(y.shape)
    analytic = pullback(g)["p"]
    numeric = numeric_grad(lambda v: gem_pool(x, p=v, **kw), p, g)
    assert np.shape(analytic) == p.shape
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["scalar", "per-channel"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (2, 3, 7), (1, 2, 3, 4, 3)], ids=["2d", "1d", "3d"])
def test_finite_differences_global(shape, kind, rng):
    x = rng.standard_normal(shape) + 0.3
    p = np.array(_p(kind, shape[1]), dtype=np.float64)
    check_grads("global_gem_pool", {"x": x}, rng, p=p)
    y, pullback = vjp("global_gem_pool", x, p=p)
    g = rng.standard_normal(y.shape)
    numeric = numeric_grad(lambda v: global_gem_pool(x, p=v), p, g)
    np.testing.assert_allclose(pullback(g)["p"], numeric, rtol=1e-6, atol=1e-7)


def test_parameter_gradient_types():
    x = np.abs(np.random.default_rng(0).standard_normal((2, 3, 4, 4))) + 0.1
    y, pullback = vjp("gem_pool2d", x, kernel_size=2, p=3.0)
    gp = pullback(np.ones_like(y))["p"]
    assert isinstance(gp, float)
    y, pullback = vjp("gem_pool2d", x, kernel_size=2, p=np.array(3.0, dtype=np.float32))
    gp0 = pullback(np.ones_like(y))["p"]
    assert gp0.shape == () and gp0.dtype == np.float32
    np.testing.assert_allclose(gp0, gp, rtol=1e-6)
    y, pullback = vjp("gem_pool2d", x, kernel_size=2, p=np.full(3, 3.0))
    gpc = pullback(np.ones_like(y))["p"]
    assert gpc.shape == (3,) and gpc.dtype == np.float64
    np.testing.assert_allclose(gpc.sum(), gp, rtol=1e-12)  # a shared p collects every channel


# --------------------------------------------------------------------------- reference formulas


@pytest.mark.parametrize("kind", ["scalar", "per-channel"])
def test_global_matches_cirtorch_forward_and_backward(kind, rng):
    x = rng.standard_normal((2, 3, 5, 6))
    p = _p(kind, 3)
    y, pullback = vjp("global_gem_pool", x, p=p, keepdims=True)
    g = rng.standard_normal(y.shape)
    ref, gx, gp = _cirtorch(x, np.atleast_1d(p) if kind == "per-channel" else p, g=g)
    np.testing.assert_allclose(y, ref, rtol=1e-13)
    grads = pullback(g)
    np.testing.assert_allclose(grads["x"], gx, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["p"], gp, rtol=1e-12)


@pytest.mark.parametrize(
    "k,s,pad,ceil", [(2, 2, 0, False), (3, 2, 1, False), (3, 1, 1, False), (2, 3, 0, True)]
)
def test_windowed_matches_cirtorch_analogue(k, s, pad, ceil, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    p = np.array([1.5, 3.0, 6.0])
    y, pullback = vjp("gem_pool2d", x, kernel_size=k, stride=s, padding=pad, ceil_mode=ceil, p=p)
    g = rng.standard_normal(y.shape)
    ref, gx, gp = _cirtorch(x, p, k, s, pad, ceil, g=g)
    np.testing.assert_allclose(y, ref, rtol=1e-13)
    grads = pullback(g)
    np.testing.assert_allclose(grads["x"], gx, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["p"], gp, rtol=1e-12)


# --------------------------------------------------------------------------- reductions


@pytest.mark.parametrize(
    "kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)]
)
def test_p1_is_avg_pool_without_padding(kw, rng):
    x = np.abs(rng.standard_normal((2, 3, 7, 9))) + 0.01  # above eps: the clamp does nothing
    np.testing.assert_array_equal(gem_pool(x, p=1.0, **kw), avg_pool(x, count_include_pad=False, **kw))
    x1 = x[:, :, 0]
    np.testing.assert_array_equal(
        gem_pool1d(x1, 3, 2, 1, p=1.0), avg_pool(x1, 3, 2, 1, count_include_pad=False)
    )


def test_padding_is_not_part_of_the_mean():
    x = np.full((1, 1, 4, 4), 2.0)
    np.testing.assert_allclose(gem_pool2d(x, 3, 2, 1), np.full((1, 1, 2, 2), 2.0), rtol=1e-14)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 3, 6), (1, 2, 3, 4, 5)], ids=["2d", "1d", "3d"])
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_global_equals_whole_plane_window(shape, layout, rng):
    x = _layout(rng.standard_normal(shape), layout)
    p = np.linspace(1.0, 5.0, shape[1])
    yg, pbg = vjp("global_gem_pool", x, p=p, keepdims=True, data_format=layout)
    yw, pbw = vjp("gem_pool", x, kernel_size=shape[2:], p=p, data_format=layout)
    np.testing.assert_allclose(yg, yw, rtol=1e-14)
    g = rng.standard_normal(yg.shape)
    gg, gw = pbg(g), pbw(g)
    np.testing.assert_allclose(gg["x"], gw["x"], rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(gg["p"], gw["p"], rtol=1e-12)
    assert global_gem_pool(x, p=p, data_format=layout).shape == (shape[0], shape[1])


def test_large_p_approaches_max(rng):
    x = rng.uniform(0.5, 2.0, (2, 3, 6, 6))
    m = max_pool(x, 3, 1, 1)
    n = 9 * np.ones_like(m)
    n[..., 0, :] = n[..., -1, :] = 6
    n[..., 0, 0] = n[..., 0, -1] = n[..., -1, 0] = n[..., -1, -1] = 4
    for p in (50.0, 200.0):
        y = gem_pool2d(x, 3, 1, 1, p=p)
        assert (y <= m * (1 + 1e-12)).all()
        assert (y >= m * n ** (-1.0 / p) * (1 - 1e-12)).all()  # at least max / n^(1/p)
    assert np.abs(gem_pool2d(x, 3, 1, 1, p=200.0) / m - 1).max() < 0.011


# --------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_values_and_constant_windows(dtype, rng):
    x = (rng.standard_normal((1, 2, 6, 6)) * 1e4).astype(dtype)
    with np.errstate(all="raise"):
        y, pullback = vjp("gem_pool2d", x, kernel_size=2, p=np.array([3.0, 1.5]))
        grads = pullback(np.ones_like(y))
    assert y.dtype == dtype and np.isfinite(y).all()
    np.testing.assert_allclose(y, gem_pool2d(x.astype(np.float64), 2, p=np.array([3.0, 1.5])), rtol=2e-6)
    assert np.isfinite(grads["x"]).all() and np.isfinite(grads["p"]).all()
    with np.errstate(all="raise"):
        const = gem_pool2d(np.full((1, 1, 4, 4), 7.0, dtype), 2, p=5.0)
        zeros, pullback = vjp("gem_pool2d", np.zeros((1, 1, 4, 4), dtype), kernel_size=2)
        gz = pullback(np.ones_like(zeros))
    np.testing.assert_allclose(const, 7.0, rtol=1e-6)
    np.testing.assert_allclose(zeros, EPS, rtol=1e-6)  # all-zero windows: max(0, eps) = eps
    assert (gz["x"] == 0).all() and gz["p"] == 0.0  # constant window: y does not depend on p


def test_non_finite_inputs_follow_the_documented_rule():
    x = np.array([[[[np.nan, 1.0], [2.0, 3.0]], [[np.inf, 1.0], [2.0, 3.0]], [[-np.inf, 1.0], [2.0, 3.0]]]])
    x = np.concatenate([x, np.full_like(x, 2.0)], axis=-1)  # a second, ordinary window per channel
    with np.errstate(all="raise"):
        y, pullback = vjp("gem_pool2d", x, kernel_size=2, p=np.array([2.0, 3.0, 4.0]))
        grads = pullback(np.ones_like(y))
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 1, 0, 0] == np.inf
    np.testing.assert_allclose(y[0, 2, 0, 0], ((EPS**4 + 1 + 16 + 81) / 4) ** 0.25, rtol=1e-14)
    np.testing.assert_allclose(y[0, :, 0, 1], 2.0, rtol=1e-14)
    gx = grads["x"]
    assert np.isfinite(gx).all() and np.isfinite(grads["p"]).all()
    assert (gx[0, :2, :, :2] == 0).all()  # NaN and +inf windows pass no gradient
    assert gx[0, 2, 0, 0] == 0 and (gx[0, 2, :, :2].ravel()[1:] > 0).all()  # -inf is clamped
    assert (gx[0, :, :, 2:] > 0).all()
    # The p gradient of the NaN and inf windows is 0: it equals the ordinary windows' alone.
    ref = vjp("gem_pool2d", x[..., 2:], kernel_size=2, p=np.array([2.0, 3.0, 4.0]))[1](np.ones((1, 3, 1, 1)))
    np.testing.assert_allclose(grads["p"][:2], ref["p"][:2], rtol=1e-14)


def test_overflow_and_underflow_in_float32():
    big = np.full((1, 1, 2, 2), 1e13, dtype=np.float32)  # (1e13)^3 > float32 max
    tiny = np.full((1, 1, 2, 2), -1.0, dtype=np.float32)  # eps^10 = 1e-60 underflows float32
    with np.errstate(all="raise"):
        yb, pbb = vjp("gem_pool2d", big, kernel_size=2, p=3.0)
        gb = pbb(np.ones_like(yb))
        yt, pbt = vjp("gem_pool2d", tiny, kernel_size=2, p=10.0)
        gt = pbt(np.ones_like(yt))
    assert yb[0, 0, 0, 0] == np.inf and (gb["x"] == 0).all() and gb["p"] == 0.0
    assert yt[0, 0, 0, 0] == 0 and (gt["x"] == 0).all() and gt["p"] == 0.0
    np.testing.assert_allclose(gem_pool2d(tiny.astype(np.float64), 2, p=10.0), EPS, rtol=1e-12)


# --------------------------------------------------------------------------- layouts, dtypes, shapes


def test_channels_last_unbatched_float16_and_empty(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    p = np.array([2.0, 3.0, 4.0])
    y, pb = vjp("gem_pool2d", x, kernel_size=3, stride=2, padding=1, p=p)
    yl, pbl = vjp(
        "gem_pool2d",
        np.moveaxis(x, 1, -1),
        kernel_size=3,
        stride=2,
        padding=1,
        p=p,
        data_format="channels_last",
    )
    np.testing.assert_allclose(np.moveaxis(yl, -1, 1), y, rtol=1e-14)
    g = rng.standard_normal(y.shape)
    gc, gl = pb(g), pbl(np.moveaxis(g, 1, -1))
    np.testing.assert_allclose(np.moveaxis(gl["x"], -1, 1), gc["x"], rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(gl["p"], gc["p"], rtol=1e-12)
    np.testing.assert_allclose(gem_pool2d(x[0], 3, 2, 1, p=p), y[0], rtol=1e-14)
    x16 = x.astype(np.float16)
    y16, pb16 = vjp("gem_pool2d", x16, kernel_size=2, p=p)
    assert y16.dtype == np.float16 and pb16(np.ones_like(y16))["x"].dtype == np.float16
    np.testing.assert_array_equal(y16, gem_pool2d(x16.astype(np.float32), 2, p=p).astype(np.float16))
    ye, pbe = vjp("gem_pool2d", np.zeros((0, 3, 6, 6)), kernel_size=2, p=p)
    ge = pbe(np.zeros(ye.shape))
    assert ye.shape == (0, 3, 3, 3) and ge["x"].shape == (0, 3, 6, 6) and (ge["p"] == 0).all()
    yge, pbge = vjp("global_gem_pool", np.zeros((0, 3, 6, 6)), p=p)
    assert yge.shape == (0, 3) and pbge(np.zeros((0, 3)))["x"].shape == (0, 3, 6, 6)


def test_input_and_gradient_are_not_modified(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    x0 = x.copy()
    y, pullback = vjp("gem_pool2d", x, kernel_size=3, stride=1, padding=1, p=np.full(3, 3.0))
    g = np.ones_like(y)
    pullback(g)
    np.testing.assert_array_equal(x, x0)
    assert (g == 1).all()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "p,err,match",
    [
        (0.0, PoolingConfigError, r"p must be > 0 and finite, got 0\.0"),
        (-1.0, PoolingConfigError, r"p must be > 0"),
        (np.inf, PoolingConfigError, r"p must be > 0 and finite, got inf"),
        (np.nan, PoolingConfigError, r"p must be > 0 and finite"),
        (np.array([1.0, -2.0, 3.0]), PoolingConfigError, r"p must be > 0 and finite, got -2\.0"),
        (True, PoolingConfigError, r"p must be a real number"),
        ("3", PoolingConfigError, r"p must be a positive real number or an array of 3"),
        (np.ones(2), PoolingInputError, r"p must be a scalar or have shape \(3,\).*got shape \(2,\)"),
        (np.ones((1, 3)), PoolingInputError, r"p must be a scalar or have shape \(3,\)"),
    ],
)
def test_bad_p(p, err, match):
    x = np.ones((1, 3, 4, 4))
    with pytest.raises(err, match=match):
        gem_pool2d(x, 2, p=p)
    with pytest.raises(err, match=match):
        global_gem_pool(x, p=p)


@pytest.mark.parametrize("eps", [0.0, -1e-6, np.nan])
def test_bad_eps(eps):
    x = np.ones((1, 3, 4, 4))
    with pytest.raises(PoolingConfigError, match="eps must be"):
        gem_pool2d(x, 2, eps=eps)
    with pytest.raises(PoolingConfigError, match="eps must be"):
        global_gem_pool(x, eps=eps)


def test_bad_shapes_and_gradients():
    x = np.ones((1, 3, 4, 4))
    with pytest.raises(PoolingInputError, match="grad_output must have shape"):
        vjp("gem_pool2d", x, kernel_size=2)[1](np.ones((1, 3, 3, 3)))
    with pytest.raises(PoolingInputError, match=r"grad_output must have the output's shape \(1, 3\)"):
        vjp("global_gem_pool", x)[1](np.ones((1, 3, 1, 1)))
    with pytest.raises(PoolingInputError, match="at least one spatial position"):
        global_gem_pool(np.ones((1, 3, 0, 4)))
    with pytest.raises(PoolingConfigError, match="keepdims must be True or False"):
        global_gem_pool(x, keepdims=1)
    with pytest.raises(PoolingInputError, match="expects a floating-point x"):
        gem_pool2d(np.ones((1, 3, 4, 4), dtype=np.int64), 2)


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "op,kw",
    [
        pytest.param("gem_pool2d", dict(kernel_size=3, stride=1, padding=1), id="windowed-scalar"),
        pytest.param(
            "gem_pool2d", dict(kernel_size=3, stride=1, padding=1, p=np.full(16, 3.0)), id="windowed-pc"
        ),
        pytest.param("global_gem_pool", dict(p=np.full(16, 3.0)), id="global"),
    ],
)
def test_peak_memory_within_three_times_input_plus_output(op, kw):
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    y = vjp(op, x, **kw)[0]
    g = np.ones_like(y)
    io = x.nbytes + y.nbytes
    peak, y = traced_peak(op, x, **kw, grad=g)
    assert peak <= 3 * io, f"{op}: peak {peak / io:.2f} x (input + output)"
