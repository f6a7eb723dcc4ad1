"""Region pooling in torch: torchvision parity, NumPy parity (every gradient), determinism, dtypes, modules."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision.ops as tvo

import poolkit.torch as PT
import poolkit.torch.functional as TF
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp

from cases import mixed_boxes
from torch_helpers import DEVICES

FLT_MAX = float(np.finfo(np.float32).max)


def per_image(b, n):
    return [b[b[:, 0] == i, 1:] for i in range(n)]


def t64(a, grad=False, device="cpu"):
    return torch.tensor(a, dtype=torch.float64, device=device, requires_grad=grad)


def tboxes(boxes, device="cpu", grad=False):
    return [t64(b, grad, device) for b in boxes] if isinstance(boxes, list) else t64(boxes, grad, device)


def run(fn, x, boxes, g, device="cpu", **kw):
    """Output and input gradient of a torch region function (float64)."""
    xt = t64(x, True, device)
    y = fn(xt, tboxes(boxes, device), **kw)
    y.backward(torch.as_tensor(g, device=device))
    return y.detach().cpu().numpy(), xt.grad.cpu().numpy()


# ------------------------------------------------------------------- torchvision parity


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["array", "list"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_roi_pool_matches_torchvision(fmt, ties, device, rng):
    n, c, h, w = 2, 3, 9, 11
    x = rng.integers(-2, 3, (n, c, h, w)).astype(float) if ties else rng.standard_normal((n, c, h, w))
    for scale in (1.0, 0.5):
        b = mixed_boxes(rng, n, 50, h, w, scale)
        boxes = per_image(b, n) if fmt == "list" else b
        g = rng.standard_normal((len(b), c, 3, 4))
        kw = dict(output_size=(3, 4), spatial_scale=scale)
        y, gx = run(TF.roi_pool, x, boxes, g, device, **kw)
        ty, tg = run(tvo.roi_pool, x, boxes, g, **kw)
        np.testing.assert_array_equal(y, ty)  # bitwise: a maximum
        np.testing.assert_allclose(gx, tg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_roi_align_matches_torchvision(aligned, sampling_ratio, rng):
    n, c, h, w = 2, 3, 8, 10
    x = rng.standard_normal((n, c, h, w))
    for scale in (1.0, 0.5):
        b = mixed_boxes(rng, n, 40, h, w, scale)
        if aligned and sampling_ratio <= 0:  # torchvision's CPU kernel raises on a negative grid product
            gw = np.ceil((b[:, 3] - b[:, 1]) * scale / 2)
            gh = np.ceil((b[:, 4] - b[:, 2]) * scale / 3)
            b = b[gw * gh >= 0]
        boxes = per_image(b, n) if sampling_ratio % 2 else b
        kw = dict(output_size=(3, 2), spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
        g = rng.standard_normal((len(b), c, 3, 2))
        y, gx = run(TF.roi_align, x, boxes, g, **kw)
        ty, tg = run(tvo.roi_align, x, boxes, g, **kw)
        np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gx, tg, rtol=1e-12, atol=1e-12)


def test_roi_align_far_larger_boxes_than_the_map_match_torchvision(rng):
    # Adaptive grids of thousands of points per bin: only the candidates near each row are evaluated.
    b = np.array(
        [[0, -1500.3, 1.2, 2100.7, 4.9], [0, 0.7, -2300.1, 5.5, 1700.2], [0, -31.0, -29.0, 40.0, 37.0]]
    )
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 2e-5)]:
        x = torch.randn(1, 2, 6, 7, dtype=dtype, generator=torch.Generator().manual_seed(0))
        for aligned in (False, True):
            bt = torch.tensor(b, dtype=dtype)
            torch.testing.assert_close(
                TF.roi_align(x, bt, (2, 1), aligned=aligned),
                tvo.roi_align(x, bt, (2, 1), aligned=aligned),
                rtol=tol,
                atol=tol,
            )


def test_ps_roi_pool_matches_torchvision(rng):
    n, h, w = 2, 9, 8
    for out in [(3, 2), (1, 1), (2, 4)]:
        x = rng.standard_normal((n, 2 * out[0] * out[1], h, w))
        b = mixed_boxes(rng, n, 50, h, w, 0.5)
        y = TF.ps_roi_pool(t64(x), t64(b), out, spatial_scale=0.5).numpy()
        ty = tvo.ps_roi_pool(t64(x), t64(b), out, spatial_scale=0.5).numpy()
        np.testing.assert_allclose(y, ty, rtol=1e-13, atol=1e-14)  # sums formed by matrix products
    # Backward: torchvision's clips bins to [0, H] (its forward to [0, H - 1]); they agree away from the border.
    x = rng.standard_normal((n, 12, h, w))
    b = mixed_boxes(rng, n, 80, h, w)
    q = np.trunc(b[:, 1:] + np.copysign(0.5, b[:, 1:]))
    ends = np.maximum(q[:, 2:], q[:, :2] + 1)
    b = b[(ends[:, 0] <= w - 1) & (ends[:, 1] <= h - 1)]
    g = rng.standard_normal((len(b), 2, 3, 2))
    y, gx = run(TF.ps_roi_pool, x, b, g, output_size=(3, 2))
    ty, tg = run(tvo.ps_roi_pool, x, b, g, output_size=(3, 2))
    np.testing.assert_allclose(y, ty, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(gx, tg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2, 3])
def test_ps_roi_align_matches_torchvision(sampling_ratio, rng):
    x = rng.standard_normal((2, 12, 8, 9))
    b = mixed_boxes(rng, 2, 50, 8, 9, 0.5)
    kw = dict(output_size=(2, 3), spatial_scale=0.5, sampling_ratio=sampling_ratio)
    g = rng.standard_normal((len(b), 2, 2, 3))
    y, gx = run(TF.ps_roi_align, x, b, g, **kw)
    ty, tg = run(tvo.ps_roi_align, x, b, g, **kw)
    nan = np.isnan(ty)  # torchvision: 0 / 0 for a zero-size box with the adaptive grid; here 0 (documented)
    assert nan.any() == (sampling_ratio <= 0)
    np.testing.assert_array_equal(y[nan], 0)
    np.testing.assert_allclose(y[~nan], ty[~nan], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, tg, rtol=1e-12, atol=1e-12)


def pyramid_and_boxes(rng, levels, n=2, c=3):
    feats = [rng.standard_normal((n, c, -(-64 // 2**i), -(-63 // 2**i))) for i in range(levels)]
    boxes = []
    for _ in range(n):
        xy = rng.uniform(-0.1, 1.0, (25, 2)) * [250, 256]
        wh = rng.uniform(0, 1, (25, 2)) * rng.choice([0.05, 0.3, 1.0], (25, 1)) * [250, 256]
        bb = np.concatenate([xy, xy + wh], axis=1)
        bb[0, 2] = bb[0, 0] - 9  # negative area: no level
        bb[1, 3] = bb[1, 1]  # zero area: the lowest level
        bb[2, 2:] = bb[2, :2] - 30  # reversed both: positive area
        boxes.append(bb)
    return feats, boxes, [(200, 190), (256, 250)][:n]


@pytest.mark.parametrize("levels", [1, 2, 4])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_multiscale_matches_torchvision_module(levels, sampling_ratio, rng):
    feats, boxes, sizes = pyramid_and_boxes(rng, levels)
    names = [f"p{i}" for i in range(levels)]
    g = rng.standard_normal((50, 3, 3, 2))
    outs = []
    for module in (
        PT.MultiScaleRoIAlign(names, (3, 2), sampling_ratio),
        __import__("torchvision").ops.MultiScaleRoIAlign(names, (3, 2), sampling_ratio),
    ):
        ft = [t64(f, True) for f in feats]
        y = module(OrderedDict(zip(names, ft)), [t64(b) for b in boxes], sizes)
        y.backward(torch.tensor(g))
        outs.append((y.detach().numpy(), [f.grad.numpy() for f in ft]))
    (y, grads), (ty, tgrads) = outs
    np.testing.assert_allclose(y, ty, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, tgrads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- NumPy parity (every gradient)

CASES = [
    ("roi_pool", dict(output_size=(2, 3), spatial_scale=0.5)),
    ("roi_align", dict(output_size=(3, 2), sampling_ratio=-1, aligned=False)),
    ("roi_align", dict(output_size=(2, 2), sampling_ratio=2, aligned=True, spatial_scale=0.5)),
    ("ps_roi_pool", dict(output_size=(2, 3))),
    ("ps_roi_align", dict(output_size=(3, 2), sampling_ratio=0)),
    ("precise_roi_pool", dict(output_size=(2, 3), spatial_scale=0.75)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("op,kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_numpy_forward_and_every_gradient(op, kw, layout, device, rng):
    n, c, h, w = 2, 12, 7, 9
    x = rng.standard_normal((n, c, h, w)) + np.arange(h * w).reshape(h, w) * 1e-3
    b = mixed_boxes(rng, n, 30, h, w)
    if layout == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    for boxes in (b, per_image(b, n)):
        y, pullback = vjp(op, x, boxes, data_format=layout, **kw)
        g = rng.standard_normal(y.shape)
        ref = pullback(g)
        xt, bt = t64(x, True, device), tboxes(boxes, device, grad=op == "precise_roi_pool")
        yt = getattr(TF, f"{op}2d")(xt, bt, data_format=layout, **kw)
        yt.backward(torch.as_tensor(g, device=device))
        np.testing.assert_allclose(yt.detach().cpu().numpy(), y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(xt.grad.cpu().numpy(), ref["x"], rtol=1e-10, atol=1e-12)
        if op == "precise_roi_pool":
            got = [t.grad.cpu().numpy() for t in bt] if isinstance(bt, list) else bt.grad.cpu().numpy()
            want = ref["boxes"]
            for a, e in zip(
                got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]
            ):
                np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-10)


def test_precise_box_gradient_at_kinks_and_degenerate_boxes(rng):
    # Edges on pixel coordinates (the tent's kinks), bins straddling 0 and the map's edge, degenerate boxes.
    x = rng.standard_normal((1, 2, 5, 6))
    b = np.array(
        [
            [0, 0.0, 0.0, 5.0, 4.0],
            [0, -1.0, -2.0, 2.0, 1.0],
            [0, 1.0, 1.0, 1.0, 3.0],
            [0, 3.0, 2.0, 2.0, 4.0],
            [0, 4.0, 3.0, 7.0, 6.0],
            [0, 2.5, 0.5, 3.5, 3.5],
        ]
    )
    y, pullback = vjp("precise_roi_pool", x, b, output_size=(3, 2))
    g = rng.standard_normal(y.shape)
    ref = pullback(g)
    bt = t64(b, True)
    xt = t64(x, True)
    TF.precise_roi_pool(xt, bt, (3, 2)).backward(torch.tensor(g))
    np.testing.assert_allclose(bt.grad.numpy(), ref["boxes"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(bt.grad.numpy()[2:4], 0)  # degenerate: no gradient
    assert np.abs(bt.grad.numpy()[:, 0]).max() == 0  # the batch index column


def test_non_finite_inputs_follow_the_reference(rng):
    x = rng.standard_normal((2, 2, 6, 7))
    x[0, 0, 0, 0] = np.inf
    x[0, 1, 3, 3] = -np.inf
    x[1, 0, 2, 5] = np.nan
    x[1, 1, 4, 1], x[1, 1, 4, 2] = np.inf, -np.inf
    b = mixed_boxes(rng, 2, 30, 6, 7)
    b[0] = [0, 5.0, 4.5, 6.0, 5.5]  # near the -inf at (3, 3), which it gives weight 0: not read
    seen = np.zeros(2, bool)
    for op, kw in [
        ("roi_align", dict(output_size=2)),
        ("roi_align", dict(output_size=(2, 3), sampling_ratio=2, aligned=True)),
        ("precise_roi_pool", dict(output_size=(2, 2))),
        ("roi_pool", dict(output_size=(2, 2))),
    ]:
        with np.errstate(invalid="ignore"):  # the reference's sums over NaN
            y, pullback = vjp(op, x, b, **kw)
            g = rng.standard_normal(y.shape)
            ref = pullback(g)
        xt, bt = t64(x, True), t64(b, op == "precise_roi_pool")
        yt = getattr(TF, op)(xt, bt, **kw)
        yt.backward(torch.tensor(g))
        assert np.isfinite(y[0]).all()
        seen |= [np.isnan(y).any(), np.isinf(y).any()]
        yv = yt.detach().numpy()
        np.testing.assert_array_equal(np.isnan(yv), np.isnan(y))  # NaN and +-inf bins agree exactly
        np.testing.assert_array_equal(yv[np.isinf(y)], y[np.isinf(y)])
        np.testing.assert_allclose(yv[np.isfinite(y)], y[np.isfinite(y)], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), ref["x"], rtol=1e-10, atol=1e-12)
        if op == "precise_roi_pool":
            np.testing.assert_array_equal(np.isnan(bt.grad.numpy()), np.isnan(ref["boxes"]))
            ok = ~np.isnan(ref["boxes"])
            np.testing.assert_allclose(bt.grad.numpy()[ok], ref["boxes"][ok], rtol=1e-10, atol=1e-12)
    assert seen.all()  # NaN bins and infinite bins both occurred
    # roi_pool's -FLT_MAX rule (float64 too) and empty bins.
    z = np.array([[[[np.nan, 1.0, -np.inf], [2.0, np.nan, -FLT_MAX]]]])
    bz = np.array([[0, 0.0, 0.0, 2.0, 1.0], [0, 5.0, 5.0, 7.0, 7.0]])
    y = TF.roi_pool(t64(z), t64(bz), (1, 3)).numpy()
    np.testing.assert_array_equal(y[0, 0, 0], [2.0, 1.0, -FLT_MAX])
    np.testing.assert_array_equal(y[1], 0)


def test_multiscale_matches_numpy_and_exports(rng):
    feats, boxes, sizes = pyramid_and_boxes(rng, 3, n=2, c=2)
    kw = dict(output_size=(2, 2), sampling_ratio=-1, canonical_scale=100, canonical_level=3)
    y, pullback = vjp("multiscale_roi_align", feats, boxes, sizes, **kw)
    g = rng.standard_normal(y.shape)
    ref = pullback(g)["features"]
    ft = [t64(f, True) for f in feats]
    yt = TF.multiscale_roi_align2d(ft, [t64(b) for b in boxes], sizes, **kw)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-12, atol=1e-12)
    assert sum(np.abs(e).sum() > 0 for e in ref) >= 2  # boxes on several levels
    for a, e in zip(ft, ref):
        np.testing.assert_allclose(a.grad.numpy(), e, rtol=1e-10, atol=1e-12)
    # channels_last, and a dict of maps.
    cl = [np.moveaxis(f, 1, -1).copy() for f in feats]
    yl = TF.multiscale_roi_align(
        {"a": t64(cl[0]), "b": t64(cl[1]), "c": t64(cl[2])}, boxes, sizes, data_format="channels_last", **kw
    )
    np.testing.assert_allclose(np.moveaxis(yl.numpy(), -1, 1), y, rtol=1e-12, atol=1e-12)
    # The registry's export tests cannot pass a list of maps: export here (ONNX goes through torch.export).
    import onnxruntime as ort

    small = [torch.as_tensor(f[:, :, :12, :12], dtype=torch.float32) for f in feats[:2]]
    bx = [torch.tensor(b[:6], dtype=torch.float32) for b in boxes]

    class M(torch.nn.Module):
        def forward(self, f0, f1, b0, b1):
            return TF.multiscale_roi_align([f0, f1], [b0, b1], [(48, 48), (48, 40)], 2, canonical_scale=24)

    args = (*small, *bx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = torch.onnx.export(M(), args, dynamo=True, verbose=False).model_proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), args)}
    np.testing.assert_allclose(session.run(None, feeds)[0], M()(*args).numpy(), rtol=1e-5, atol=1e-5)


def test_gradcheck_and_double_backward():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, generator=g) + torch.arange(20.0).reshape(4, 5) * 1e-2
    x.requires_grad_(True)
    b = torch.tensor([[0, 0.3, 0.6, 4.1, 3.9], [0, -1.4, 1.2, 2.3, 5.6]], dtype=torch.float64)
    for fn, kw in [
        (TF.roi_pool, {}),
        (TF.roi_align, dict(sampling_ratio=2, aligned=True)),
        (TF.ps_roi_align, dict(sampling_ratio=-1)),
        (TF.ps_roi_pool, {}),
        (TF.precise_roi_pool, {}),
    ]:
        f = lambda v, fn=fn, kw=kw: fn(v, b, (2, 2), **kw)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(
            f, (x,), fast_mode=True
        )  # roi_pool: the winners' sum is differentiable
    bb = b[:, 1:].clone().requires_grad_(True)  # the coordinates (the batch index is not differentiable)
    f = lambda v, w: TF.precise_roi_pool(v, torch.cat([b[:, :1], w], dim=1), (2, 3))  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, bb), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, bb), fast_mode=True)


# ------------------------------------------------------------------- determinism, dtypes, edge cases


def test_deterministic_algorithms_mode_and_bitwise_repeatability(rng):
    x0 = torch.tensor(rng.standard_normal((2, 8, 9, 10)), dtype=torch.float32)
    b = torch.tensor(mixed_boxes(rng, 2, 40, 9, 10), dtype=torch.float32)
    feats = [x0, x0[:, :, ::2, ::2].contiguous()]
    calls = [
        lambda v: TF.roi_pool(v, b, 2),
        lambda v: TF.roi_align(v, b, (2, 3), sampling_ratio=-1),
        lambda v: TF.ps_roi_pool(v, b, 2),
        lambda v: TF.ps_roi_align(v, b, (2, 2)),
        lambda v: TF.precise_roi_pool(v, b, 2),
        lambda v: TF.multiscale_roi_align([v, v[:, :, ::2, ::2]], per_image(b.numpy(), 2), [(36, 40)] * 2, 2),
    ]
    del feats
    torch.use_deterministic_algorithms(True)
    try:
        for call in calls:
            grads = []
            for _ in range(2):
                xv = x0.clone().requires_grad_(True)
                call(xv).square().sum().backward()
                grads.append(xv.grad)
            assert torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align", "precise_roi_pool"])
def test_low_precision_within_tolerance_of_float32(op, dtype, rng):
    # Computed in float32 from the rounded input: the error is the input's and the output's rounding.
    x = torch.tensor(rng.standard_normal((2, 4, 8, 9)), dtype=torch.float32)
    b = torch.tensor(mixed_boxes(rng, 2, 20, 8, 9), dtype=torch.float32)
    fn = getattr(TF, op)
    y32 = fn(x, b, 2)
    xl = x.to(dtype).requires_grad_(True)
    y = fn(xl, b, 2)
    assert y.dtype == dtype
    tol = 3e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(y.float(), y32, rtol=tol, atol=tol)
    y.float().sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()


def test_unusable_boxes_read_nothing():
    # Value checks would need a device sync: bad boxes output 0 instead of raising (the NumPy reference raises).
    x = torch.randn(2, 4, 5, 5)
    b = torch.tensor(
        [
            [2.0, 0, 0, 3, 3],
            [0.5, 0, 0, 3, 3],
            [-1.0, 0, 0, 3, 3],
            [0, float("nan"), 0, 3, 3],
            [0, 0, 0, 3e9, 3],
        ]
    )
    for op in ("roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align", "precise_roi_pool"):
        bad = b[:4] if op == "precise_roi_pool" else b  # precise pooling has no +-2**31 limit
        assert getattr(TF, op)(x, bad, 2).eq(0).all(), op


def test_empty_boxes_and_list_formats(rng):
    x = t64(rng.standard_normal((3, 4, 6, 6)), True)
    for op in ("roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align", "precise_roi_pool"):
        fn = getattr(TF, op)
        y = fn(x, torch.zeros((0, 5), dtype=torch.float64), (2, 2))
        assert y.shape[0] == 0
        assert fn(x, [], 2).shape[0] == 0
        b = mixed_boxes(rng, 3, 12, 6, 6)
        b = b[np.argsort(b[:, 0], kind="stable")]
        torch.testing.assert_close(fn(x, tboxes(per_image(b, 3)), 2), fn(x, t64(b), 2))
        assert (
            fn(x, [t64(b[b[:, 0] == 0, 1:])], 2).shape[0] == (b[:, 0] == 0).sum()
        )  # fewer lists than images


X = torch.zeros(2, 6, 5, 5)
B = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]])


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: TF.roi_align(X, torch.zeros(3, 4), 2), PoolingInputError, r"\(K, 5\) array"),
        (
            lambda: TF.roi_align(X, [torch.zeros(2, 5)], 2),
            PoolingInputError,
            r"boxes\[0\] must have shape \(L, 4\)",
        ),
        (lambda: TF.roi_pool(X, [torch.zeros(1, 4)] * 3, 2), PoolingInputError, "list of 3 per-image arrays"),
        (lambda: TF.roi_align(X, B, 0), PoolingConfigError, "output_size must be >= 1"),
        (
            lambda: TF.roi_align(X, B, 2, sampling_ratio=1.5),
            PoolingConfigError,
            "sampling_ratio must be an integer",
        ),
        (lambda: TF.roi_align(X, B, 2, spatial_scale=0.0), PoolingConfigError, "spatial_scale must be > 0"),
        (lambda: TF.roi_align(X, B, 2, aligned=1), PoolingConfigError, "aligned must be True or False"),
        (lambda: TF.roi_align(X[0], B, 2), PoolingInputError, r"expects a 4-D tensor shaped \(N, C, H, W\)"),
        (lambda: TF.roi_pool(X.long(), B, 2), PoolingInputError, "floating-point"),
        (lambda: TF.roi_pool(torch.zeros(1, 1, 0, 3), B, 2), PoolingInputError, "H, W >= 1"),
        (lambda: TF.ps_roi_pool(X, B, 2), PoolingInputError, r"C=6 must be a multiple of oh\*ow = 4"),
        (lambda: TF.multiscale_roi_align([], [B[:, 1:]], [(8, 8)], 2), PoolingInputError, "non-empty list"),
        (
            lambda: TF.multiscale_roi_align([X, X[:, :2]], [B[:, 1:]] * 2, [(8, 8)] * 2, 2),
            PoolingInputError,
            r"features\[1\] has \(2, 2\)",
        ),
        (
            lambda: TF.multiscale_roi_align([X], [B[:, 1:]], [(8, 8)], 2),
            PoolingInputError,
            "one .height, width.",
        ),
        (
            lambda: TF.precise_roi_pool(X, B, (2, 2, 2)),
            PoolingConfigError,
            "output_size must be an int or a sequence",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------- modules


def test_modules_match_the_functionals_and_torchvision(rng):
    x = t64(rng.standard_normal((2, 8, 9, 9)))
    b = t64(mixed_boxes(rng, 2, 15, 9, 9, 0.5))
    assert torch.equal(PT.RoIPool(3, 0.5)(x, b), tvo.RoIPool(3, 0.5)(x, b))
    torch.testing.assert_close(PT.RoIAlign(3, 0.5, 2, True)(x, b), tvo.RoIAlign(3, 0.5, 2, True)(x, b))
    torch.testing.assert_close(PT.PSRoIAlign(2, 0.5, 2)(x, b), tvo.PSRoIAlign(2, 0.5, 2)(x, b))
    torch.testing.assert_close(PT.PSRoIPool(2, 0.5)(x, b), tvo.PSRoIPool(2, 0.5)(x, b))
    torch.testing.assert_close(PT.PreciseRoIPool((2, 3), 0.5)(x, b), TF.precise_roi_pool(x, b, (2, 3), 0.5))
    m = PT.RoIAlign((2, 3), 0.25, sampling_ratio=2, aligned=True, data_format="channels_last")
    assert "sampling_ratio=2" in repr(m)
    torch.testing.assert_close(
        m(x.permute(0, 2, 3, 1), b).permute(0, 3, 1, 2), TF.roi_align(x, b, (2, 3), 0.25, 2, True)
    )
    ms = PT.MultiScaleRoIAlign(None, 2)
    assert not list(ms.parameters()) and ms.state_dict() == {}
    ms.load_state_dict(PT.MultiScaleRoIAlign(None, 2).state_dict())


def test_module_construction_errors():
    with pytest.raises(PoolingConfigError, match="output_size must be >= 1"):
        PT.RoIAlign(0)
    with pytest.raises(PoolingConfigError, match="spatial_scale must be > 0"):
        PT.RoIPool(2, -1.0)
    with pytest.raises(PoolingConfigError, match="sampling_ratio must be an integer"):
        PT.PSRoIAlign(2, 1.0, 0.5)
    with pytest.raises(PoolingConfigError, match="aligned must be True or False"):
        PT.RoIAlign(2, aligned="yes")
    with pytest.raises(PoolingConfigError, match="data_format"):
        PT.PreciseRoIPool(2, data_format="NHWC")
    with pytest.raises(PoolingConfigError, match="featmap_names must be a non-empty list"):
        PT.MultiScaleRoIAlign("p2", 2)
    with pytest.raises(PoolingConfigError, match="canonical_scale must be > 0"):
        PT.MultiScaleRoIAlign(["p2"], 2, canonical_scale=0)
    with pytest.raises(PoolingInputError, match="none of featmap_names"):
        PT.MultiScaleRoIAlign(["p9"], 2)({"p2": X}, [B[:, 1:]] * 2, [(8, 8)] * 2)
