"""Classic torch functionals and modules: named cases against NumPy, drop-in against torch.nn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import poolkit.ops as P
import poolkit.torch as PT
import poolkit.torch.functional as TF
from poolkit.errors import PoolingConfigError, PoolingInputError

from cases import ALL_MAX_CASES, WINDOW_CASES, Case, select

MAX_CASES = select(ALL_MAX_CASES, exclude=("2d-window-without-valid-tap",))


def _t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("c", MAX_CASES)
def test_max_pool_named_cases_match_numpy(c: Case, layout, rng):
    x = c.input(rng)
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    kw = c.window() | dict(dilation=c.dilation, data_format=layout)
    (y, idx), pullback = P.vjp(f"max_pool{c.nd}d", x, return_indices=True, **kw)
    xt = _t(x, True)
    yt, it = getattr(TF, f"max_pool{c.nd}d")(xt, return_indices=True, **kw)
    np.testing.assert_array_equal(yt.detach().numpy(), y)
    np.testing.assert_array_equal(it.numpy(), idx)
    if c.kind != "nan" and y.size:
        g = rng.standard_normal(y.shape)
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(xt.grad.numpy(), pullback(g)["x"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, stride=2, padding="same"),
        dict(kernel_size=(2, 3), stride=2, padding=((0, 1), (1, 1))),
        dict(kernel_size=3, stride=2, padding=((1, 0), (0, 1)), ceil_mode=True),
        dict(kernel_size=3, stride=1, padding="same", dilation=2),
    ],
    ids=["same", "pairs", "pairs-ceil", "same-dilated"],
)
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d", "lp_pool2d"])
def test_extended_padding_matches_numpy(op, kw, rng):
    x = rng.standard_normal((2, 3, 9, 8)) + np.arange(72).reshape(9, 8) * 1e-3
    kw = dict(kw)
    extra = {"norm_type": 3.0} if op == "lp_pool2d" else {}
    if op == "lp_pool2d":
        ceil = kw.pop("ceil_mode", False)
        args = (x, 3.0, kw.pop("kernel_size"), kw.pop("stride", None), ceil)
        targs = lambda t: (t, 3.0, *args[2:])  # noqa: E731
    else:
        args, targs = (x,), lambda t: (t,)  # noqa: E731
    del extra
    y, pullback = P.vjp(op, *args, **kw)
    xt = _t(x, True)
    yt = getattr(TF, op)(*targs(xt), **kw)
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-12)
    g = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(xt.grad.numpy(), pullback(g)["x"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("c", WINDOW_CASES)
def test_avg_pool_named_cases_match_numpy(c: Case, include, rng):
    x = c.input(rng)
    kw = c.window() | dict(count_include_pad=include)
    np.testing.assert_allclose(
        getattr(TF, f"avg_pool{c.nd}d")(_t(x), **kw).numpy(),
        getattr(P, f"avg_pool{c.nd}d")(x, **kw),
        rtol=1e-12,
        atol=1e-14,
    )


def test_lp_pool_is_finite_for_negative_inputs_and_zero_windows():
    x = torch.tensor([[[-3.0, 2.0, 0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    y = TF.lp_pool1d(x, 0.5, 2)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert x.grad[0, 0, 2:].eq(0).all()
    assert torch.isnan(torch.nn.functional.lp_pool1d(x.detach(), 0.5, 2)).any()  # PyTorch's bug, for contrast
    t = (torch.rand(1, 1, 6, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda v: TF.lp_pool1d(v, 2.5, 2), (t,))


# ------------------------------------------------------------------- drop-in modules

DROP_IN = [
    (nn.MaxPool2d, PT.MaxPool2d, (3, 2, 1), {}),
    (nn.MaxPool2d, PT.MaxPool2d, (2,), dict(return_indices=True, ceil_mode=True)),
    (nn.MaxPool1d, PT.MaxPool1d, (3, 2, 1, 2), {}),
    (nn.MaxPool3d, PT.MaxPool3d, (2, 2), {}),
    (nn.AvgPool2d, PT.AvgPool2d, (3, 2, 1), dict(count_include_pad=False)),
    (nn.AvgPool2d, PT.AvgPool2d, (2,), dict(ceil_mode=True, divisor_override=3)),
    (nn.AvgPool1d, PT.AvgPool1d, (3, 2, 1), {}),
    (nn.AvgPool3d, PT.AvgPool3d, (2,), {}),
    (nn.LPPool2d, PT.LPPool2d, (2.0, 2), {}),
    (nn.AdaptiveMaxPool2d, PT.AdaptiveMaxPool2d, ((3, 4),), dict(return_indices=True)),
    (nn.AdaptiveAvgPool2d, PT.AdaptiveAvgPool2d, (5,), {}),
    (nn.AdaptiveAvgPool1d, PT.AdaptiveAvgPool1d, (3,), {}),
    (nn.AdaptiveMaxPool3d, PT.AdaptiveMaxPool3d, (2,), {}),
]


@pytest.mark.parametrize("theirs,ours,args,kw", DROP_IN, ids=lambda v: getattr(v, "__name__", None))
def test_drop_in_for_torch_nn(theirs, ours, args, kw):
    nd = {"1d": 1, "2d": 2, "3d": 3}[theirs.__name__[-2:]]
    x = torch.randn(2, 3, *([9, 8, 7][:nd]), dtype=torch.float64, requires_grad=True)
    m_t, m_o = theirs(*args, **kw), ours(*args, **kw)
    out_t, out_o = m_t(x), m_o(x)
    if isinstance(out_t, tuple):
        torch.testing.assert_close(out_o[1], out_t[1])
        out_t, out_o = out_t[0], out_o[0]
    torch.testing.assert_close(out_o, out_t)
    (g_o,) = torch.autograd.grad(out_o.sum(), x)
    (g_t,) = torch.autograd.grad(out_t.sum(), x)
    torch.testing.assert_close(g_o, g_t)
    for attr in ("kernel_size", "stride", "padding", "ceil_mode", "output_size"):
        if hasattr(m_t, attr):
            assert getattr(m_o, attr) == getattr(m_t, attr), attr


def test_modules_validate_at_construction():
    with pytest.raises(PoolingConfigError, match="kernel_size must be >= 1"):
        PT.MaxPool2d(0)
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=2"):
        PT.AvgPool2d(2, padding=2)
    with pytest.raises(PoolingConfigError, match="ceil_mode=True cannot be combined with padding='same'"):
        PT.MaxPool1d(3, padding="same", ceil_mode=True)
    with pytest.raises(PoolingConfigError, match="output_size must be >= 1"):
        PT.AdaptiveAvgPool2d(0)
    with pytest.raises(PoolingConfigError, match="norm_type must be > 0"):
        PT.LPPool2d(0, 2)
    with pytest.raises(PoolingConfigError, match="exactly one of output_size and output_ratio"):
        PT.FractionalMaxPool2d(2)


def test_input_errors_name_the_problem():
    with pytest.raises(PoolingInputError, match=r"max_pool2d expects a 4-D tensor shaped \(N, C, H, W\)"):
        TF.max_pool2d(torch.zeros(8, 8), 2)
    with pytest.raises(
        PoolingInputError, match="expects a floating-point x .* got dtype int64. Convert with x.float"
    ):
        TF.avg_pool2d(torch.zeros(1, 1, 4, 4, dtype=torch.int64), 2)
    with pytest.raises(PoolingInputError, match="expects a torch.Tensor, got ndarray"):
        TF.max_pool2d(np.zeros((1, 1, 4, 4)), 2)


def test_channels_last_layout():
    x = torch.randn(2, 5, 6, 3, dtype=torch.float64)  # NHWC
    y = TF.max_pool2d(x, 2, data_format="channels_last")
    torch.testing.assert_close(
        y, torch.nn.functional.max_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    )
    m = PT.AvgPool2d(3, 2, 1, data_format="channels_last")
    torch.testing.assert_close(
        m(x), torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)
    )


# ------------------------------------------------------------------- fractional, unpool, global


def test_fractional_matches_torch_with_samples_and_is_deterministic_in_eval():
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)
    u = torch.rand(2, 3, 2, dtype=torch.float64)
    y, i = TF.fractional_max_pool2d(x, 2, output_size=(5, 4), return_indices=True, samples=u)
    yt, it = torch.nn.functional.fractional_max_pool2d(
        x, 2, output_size=(5, 4), return_indices=True, _random_samples=u
    )
    torch.testing.assert_close(y, yt)
    torch.testing.assert_close(i, it)
    m = PT.FractionalMaxPool2d(2, output_ratio=0.5).eval()
    torch.testing.assert_close(m(x), m(x))
    g = torch.Generator().manual_seed(0)
    m = PT.FractionalMaxPool2d(2, output_size=4, generator=g).train()
    assert m(x).shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(
        TF.fractional_max_pool1d(x[:, :, 0], 3, output_size=4, samples=u[:, :, :1]).numpy(),
        P.fractional_max_pool1d(x[:, :, 0].numpy(), 3, output_size=4, samples=u[:, :, :1].numpy()),
    )


def test_unpool_duplicates_are_deterministic_last_wins():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]], dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[[2, 0, 2, 1]]])
    y = TF.max_unpool1d(x, idx, 1, output_size=(4,))
    torch.testing.assert_close(y, torch.tensor([[[2.0, 4.0, 3.0, 0.0]]], dtype=torch.float64))
    y.backward(torch.tensor([[[10.0, 20.0, 30.0, 40.0]]], dtype=torch.float64))
    torch.testing.assert_close(x.grad, torch.tensor([[[0.0, 10.0, 30.0, 20.0]]], dtype=torch.float64))


def test_global_pools():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(PT.GlobalAvgPool()(x), x.mean((2, 3)))
    torch.testing.assert_close(PT.GlobalMaxPool(keepdims=True)(x), x.amax((2, 3), keepdim=True))
    tie = torch.zeros(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    TF.global_max_pool(tie).sum().backward()
    assert tie.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]  # first maximum (amax would split it)


# ------------------------------------------------------------------- dtypes and determinism


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "op,kw",
    [
        ("max_pool2d", dict(kernel_size=3, stride=2, padding="same")),
        ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, dilation=2)),
        ("lp_pool2d", dict(norm_type=2.0, kernel_size=2)),
        ("adaptive_avg_pool2d", dict(output_size=3)),
    ],
)
def test_low_precision_within_tolerance_of_float32(op, kw, dtype):
    x = torch.randn(2, 3, 12, 11)
    fn = getattr(TF, op)
    y32 = fn(x, **kw)
    xl = x.to(dtype).requires_grad_(True)
    y = fn(xl, **kw)
    assert y.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(y.float(), y32, rtol=tol, atol=tol)
    y.sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()


def test_deterministic_algorithms_mode():
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(2, 3, 9, 9, requires_grad=True)
        for fn, kw in [
            (TF.max_pool2d, dict(kernel_size=3, stride=2, padding="same")),
            (TF.avg_pool2d, dict(kernel_size=3, dilation=2)),
            (TF.adaptive_max_pool2d, dict(output_size=4)),
            (TF.adaptive_avg_pool2d, dict(output_size=4)),
            (TF.lp_pool2d, dict(norm_type=2.0, kernel_size=2)),
        ]:
            fn(x, **kw).sum().backward()
        y, i = TF.max_pool2d(x, 3, 1, 1, return_indices=True)
        TF.max_unpool2d(y, i, 3, 1, 1).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
