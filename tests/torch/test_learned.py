"""Gated, tree and detail-preserving pooling in torch: NumPy parity, second derivatives, modules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import poolkit.ops as P
import poolkit.torch as PT
import poolkit.torch.functional as TF
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.torch._core import generic_paths

from cases import RESEARCH_CASES, Case
from helpers import distinct
from torch_helpers import DEVICES


def _layout(a, layout):
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _kernel(case: Case) -> tuple[int, ...]:
    k = case.kernel_size
    return tuple(k) if isinstance(k, tuple) else (k,) * case.nd


def _check_parity(op, arrays, settings, rng, device, rtol=1e-12):
    """Forward and the gradient of every array argument (in order) against ``P.vjp``, float64."""
    y, pullback = P.vjp(op, *arrays.values(), **settings)
    g = rng.standard_normal(y.shape)
    ref = pullback(g)
    targs = [torch.tensor(a, dtype=torch.float64, device=device, requires_grad=True) for a in arrays.values()]
    yt = getattr(TF, op)(*targs, **settings)
    np.testing.assert_allclose(yt.detach().cpu().numpy(), y, rtol=rtol, atol=1e-13)
    yt.backward(torch.tensor(g, device=device))
    for name, t in zip(arrays, targs):
        np.testing.assert_allclose(t.grad.cpu().numpy(), ref[name], rtol=1e-9, atol=1e-11, err_msg=name)


# ------------------------------------------------------------------- gated


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-layer", "per-channel"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_gated_matches_numpy(case: Case, layout, per_channel, device, path, rng):
    """The CPU's one-gradient Function (contiguous inputs) and the generic autograd path."""
    x = _layout(distinct(case.shape, rng, scale=10.0), layout)  # tie-free
    w = rng.standard_normal(((case.shape[1],) if per_channel else ()) + _kernel(case))
    kw = dict(case.window(), data_format=layout)
    with generic_paths(path == "generic"):
        _check_parity(f"gated_pool{case.nd}d", {"x": x, "weight": w}, kw, rng, device)


@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0), (3, 1, 1)], ids=str)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-layer", "per-channel"])
def test_gated_cpu_batch_chunks_match_numpy(window, per_channel, rng, monkeypatch):
    """The CPU tap loops split and accumulate a batch chunk at a time (one sample each here, the
    filters' gradient summed over the chunks), ties included."""
    import poolkit.torch._taps as T

    monkeypatch.setattr(T, "CHUNK", 1)
    k, s, p = window
    x = rng.integers(-2, 3, (3, 2, 7, 6)).astype(float)
    w = rng.standard_normal(((2,) if per_channel else ()) + (k, k))
    _check_parity("gated_pool2d", {"x": x, "weight": w}, dict(kernel_size=k, stride=s, padding=p), rng, "cpu")


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 3, 0)], ids=str)
def test_gated_ties_and_nonfinite_windows_match_numpy(window, path, rng):
    """Ties give the max share to PyTorch's first maximum; windows holding inf or NaN give NaN and
    the generic formulation's gradient (the CPU tap loop falls back to it)."""
    k, s, p = window
    x = rng.integers(-2, 3, (2, 3, 7, 6)).astype(float)  # many ties, and windows of equal values
    w = rng.standard_normal((3, k, k))
    kw = dict(kernel_size=k, stride=s, padding=p)
    with generic_paths(path == "generic"):
        _check_parity("gated_pool2d", {"x": x, "weight": w}, kw, rng, "cpu")
        x[0, 1, 2, 2], x[1, 2, 5, 4], x[1, 0, 0, 0] = np.inf, np.nan, -np.inf
        _check_parity("gated_pool2d", {"x": x, "weight": w}, kw, rng, "cpu")


def test_gated_gate_derivative_stays_accurate_when_nearly_saturated():
    # z = 40: s = 1 - 4e-18 rounds to 1; s (1 - s) = e^-40 / (1 + e^-40)^2 must not be lost with it.
    x = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    for z in (40.0, -40.0):
        w = torch.tensor([z, 0.0], dtype=torch.float64, requires_grad=True)
        TF.gated_pool1d(x, w, 2).sum().backward()
        e = math.exp(-abs(z))
        ds = e / (1 + e) ** 2
        np.testing.assert_allclose(w.grad.numpy(), [ds * 0.5 * 1.0, ds * 0.5 * 2.0], rtol=1e-12)


def test_gated_saturation_zero_weight_and_padding_rules(rng):
    x = torch.tensor(rng.uniform(1.0, 2.0, (2, 3, 7, 6)))
    win = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    torch.testing.assert_close(
        TF.gated_pool2d(x, torch.full((3, 3), 1e4), **win), TF.max_pool2d(x, **win), rtol=0, atol=0
    )
    torch.testing.assert_close(
        TF.gated_pool2d(x, torch.full((3, 3), -1e4), **win), TF.avg_pool2d(x, **win), rtol=0, atol=0
    )
    half = 0.5 * (TF.max_pool2d(x, **win) + TF.avg_pool2d(x, **win))
    torch.testing.assert_close(TF.gated_pool2d(x, torch.zeros(3, 3), **win), half)
    neg = torch.tensor([[[-4.0, -1.0, -6.0]]], dtype=torch.float64)  # the max pads with -inf
    np.testing.assert_allclose(
        TF.gated_pool1d(neg, np.array([1.0, 2.0]), 2, 2, 1).numpy(),
        P.gated_pool1d(neg.numpy(), np.array([1.0, 2.0]), 2, 2, 1),
        rtol=1e-15,
    )
    nan = torch.tensor([[[np.nan, 1.0, 2.0, 3.0, np.inf, 0.0]]])
    y = TF.gated_pool1d(nan, torch.full((2,), 50.0), 2)
    assert torch.isnan(y[..., 0]) & torch.isnan(y[..., 2]) and y[0, 0, 1] == 3.0


# ------------------------------------------------------------------- tree


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "depth,leaf_pc,gate_pc", [(1, True, False), (2, False, True), (3, True, True)], ids=["d1", "d2", "d3"]
)
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_tree_matches_numpy(case: Case, layout, depth, leaf_pc, gate_pc, device, path, rng):
    """The CPU's polyphase tap loops and the generic (strided-tap) loops."""
    x = _layout(case.input(rng), layout)
    n_leaves = 2 ** (depth - 1)
    c = (case.shape[1],)
    leaves = rng.standard_normal((n_leaves, *(c if leaf_pc else ()), *_kernel(case)))
    gates = rng.standard_normal((n_leaves - 1, *(c if gate_pc else ()), *_kernel(case)))
    kw = dict(case.window(), data_format=layout)
    arrays = {"x": x, "leaves": leaves, "gates": gates}
    with generic_paths(path == "generic"):
        _check_parity(f"tree_pool{case.nd}d", arrays, kw, rng, device)


@pytest.mark.parametrize("learn", [True, False], ids=["filters-learn", "filters-fixed"])
@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0), (3, 1, 1)], ids=str)
def test_tree_cpu_batch_chunks_match_numpy(window, learn, rng, monkeypatch):
    """The CPU window dot products and their adjoint run a batch chunk at a time (one sample each
    here); with fixed filters the backward splits no phases at all."""
    import poolkit.torch._taps as T

    monkeypatch.setattr(T, "CHUNK", 1)
    k, s, p = window
    x = rng.standard_normal((3, 2, 7, 6))
    leaves, gates = rng.standard_normal((2, 2, k, k)), rng.standard_normal((1, k, k))
    kw = dict(kernel_size=k, stride=s, padding=p)
    if learn:
        _check_parity("tree_pool2d", {"x": x, "leaves": leaves, "gates": gates}, kw, rng, "cpu")
        return
    y, pullback = P.vjp("tree_pool2d", x, leaves, gates, **kw)
    g = rng.standard_normal(y.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = TF.tree_pool2d(xt, torch.tensor(leaves), torch.tensor(gates), **kw)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(xt.grad.numpy(), pullback(g)["x"], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("window", [(3, 2, 1), (2, 2, 0), (2, 3, 0)], ids=str)
@pytest.mark.parametrize("op", ["gated", "tree"])
def test_input_only_gradient_equals_the_full_one(op, window, rng):
    """With filters that do not learn, the CPU loops skip their gradient; the input's is unchanged."""
    k, s, p = window
    x = torch.tensor(distinct((2, 3, 7, 6), rng), requires_grad=True)
    filters = [
        torch.tensor(rng.standard_normal(shape))
        for shape in ([(3, k, k)] if op == "gated" else [(2, k, k), (1, k, k)])
    ]
    fn = getattr(TF, f"{op}_pool2d")
    g = torch.tensor(rng.standard_normal(fn(x, *filters, k, s, p).shape))
    (only,) = torch.autograd.grad(fn(x, *filters, k, s, p), x, g)
    learning = [f.clone().requires_grad_() for f in filters]
    full = torch.autograd.grad(fn(x, *learning, k, s, p), [x, *learning], g)[0]
    torch.testing.assert_close(only, full, rtol=0, atol=0)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_tree_uniform_leaves_give_average_pooling_and_saturated_gates_pick_a_leaf(depth, rng):
    x = torch.tensor(rng.standard_normal((2, 3, 8, 7)))
    n_leaves = 2 ** (depth - 1)
    leaves = torch.full((n_leaves, 3, 3), 1 / 9, dtype=torch.float64)
    gates = torch.tensor(rng.standard_normal((n_leaves - 1, 3, 3)))
    win = dict(kernel_size=3, stride=2, padding=1)
    torch.testing.assert_close(TF.tree_pool2d(x, leaves, gates, **win), TF.avg_pool2d(x, **win))
    # x > 0 and gates of one sign saturate every gate: +: always left (leaf 0), -: always right
    xp = x.abs() + 1
    leaves = torch.tensor(rng.standard_normal((n_leaves, 3, 3)))
    for sign, leaf in ((1.0, 0), (-1.0, n_leaves - 1)):
        y = TF.tree_pool2d(xp, leaves, torch.full((n_leaves - 1, 3, 3), sign * 1e4), **win)
        one = TF.tree_pool2d(xp, leaves[leaf : leaf + 1], torch.zeros(0, 3, 3), **win)
        torch.testing.assert_close(y, one, rtol=0, atol=0)


# ------------------------------------------------------------------- dpp


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_dpp_matches_numpy(case: Case, layout, asymmetric, device, path, rng):
    """The CPU's in-place polyphase loops and the generic Function (padded copy, tap views)."""
    x = _layout(case.input(rng), layout)
    shape = (case.shape[1],) if case.nd != 1 else ()
    alpha, lam = rng.uniform(0.2, 1.0, shape), rng.uniform(0.5, 3.0, shape)
    if alpha.ndim:
        alpha[0] = 0.0  # allowed: only rho weighs
    kw = dict(case.window(), asymmetric=asymmetric, data_format=layout)
    with generic_paths(path == "generic"):
        _check_parity(f"dpp_pool{case.nd}d", {"x": x, "alpha": alpha, "lam": lam}, kw, rng, device)


@pytest.mark.parametrize("chunk", [1, 2 * 4 * 4 * 3], ids=["one-sample", "two-samples"])
@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_dpp_cpu_batch_chunks_match_numpy(chunk, asymmetric, rng, monkeypatch):
    """The CPU loops run a batch chunk at a time: chunks of one sample, and of two with a shorter
    last one (5 samples; its buffers are made anew), against NumPy."""
    import poolkit.torch._taps as T

    monkeypatch.setattr(T, "CHUNK", chunk)
    x = rng.standard_normal((5, 4, 7, 6))
    alpha, lam = rng.uniform(0.2, 1.0, 4), rng.uniform(0.5, 3.0, 4)
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, asymmetric=asymmetric)
    assert len(T.batch_chunks((5, 4, 4, 3))) == (5 if chunk == 1 else 3)
    _check_parity("dpp_pool2d", {"x": x, "alpha": alpha, "lam": lam}, kw, rng, "cpu")


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_dpp_huge_inputs_match_numpy(path, asymmetric, rng):
    """Inputs whose squared deviations overflow: both paths cap ``d^2`` as NumPy does, and the CPU
    loop's gradient divides before it multiplies (``b d`` alone would overflow)."""
    x = rng.standard_normal((3, 2, 7, 6)) * 1e154
    alpha, lam = np.array([0.3, 0.7]), np.array([1.5, 2.5])
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, asymmetric=asymmetric)
    with generic_paths(path == "generic"):
        y, pullback = P.vjp("dpp_pool2d", x, alpha, lam, **kw)
        ref = pullback(np.ones_like(y))
        args = [torch.tensor(a, requires_grad=True) for a in (x, alpha, lam)]
        yt = TF.dpp_pool2d(*args, **kw)
        yt.sum().backward()
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-10)  # weighted means of +-1e154 values
    for name, t in zip(("x", "alpha", "lam"), args):
        assert torch.isfinite(t.grad).all(), name
        np.testing.assert_allclose(t.grad.numpy(), ref[name], rtol=1e-9, atol=1e-300, err_msg=name)


def test_dpp_limits_and_extreme_parameters(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 7, 6)))
    win = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    avg = TF.avg_pool2d(x, **win, count_include_pad=False)
    torch.testing.assert_close(TF.dpp_pool2d(x, 1.0, 0.0, **win), avg)  # lam = 0: the average of the taps
    torch.testing.assert_close(TF.dpp_pool2d(x, 1e12, 2.0, **win), avg)  # alpha -> inf: too
    for alpha, lam, eps in ((0.0, 50.0, 1e-3), (1e30, 1e3, 1e-30), (0.0, 1.0, 1e-300)):
        xt = (x * 1e4).requires_grad_(True)
        a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
        lm = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
        y = TF.dpp_pool2d(xt, a, lm, eps=eps, **win)
        ref = P.dpp_pool2d(xt.detach().numpy(), alpha, lam, eps=eps, **win)
        np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-9)
        y.sum().backward()
        assert torch.isfinite(xt.grad).all() and torch.isfinite(lm.grad) and torch.isfinite(a.grad)


def test_dpp_non_finite_windows_give_nan_and_leave_the_others_alone():
    x = torch.tensor([[[np.nan, 1.0, 2.0, 3.0, np.inf, 0.0]]])
    y = TF.dpp_pool1d(x, 0.5, 2.0, 2)
    assert torch.isnan(y[0, 0, 0]) and torch.isnan(y[0, 0, 2]) and torch.isfinite(y[0, 0, 1])
    np.testing.assert_allclose(
        y[0, 0, 1].item(), P.dpp_pool1d(np.array([[[2.0, 3.0]]]), 0.5, 2.0, 2).item(), rtol=1e-6
    )


# ------------------------------------------------------------------- second derivatives


SECOND_ORDER_WINDOW = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)


def _small(seed, channels=2):
    rng = np.random.default_rng(seed)
    return rng, torch.tensor(distinct((1, channels, 3, 4), rng, scale=10.0), requires_grad=True)


def test_gated_gradgradcheck():
    rng, x = _small(4, channels=1)
    w = torch.tensor(rng.standard_normal((1, 3, 3)), requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v, q: TF.gated_pool2d(v, q, **SECOND_ORDER_WINDOW), (x, w))


def test_tree_gradgradcheck():
    rng, x = _small(5)
    leaves = torch.tensor(rng.standard_normal((2, 3, 3)), requires_grad=True)
    gates = torch.tensor(rng.standard_normal((1, 2, 3, 3)), requires_grad=True)
    fn = lambda v, a, b: TF.tree_pool2d(v, a, b, **SECOND_ORDER_WINDOW)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, leaves, gates))


@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_dpp_gradgradcheck(asymmetric):
    _, x = _small(6)
    alpha = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    fn = lambda v, a, lm: TF.dpp_pool2d(v, a, lm, asymmetric=asymmetric, **SECOND_ORDER_WINDOW)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, alpha, lam))
    assert torch.autograd.gradgradcheck(fn, (x, alpha, lam))


# ------------------------------------------------------------------- errors


def test_functional_errors(rng):
    x = torch.tensor(rng.standard_normal((1, 2, 6, 6)))
    with pytest.raises(PoolingInputError, match=r"weight must have shape \(3, 3\) .* or \(2, 3, 3\)"):
        TF.gated_pool2d(x, torch.zeros(2, 2), 3)
    with pytest.raises(PoolingInputError, match="weight must be a real-valued tensor"):
        TF.gated_pool2d(x, torch.zeros(3, 3, dtype=torch.bool), 3)
    with pytest.raises(PoolingInputError, match=r"leaves must hold L = 2\*\*\(depth - 1\) leaf filters"):
        TF.tree_pool2d(x, torch.zeros(3, 2, 2), torch.zeros(2, 2, 2), 2)
    with pytest.raises(PoolingInputError, match="a tree with L = 2 leaves has L - 1 = 1 gates, got 2"):
        TF.tree_pool2d(x, torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), 2)
    with pytest.raises(
        PoolingInputError, match=r"lam must be a scalar \(one per layer\) or shaped \(C,\) = \(2,\)"
    ):
        TF.dpp_pool2d(x, 1.0, torch.ones(3), 2)
    with pytest.raises(PoolingConfigError, match="alpha must be finite and >= 0, got -1.0"):
        TF.dpp_pool2d(x, -1.0, 1.0, 2)
    with pytest.raises(PoolingConfigError, match="alpha must be finite and >= 0"):
        TF.dpp_pool2d(x, np.array([1.0, np.inf]), 1.0, 2)
    with pytest.raises(PoolingConfigError, match="eps must be > 0"):
        TF.dpp_pool2d(x, 1.0, 1.0, 2, eps=0.0)


# ------------------------------------------------------------------- dtypes, determinism, layouts

LOW_PRECISION_CALLS = [
    ("gated_pool2d", (torch.full((3, 3, 3), 0.2),), dict(kernel_size=3, stride=2, padding=1)),
    (
        "tree_pool2d",
        (torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(0)) / 2, torch.ones(1, 2, 2)),
        dict(kernel_size=2),
    ),
    (
        "dpp_pool2d",
        (torch.full((3,), 0.5), torch.tensor(2.0)),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    ),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op,params,kw", LOW_PRECISION_CALLS, ids=lambda v: v if isinstance(v, str) else "")
def test_low_precision_within_tolerance_of_float32(op, params, kw, dtype):
    x = torch.rand(2, 3, 12, 11, generator=torch.Generator().manual_seed(1)) * 4 - 2
    fn = getattr(TF, op)
    xl = x.to(dtype).requires_grad_(True)
    ps = [p.clone().requires_grad_(True) for p in params]
    y = fn(xl, *ps, **kw)
    assert y.dtype == dtype
    # computed in float32 (exactly the float32 result on the rounded input, rounded), and close to float32
    torch.testing.assert_close(y, fn(xl.detach().float(), *params, **kw).to(dtype), rtol=0, atol=0)
    tol = 3e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(y.float(), fn(x, *params, **kw), rtol=tol, atol=tol)
    y.sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in ps)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_algorithms_mode(device):
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(2, 3, 9, 9, device=device, requires_grad=True)
        params = [torch.rand(3, 3, 3, device=device, requires_grad=True) for _ in range(3)]
        TF.gated_pool2d(x, params[0], 3, 2, 1).sum().backward()
        TF.tree_pool2d(x, params[1][:2], params[2][:1], 3, 2, 1).sum().backward()
        a, lam = (torch.rand(3, device=device, requires_grad=True) for _ in range(2))
        TF.dpp_pool2d(x, a, lam, 3, 2, 1).sum().backward()
        assert all(p.grad is not None for p in (*params, a, lam))
    finally:
        torch.use_deterministic_algorithms(False)


def test_channels_last_and_unbatched_equal_channels_first(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 7, 6)))
    w = torch.tensor(rng.standard_normal((3, 2, 2)))
    leaves, gates = (
        torch.tensor(rng.standard_normal((2, 2, 2))),
        torch.tensor(rng.standard_normal((1, 3, 2, 2))),
    )
    for fn, args in (
        (TF.gated_pool2d, (w,)),
        (TF.tree_pool2d, (leaves, gates)),
        (TF.dpp_pool2d, (torch.full((3,), 0.5), 1.5)),
    ):
        y = fn(x, *args, 2)
        torch.testing.assert_close(
            fn(x.permute(0, 2, 3, 1), *args, 2, data_format="channels_last"), y.permute(0, 2, 3, 1)
        )
        torch.testing.assert_close(fn(x[0], *args, 2), y[0])


# ------------------------------------------------------------------- modules


MODULES = [
    (PT.GatedPool2d, dict(), {"weight": (2, 2)}),
    (PT.GatedPool2d, dict(channels=3), {"weight": (3, 2, 2)}),
    (PT.TreePool2d, dict(), {"leaves": (2, 2, 2), "gates": (1, 2, 2)}),
    (PT.TreePool2d, dict(depth=3, channels=3), {"leaves": (4, 3, 2, 2), "gates": (3, 3, 2, 2)}),
    (PT.DPPPool2d, dict(channels=3), {"alpha": (3,), "lam": (3,)}),
    (PT.DPPPool2d, dict(channels=None), {"alpha": (), "lam": ()}),
]


@pytest.mark.parametrize("cls,kw,shapes", MODULES, ids=lambda v: getattr(v, "__name__", None))
def test_modules_register_train_and_round_trip_their_parameters(cls, kw, shapes, rng):
    torch.manual_seed(0)
    m = cls(2, **kw) if cls is not PT.DPPPool2d else cls(2, kw["channels"])
    assert {k: tuple(v.shape) for k, v in m.named_parameters()} == shapes
    x = torch.tensor(rng.standard_normal((4, 3, 8, 8)), dtype=torch.float32)
    target = TF.max_pool2d(x, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = (m(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(before[k], v) for k, v in m.named_parameters())  # every parameter learns
    m2 = cls(2, **kw) if cls is not PT.DPPPool2d else cls(2, kw["channels"])
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), m(x))
    torch.testing.assert_close(m.eval()(x), m.train()(x))  # deterministic operators: no train/eval difference


def test_module_initialisation(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 8, 8)), dtype=torch.float32)
    half = 0.5 * (TF.max_pool2d(x, 2) + TF.avg_pool2d(x, 2))
    torch.testing.assert_close(PT.GatedPool2d(2)(x), half)  # weight 0: the gate at 1/2
    tree = PT.TreePool2d(2, channels=3)
    assert (tree.gates == 0).all() and not torch.equal(
        tree.leaves[0], tree.leaves[1]
    )  # noise breaks symmetry
    torch.testing.assert_close(tree.leaves, torch.full_like(tree.leaves, 0.25), rtol=0, atol=0.25 * 0.6)
    torch.testing.assert_close(
        tree(x), TF.avg_pool2d(x, 2), rtol=0.2, atol=0.2
    )  # starts near average pooling
    dpp = PT.DPPPool2d(2, 3)
    assert (dpp.alpha == 1).all() and (dpp.lam == 1).all()
    with torch.no_grad():
        dpp.lam.fill_(-1.0)  # acts as lam = 0, with a gradient that can bring it back
    torch.testing.assert_close(dpp(x), TF.avg_pool2d(x, 2))
    dpp(x).sum().backward()
    assert (dpp.lam.grad != 0).any()
    assert PT.GatedPool1d(3, channels=2)(torch.rand(1, 2, 9)).shape == (1, 2, 3)
    assert PT.TreePool3d(2)(torch.rand(1, 2, 4, 4, 4)).shape == (1, 2, 2, 2, 2)
    assert PT.DPPPool3d(2, None)(torch.rand(1, 2, 4, 4, 4)).shape == (1, 2, 2, 2, 2)
    assert "depth=2" in repr(tree) and "kernel_size=2" in repr(dpp)


def test_modules_validate_at_construction():
    with pytest.raises(PoolingConfigError, match="kernel_size must be >= 1"):
        PT.GatedPool2d(0)
    with pytest.raises(PoolingConfigError, match="channels must be >= 1"):
        PT.GatedPool2d(2, channels=0)
    with pytest.raises(PoolingConfigError, match="depth must be >= 1"):
        PT.TreePool2d(2, depth=0)
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=2"):
        PT.TreePool1d(2, padding=2)
    with pytest.raises(PoolingConfigError, match="eps must be > 0"):
        PT.DPPPool2d(2, 3, eps=-1.0)
    with pytest.raises(PoolingConfigError, match="asymmetric must be True or False"):
        PT.DPPPool2d(2, 3, asymmetric="yes")
    with pytest.raises(PoolingConfigError, match="data_format must be one of"):
        PT.GatedPool3d(2, data_format="NDHWC")


def _saved_bytes(fn):
    """Bytes autograd keeps for the backward of ``fn()`` (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def _param(*shape, value=None):
    t = torch.rand(*shape) if value is None else torch.full(shape, value)
    return t.requires_grad_(True)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, k: TF.gated_pool2d(x, _param(4, k, k, value=0.0), k, 1, k // 2),
        lambda x, k: TF.tree_pool2d(x, _param(2, 4, k, k), _param(1, 4, k, k), k, 1, k // 2),
        lambda x, k: TF.dpp_pool2d(x, _param(4, value=1.0), _param(4, value=1.0), k, 1, k // 2),
    ],
    ids=["gated", "tree", "dpp"],
)
def test_saved_memory_does_not_grow_with_the_kernel(call):
    # stride 1: a kernel-volume copy of the input (an unfold) would keep 9x, then 25x, the input.
    # What is kept is O(input + output): the padded input, and a few output-sized tensors.
    x = torch.randn(2, 4, 24, 24, requires_grad=True)
    small, large = _saved_bytes(lambda: call(x, 3)), _saved_bytes(lambda: call(x, 5))
    io = x.numel() * x.element_size()
    assert small <= 8.5 * io and large <= 1.2 * small, (small / io, large / io)
