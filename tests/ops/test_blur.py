"""blur_pool and max_blur_pool: kornia's examples, torch conv parity, small maps, gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp
from poolkit.ops.blur import (
    binomial_filter,
    blur_pool,
    blur_pool1d,
    blur_pool2d,
    blur_pool3d,
    max_blur_pool,
    max_blur_pool2d,
)

from cases import RESEARCH_CASES, Case
from helpers import check_grads, distinct, torch_vjp, traced_peak

TORCH_MODES = {"reflect": "reflect", "replicate": "replicate", "constant": "constant"}
NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _kernel(filt: tuple[int, ...]) -> np.ndarray:
    w = np.ones(())
    for f in filt:
        w = np.multiply.outer(w, binomial_filter(f))
    return w


def _aa_pads(filt):
    return [((f - 1) // 2, f // 2) for f in filt]


def _torch_blur(xt, filt, stride, mode, pads):
    """Depthwise conv on F.pad(x): antialiased-cnns / timm / kornia's construction."""
    nd = xt.dim() - 2
    c = xt.shape[1]
    w = torch.tensor(_kernel(filt), dtype=xt.dtype)
    weight = w[None, None].repeat(c, *[1] * (nd + 1))
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]
    xp = F.pad(xt, flat, mode=TORCH_MODES[mode])
    return CONV[nd](xp, weight, stride=stride, groups=c)


def _numpy_blur(x, filt, stride, mode, pads):
    """A slow reference: numpy.pad (any pad size), then every kernel offset in turn."""
    nd = x.ndim - 2
    stride = (stride,) * nd if isinstance(stride, int) else tuple(stride)
    xp = np.pad(x, [(0, 0), (0, 0), *pads], mode=NUMPY_MODES[mode])
    w = _kernel(filt)
    out = [(xp.shape[2 + j] - filt[j]) // stride[j] + 1 for j in range(nd)]
    y = np.zeros((*x.shape[:2], *out))
    for k in itertools.product(*[range(f) for f in filt]):
        sl = tuple(slice(k[j], k[j] + (out[j] - 1) * stride[j] + 1, stride[j]) for j in range(nd))
        y += w[k] * xp[(slice(None), slice(None), *sl)]
    return y


def test_binomial_filters_are_pascal_rows():
    assert binomial_filter(1).tolist() == [1.0]
    np.testing.assert_array_equal(binomial_filter(3), np.array([1, 2, 1]) / 4)
    np.testing.assert_array_equal(binomial_filter(7), np.array([1, 6, 15, 20, 15, 6, 1]) / 64)
    for f in range(1, 8):
        assert binomial_filter(f).sum() == 1.0


def test_kornia_documented_examples():
    x = np.eye(5)[None, None]
    # kornia: zero padding (k - 1) // 2 = 1, stride 2 (the same as the antialiased pads for k = 3)
    expected = [[0.3125, 0.0625, 0.0], [0.0625, 0.375, 0.0625], [0.0, 0.0625, 0.3125]]
    np.testing.assert_array_equal(blur_pool2d(x, 3, pad_mode="constant")[0, 0], expected)
    np.testing.assert_array_equal(blur_pool2d(x, 3, pad_mode="constant", padding=1)[0, 0], expected)
    # kornia: MaxPool2d(2, stride=1), then the blur above
    expected = [[0.5625, 0.3125], [0.3125, 0.875]]
    np.testing.assert_array_equal(max_blur_pool2d(x, 2, 3, pad_mode="constant")[0, 0], expected)
    np.testing.assert_array_equal(max_blur_pool2d(x, 2, 3, pad_mode="constant", padding=1)[0, 0], expected)


# every filter size, every pad mode, strides 1 to 3
TORCH_2D = sorted(
    {(f, (2, 1, 3)[f % 3], ("reflect", "constant", "replicate")[f % 3]) for f in range(1, 8)}
    | {(f, 2, mode) for f in (3, 4) for mode in TORCH_MODES}
)


@pytest.mark.parametrize("filt,stride,mode", TORCH_2D)
def test_matches_torch_depthwise_conv_2d(filt, stride, mode, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    pads = _aa_pads((filt, filt))
    y, pullback = vjp("blur_pool2d", x, filt_size=filt, stride=stride, pad_mode=mode)
    g = rng.standard_normal(y.shape)
    ty, tg, _ = torch_vjp(_torch_blur, x, g, (filt, filt), stride, mode, pads)
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "shape,filt,stride,mode",
    [
        ((2, 3, 11), 4, 2, "reflect"),
        ((1, 2, 10), 5, 3, "replicate"),
        ((1, 2, 5, 6, 7), 3, 2, "reflect"),
        ((1, 2, 6, 5, 4), (2, 3, 4), (1, 2, 2), "replicate"),
        ((1, 1, 4, 6, 5), 4, 2, "constant"),
        ((2, 2, 7, 6), (5, 2), (2, 1), "reflect"),
    ],
)
def test_matches_torch_1d_3d_and_anisotropic(shape, filt, stride, mode, rng):
    x = rng.standard_normal(shape)
    nd = len(shape) - 2
    ft = (filt,) * nd if isinstance(filt, int) else filt
    y, pullback = vjp("blur_pool", x, filt_size=filt, stride=stride, pad_mode=mode)
    g = rng.standard_normal(y.shape)
    ty, tg, _ = torch_vjp(_torch_blur, x, g, ft, stride, mode, _aa_pads(ft))
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pullback(g)["x"], tg, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("filt", [2, 4, 6])
def test_kornia_symmetric_padding_for_even_filters(filt, rng):
    # kornia pads (k - 1) // 2 on both sides; antialiased-cnns one more on the right.
    x = rng.standard_normal((1, 2, 9, 9))
    p = (filt - 1) // 2
    y = blur_pool2d(x, filt, pad_mode="constant", padding=p)
    ref = _torch_blur(torch.tensor(x), (filt, filt), 2, "constant", [(p, p)] * 2).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14)
    aa = blur_pool2d(x, filt, pad_mode="constant")
    assert aa.shape[-1] == 5 and (y.shape != aa.shape or not np.allclose(y, aa))


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("filt", [4, 7])
@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_small_maps_follow_numpy_pad(size, filt, mode, rng):
    # antialiased-cnns#47: torch's reflection needs padding < size; poolkit repeats the reflection.
    x = rng.standard_normal((1, 2, size, size + 1))
    pads = _aa_pads((filt, filt))
    y = blur_pool2d(x, filt, 2, mode)
    np.testing.assert_allclose(y, _numpy_blur(x, (filt, filt), 2, mode, pads), rtol=1e-12, atol=1e-14)
    check_grads("blur_pool2d", {"x": x}, rng, filt_size=filt, stride=2, pad_mode=mode)


def test_one_by_one_map_is_returned_unchanged(rng):
    x = rng.standard_normal((2, 3, 1, 1))
    for mode in ("reflect", "replicate"):
        for f in range(1, 8):
            np.testing.assert_allclose(blur_pool2d(x, f, 2, mode), x, rtol=1e-15)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_filter_size_one_is_plain_subsampling(mode, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    np.testing.assert_array_equal(blur_pool2d(x, 1, 2, mode), x[..., ::2, ::2])
    np.testing.assert_array_equal(blur_pool2d(x, 1, (3, 1), mode), x[..., ::3, :])
    x3 = rng.standard_normal((1, 2, 5, 4, 7))
    np.testing.assert_array_equal(blur_pool3d(x3, 1, 2, mode), x3[..., ::2, ::2, ::2])


def _window_settings(case: Case) -> dict:
    stride = case.stride if case.stride is not None else case.kernel_size
    padding = case.padding if case.padding else "antialiased"
    return dict(filt_size=case.kernel_size, stride=stride, padding=padding)


@pytest.mark.parametrize("mode", ["reflect", "constant"])  # replicate: in test_small_maps_follow_numpy_pad
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_finite_differences(case: Case, layout, mode, rng):
    x = case.input(rng)
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    check_grads("blur_pool", {"x": x}, rng, data_format=layout, pad_mode=mode, **_window_settings(case))


@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_max_blur_finite_differences(case: Case, layout, rng):
    x = distinct(case.shape, rng)  # no ties inside a max window
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    check_grads(
        "max_blur_pool",
        {"x": x},
        rng,
        data_format=layout,
        kernel_size=case.kernel_size,
        filt_size=3,
        stride=2,
    )


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("k,filt,stride", [(2, 3, 2), (3, 4, 2), ((2, 3), 5, (1, 2))])
def test_max_blur_is_max_pool_stride_1_then_blur(mode, k, filt, stride, rng):
    x = distinct((2, 3, 9, 10), rng)
    y, pullback = vjp("max_blur_pool2d", x, kernel_size=k, filt_size=filt, stride=stride, pad_mode=mode)
    m, pb_max = vjp("max_pool2d", x, kernel_size=k, stride=1)
    ref, pb_blur = vjp("blur_pool2d", m, filt_size=filt, stride=stride, pad_mode=mode)
    np.testing.assert_array_equal(y, ref)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(pullback(g)["x"], pb_max(pb_blur(g)["x"])["x"], rtol=1e-14)
    tm = F.max_pool2d(torch.tensor(x), k, stride=1)
    ft = (filt, filt)
    np.testing.assert_allclose(y, _torch_blur(tm, ft, stride, mode, _aa_pads(ft)).numpy(), rtol=1e-12)


def test_degenerate_inputs_raise_no_warning(rng):
    with np.errstate(all="raise"):
        for mode in ("reflect", "replicate"):
            c = np.full((1, 2, 7, 6), -3.5)
            np.testing.assert_allclose(blur_pool2d(c, 5, 2, mode), np.full((1, 2, 4, 3), -3.5), rtol=1e-15)
            np.testing.assert_allclose(max_blur_pool2d(c, 2, 4, 2, mode), np.full((1, 2, 3, 3), -3.5))
        z = np.zeros((1, 2, 6, 6))
        assert (blur_pool2d(z, 3, 2, "constant") == 0).all()
        big = (rng.choice([-1e4, 1e4], size=(2, 3, 8, 8))).astype(np.float32)
        y, pullback = vjp("blur_pool2d", big, filt_size=7)
        ref = _numpy_blur(big.astype(np.float64), (7, 7), 2, "reflect", _aa_pads((7, 7)))
        np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-2)
        assert np.isfinite(pullback(np.ones_like(y))["x"]).all()


def test_nan_and_inf_stay_in_their_windows():
    x = np.zeros((1, 1, 8, 8))
    x[0, 0, 0, 0] = np.nan
    y = blur_pool2d(x, 3, 2, "constant")
    assert np.isnan(y[0, 0, 0, 0]) and np.isfinite(y).sum() == y.size - 1
    x = np.zeros((1, 1, 1, 8))
    x[0, 0, 0, 3], x[0, 0, 0, 4] = np.inf, -np.inf
    with np.errstate(all="raise"):
        y = blur_pool2d(x, (1, 3), (1, 2), "constant")
    np.testing.assert_array_equal(y[0, 0, 0], [0.0, np.inf, np.nan, 0.0])


def test_layouts_dtypes_and_empty_batch(rng):
    x = rng.standard_normal((2, 3, 9, 7))
    for op, kw in (
        (blur_pool, dict(filt_size=4, stride=2)),
        (max_blur_pool, dict(kernel_size=2, filt_size=5)),
    ):
        yl = op(np.moveaxis(x, 1, -1), data_format="channels_last", **kw)
        np.testing.assert_allclose(np.moveaxis(yl, -1, 1), op(x, **kw), rtol=1e-12, atol=1e-15)
        y16, pb = vjp(op.__name__, x.astype(np.float16), **kw)
        assert y16.dtype == np.float16 and pb(np.ones_like(y16))["x"].dtype == np.float16
        np.testing.assert_allclose(
            y16, op(x.astype(np.float16).astype(np.float32), **kw), rtol=2e-3, atol=2e-3
        )
        e, pb = vjp(op.__name__, np.zeros((0, 3, 9, 7)), **kw)
        assert e.shape[0] == 0 and pb(e)["x"].shape == (0, 3, 9, 7)
    np.testing.assert_allclose(blur_pool1d(x[0, :, 0]), blur_pool1d(x[:1, :, 0])[0])


def test_input_and_gradient_are_not_modified(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    x0 = x.copy()
    y, pullback = vjp("max_blur_pool2d", x, pad_mode="replicate")
    g = np.ones_like(y)
    pullback(g)
    np.testing.assert_array_equal(x, x0)
    assert (g == 1).all()


def test_errors():
    x = np.zeros((1, 1, 8, 8))
    with pytest.raises(PoolingConfigError, match="filt_size must be between 1 and 7.*got 8"):
        blur_pool2d(x, 8)
    with pytest.raises(PoolingConfigError, match="filt_size must be >= 1, got 0"):
        blur_pool2d(x, 0)
    with pytest.raises(
        PoolingConfigError, match="pad_mode must be one of 'reflect', 'constant', 'replicate'"
    ):
        blur_pool2d(x, 3, pad_mode="circular")
    with pytest.raises(PoolingConfigError, match="stride must be >= 1"):
        max_blur_pool2d(x, 2, 3, 0)
    with pytest.raises(PoolingConfigError, match="padding must be 'antialiased' \\(or None\\).*got 'kornia'"):
        blur_pool2d(x, 3, padding="kornia")
    with pytest.raises(PoolingConfigError, match="padding=3 on axis 0 is more than half"):
        blur_pool2d(x, 3, padding=3)
    with pytest.raises(PoolingInputError, match="window does not fit"):
        blur_pool2d(np.zeros((1, 1, 2, 2)), 5, padding="valid")
    with pytest.raises(PoolingInputError, match="blur_pool2d expects a 4-D array"):
        blur_pool2d(np.zeros((8, 8)))


@pytest.mark.parametrize(
    "op,kw",
    [
        ("blur_pool2d", dict()),
        ("blur_pool2d", dict(filt_size=5, pad_mode="constant")),
        ("max_blur_pool2d", dict()),
    ],
)
def test_peak_memory_within_three_times_input_plus_output(op, kw):
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    y = vjp(op, x, **kw)[0]
    g = np.ones_like(y)
    io = x.nbytes + y.nbytes
    peak, y = traced_peak(op, x, **kw, grad=g)
    assert peak <= 3 * io, f"{op}: peak {peak / io:.2f} x (input + output)"
