"""Structured and set pooling in torch: NumPy parity (every gradient), torch's MHA, determinism, dtypes, modules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import poolkit.torch as PT
import poolkit.torch.functional as TF
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp

from cases import RESEARCH_CASES, Case
from torch_helpers import DEVICES


def t64(a, grad=False, device="cpu"):
    return torch.tensor(a, dtype=torch.float64, device=device, requires_grad=grad)


def channels_last(a):
    return np.moveaxis(a, 1, -1).copy()


def check(op, arrays, settings, rng, device="cpu", rtol=1e-10, atol=1e-12, grad_names=None):
    """torch vs NumPy: forward and the gradient of every floating array (positional ``arrays``)."""
    names = list(arrays)
    y, pullback = vjp(op, *arrays.values(), **settings)
    g = rng.standard_normal(np.shape(y))
    ref = pullback(g)
    targs = [
        t64(a, True, device)
        if isinstance(a, np.ndarray) and a.dtype.kind == "f"
        else (torch.tensor(a, device=device) if isinstance(a, np.ndarray) else a)
        for a in arrays.values()
    ]
    tset = {k: t64(v, True, device) if isinstance(v, np.ndarray) else v for k, v in settings.items()}
    yt = getattr(TF, op)(*targs, **tset)
    np.testing.assert_allclose(yt.detach().cpu().numpy(), y, rtol=rtol, atol=atol)
    yt.backward(torch.as_tensor(g, device=device))
    leaves = dict(zip(names, targs)) | tset
    for name in grad_names or ref:
        got = leaves[name].grad
        got = np.zeros(np.shape(ref[name])) if got is None else got.cpu().numpy()
        np.testing.assert_allclose(got, ref[name], rtol=rtol, atol=atol, err_msg=f"{op}: {name}")
    return yt


# ------------------------------------------------------------------- masked pooling


@pytest.mark.parametrize("mode", ["avg", "sum", "max"])
@pytest.mark.parametrize("c,layout", RESEARCH_CASES)
def test_masked_pool_research_cases_match_numpy(c: Case, layout, mode, rng):
    x = c.input(rng)
    m1 = rng.uniform(0.0, 1.0, (x.shape[0], 1, *x.shape[2:]))
    m1[m1 < 0.3] = 0  # some positions (and windows) unused
    mc = (rng.random(x.shape) > 0.4).astype(float)
    if layout == "channels_last":
        x, m1, mc = channels_last(x), channels_last(m1), channels_last(mc)
    kw = c.window() | dict(mode=mode, data_format=layout)
    for mask in (m1, mc):
        check(f"masked_pool{c.nd}d", {"x": x, "mask": mask}, kw, rng)
    check(f"masked_pool{c.nd}d", {"x": x, "mask": m1}, dict(mode=mode, data_format=layout), rng)  # global


def test_masked_pool_empty_windows_and_bool_mask(rng):
    x = t64(np.ones((1, 2, 4, 4)), True)
    m = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    m[..., :2, :2] = True
    for mode in ("avg", "sum", "max"):
        y = TF.masked_pool2d(x, m, mode, kernel_size=2)
        assert y[0, 0, 0, 0] == (4.0 if mode == "sum" else 1.0)
        assert (y[..., 1, :] == 0).all() and (y[..., :, 1] == 0).all()
        (g,) = torch.autograd.grad(y.sum(), x)
        assert g[..., 2:, :].eq(0).all()  # no gradient from empty windows


# ------------------------------------------------------------------- pyramids


@pytest.mark.parametrize(
    "shape,layout",
    [
        ((2, 3, 7, 5), "channels_first"),
        ((2, 3, 6, 9), "channels_last"),
        ((2, 2, 11), "channels_first"),
        ((1, 2, 5, 6, 4), "channels_first"),
    ],
    ids=["2d", "2d-channels-last", "1d", "3d"],
)
def test_pyramids_match_numpy(shape, layout, rng):
    x = rng.standard_normal(shape) + np.arange(math.prod(shape[2:])).reshape(shape[2:]) * 1e-3  # no ties
    if layout == "channels_last":
        x = channels_last(x)
    nd = len(shape) - 2
    kw = dict(data_format=layout)
    for mode in ("max", "avg"):
        for bins in ("adaptive", "paper"):
            check(
                f"spatial_pyramid_pool{nd}d", {"x": x}, kw | dict(levels=(1, 2, 3), mode=mode, bins=bins), rng
            )
    check(f"spp{nd}d", {"x": x}, kw | dict(kernel_sizes=(3, 5)), rng)
    check(f"sppf{nd}d", {"x": x}, kw | dict(kernel_size=3, repeats=3), rng)
    check("spatial_pyramid_pool", {"x": x}, kw, rng)  # rank from the input


def test_sppf_equals_spp_exactly_with_ties(rng):
    for shape in [(2, 3, 11, 9), (1, 2, 8, 9, 7)]:
        x = torch.tensor(rng.integers(-2, 3, size=shape), dtype=torch.float32)
        assert torch.equal(TF.sppf(x, 5, 3), TF.spp(x, (5, 9, 13)))
    x = torch.randn(2, 4, 12, 10)
    y1 = F.max_pool2d(x, 5, 1, 2)
    y2 = F.max_pool2d(y1, 5, 1, 2)
    assert torch.equal(TF.sppf2d(x), torch.cat([x, y1, y2, F.max_pool2d(y2, 5, 1, 2)], 1))  # YOLOv5's module


# ------------------------------------------------------------------- attention pooling


def attention_args(rng, c, spatial, e, e_out, seeds=None, biases=(), pos=False):
    s = math.prod(spatial)
    a = {
        "x": rng.standard_normal((2, c, *spatial)),
        "query": None if seeds is None else rng.standard_normal((seeds, c)),
        "wq": rng.standard_normal((e, c)) / math.sqrt(c),
        "wk": rng.standard_normal((e, c)) / math.sqrt(c),
        "wv": rng.standard_normal((e, c)) / math.sqrt(c),
        "wo": rng.standard_normal((e_out, e)) / math.sqrt(e),
    }
    opt = {b: rng.standard_normal(e_out if b == "bo" else e) * 0.5 for b in biases}
    if pos:
        opt["pos_embed"] = rng.standard_normal((s if seeds else s + 1, c)) * 0.5
    return a, opt


ATTENTION = [
    pytest.param((7,), 1, None, (), False, "channels_first", id="1d-clip-plain"),
    pytest.param((3, 4), 2, None, ("bq", "bk", "bv", "bo"), True, "channels_last", id="2d-clip-bias-pos-cl"),
    pytest.param((3, 4), 4, 3, ("bk", "bo"), True, "channels_first", id="2d-pma-bias-pos"),
    pytest.param((2, 3, 2), 2, 2, (), False, "channels_last", id="3d-pma-cl"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spatial,heads,seeds,biases,pos,layout", ATTENTION)
def test_attention_pool_matches_numpy(spatial, heads, seeds, biases, pos, layout, device, rng):
    a, opt = attention_args(rng, 4, spatial, 8, 6, seeds, biases, pos)
    if layout == "channels_last":
        a["x"] = channels_last(a["x"])
    nd = len(spatial)
    check(f"attention_pool{nd}d", a, dict(num_heads=heads, data_format=layout) | opt, rng, device)
    # Unbatched input (the aliases accept it).
    a["x"] = a["x"][0]
    check(f"attention_pool{nd}d", a, dict(num_heads=heads, data_format=layout) | opt, rng, device)


def test_attention_pool_is_torch_multi_head_attention(rng):
    a, opt = attention_args(rng, 6, (3, 3), 6, 6, None, ("bq", "bk", "bv", "bo"), True)
    t = {k: t64(v) for k, v in (a | opt).items() if v is not None}
    tokens = t["x"].flatten(2).permute(2, 0, 1)
    tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + t["pos_embed"][:, None]
    ref, _ = F.multi_head_attention_forward(
        tokens[:1],
        tokens,
        tokens,
        6,
        3,
        None,
        torch.cat([t["bq"], t["bk"], t["bv"]]),
        None,
        None,
        False,
        0.0,
        t["wo"],
        t["bo"],
        training=False,
        need_weights=False,
        use_separate_proj_weight=True,
        q_proj_weight=t["wq"],
        k_proj_weight=t["wk"],
        v_proj_weight=t["wv"],
    )
    y = TF.attention_pool2d(
        t["x"],
        None,
        t["wq"],
        t["wk"],
        t["wv"],
        t["wo"],
        3,
        bq=t["bq"],
        bk=t["bk"],
        bv=t["bv"],
        bo=t["bo"],
        pos_embed=t["pos_embed"],
    )
    torch.testing.assert_close(y, ref[0], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- segment pooling


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "softmax", "power_mean"])
def test_segment_pool_matches_numpy_with_empty_segments(mode, rng):
    x = rng.uniform(0.1, 2.0, (13, 2, 3)) + np.arange(78).reshape(13, 2, 3) * 1e-3  # no ties
    batch = rng.permutation(np.array([0, 0, 0, 2, 2, 2, 2, 3, 3, 5, 5, 5, 5]))
    extra = {}
    if mode == "softmax":
        extra = {"t": rng.uniform(0.2, 2.0, (2, 3))}
    elif mode == "power_mean":
        extra = {"p": rng.uniform(1.0, 3.0, (2, 3))}
    yt = check("segment_pool", {"x": x, "batch": batch}, dict(num_segments=7, mode=mode) | extra, rng)
    assert not yt[[1, 4, 6]].any()  # empty segments, trailing ones included
    for scalar in ({"t": np.array(0.7)}, {"p": np.array(2.5)}):  # 0-d: a scalar gradient
        if next(iter(scalar)) in extra:
            check("segment_pool", {"x": x, "batch": batch}, dict(num_segments=7, mode=mode) | scalar, rng)


def test_segment_pool_max_ties_nan_and_sync_path():
    x = t64(np.array([[1.0], [3.0], [3.0], [np.nan], [2.0], [np.nan]]), True)
    y = TF.segment_pool(x, torch.tensor([0, 0, 0, 1, 1, 1]), mode="max")  # num_segments from the data
    assert y[0, 0] == 3.0 and torch.isnan(y[1, 0])
    y.backward(torch.ones(2, 1, dtype=torch.float64))
    assert x.grad[:, 0].tolist() == [0, 1, 0, 0, 0, 1]  # the first maximum; the last NaN
    with pytest.raises(PoolingInputError, match="segment ids must be >= 0"):
        TF.segment_pool(x, torch.tensor([0, -1, 0, 0, 0, 0]))
    # With num_segments given (no sync), ids outside [0, num_segments) are ignored.
    y = TF.segment_pool(torch.ones(4, 2), torch.tensor([0, 5, -1, 1]), 2)
    assert y.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert TF.segment_pool(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 2, "mean").eq(0).all()


# ------------------------------------------------------------------- double backward, determinism, dtypes


def test_double_backward():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.rand(*s, dtype=torch.float64, generator=g)  # noqa: E731
    x, m = (r(1, 2, 4, 5) + 0.5).requires_grad_(True), (r(1, 1, 4, 5) + 0.1).requires_grad_(True)
    assert torch.autograd.gradgradcheck(
        lambda a, b: TF.masked_pool2d(a, b, "avg", 2, 1), (x, m), fast_mode=True
    )
    assert torch.autograd.gradgradcheck(
        lambda a: TF.sppf2d(a, 3, 2), (x + torch.arange(20.0).reshape(4, 5) * 1e-2,), fast_mode=True
    )
    w = [r(4, 2).requires_grad_(True) for _ in range(3)] + [r(3, 4).requires_grad_(True)]
    q = r(3, 2).requires_grad_(True)
    assert torch.autograd.gradgradcheck(
        lambda a, s, wq, wo: TF.attention_pool2d(a, s, wq, w[1], w[2], wo, 2),
        (x, q, w[0], w[3]),
        fast_mode=True,
    )
    items, seg = (r(7, 3) + 0.5).requires_grad_(True), torch.tensor([2, 0, 2, 1, 0, 2, 2])
    t = r(3).requires_grad_(True)
    p = (r(3) + 1.0).requires_grad_(True)
    for fn in (
        lambda a: TF.segment_pool(a, seg, 4, "sum"),
        lambda a: TF.segment_pool(a, seg, 4, "mean") ** 2,
        lambda a: TF.segment_pool(a, seg, 4, "softmax", t=t),
        lambda a: TF.segment_pool(a, seg, 4, "power_mean", p=p),
    ):
        assert torch.autograd.gradgradcheck(fn, (items,), fast_mode=True)
    assert torch.autograd.gradgradcheck(
        lambda a, b: TF.segment_pool(a, seg, 4, "softmax", t=b), (items, t), fast_mode=True
    )
    assert torch.autograd.gradgradcheck(
        lambda a, b: TF.segment_pool(a, seg, 4, "power_mean", p=b), (items, p), fast_mode=True
    )


STRUCTURED_CALLS = [
    ("spatial_pyramid_pool", lambda v: TF.spatial_pyramid_pool2d(v, (1, 2, 3), "avg")),
    ("spatial_pyramid_pool-max-paper", lambda v: TF.spatial_pyramid_pool2d(v, (2, 3), bins="paper")),
    ("spp", lambda v: TF.spp2d(v, (3, 5))),
    ("sppf", lambda v: TF.sppf2d(v, 3)),
    ("masked_pool", lambda v: TF.masked_pool2d(v, (v.detach()[:, :1] > 0).float(), "avg", 3, 2, 1)),
    ("masked_pool-max", lambda v: TF.masked_pool2d(v, (v.detach()[:, :1] > 0).float(), "max")),
    ("attention_pool", lambda v: TF.attention_pool2d(v, None, *[torch.eye(4, dtype=v.dtype)] * 4, 2)),
    ("segment_pool", lambda v: TF.segment_pool(v.flatten(1), torch.tensor([1, 0, 1, 3]), 4, "softmax")),
]


@pytest.mark.parametrize("name,call", STRUCTURED_CALLS, ids=[c[0] for c in STRUCTURED_CALLS])
def test_deterministic_algorithms_mode(name, call):
    x0 = torch.randn(4, 4, 9, 8, generator=torch.Generator().manual_seed(0))
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            xv = x0.clone().requires_grad_(True)
            call(xv).square().sum().backward()
            grads.append(xv.grad)
        assert torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,call", STRUCTURED_CALLS, ids=[c[0] for c in STRUCTURED_CALLS])
def test_low_precision_within_tolerance_of_float32(name, call, dtype):
    # The input's rounding is the error (computed in float32 on the CPU): 2**-8 (bfloat16), 2**-11 (float16).
    x = torch.randn(4, 4, 9, 8, generator=torch.Generator().manual_seed(0))
    xl = x.to(dtype).requires_grad_(True)
    y = call(xl)
    assert y.dtype == dtype
    tol = 3e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(y.float(), call(x), rtol=tol, atol=tol)
    y.float().sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: TF.sppf2d(torch.zeros(1, 1, 8, 8), 4), PoolingConfigError, "kernel_size must be odd"),
        (
            lambda: TF.spp2d(torch.zeros(1, 1, 8, 8), ()),
            PoolingConfigError,
            "kernel_sizes must be a non-empty",
        ),
        (
            lambda: TF.spatial_pyramid_pool2d(torch.zeros(1, 1, 8, 8), (0, 1)),
            PoolingConfigError,
            "levels must be >= 1, got 0",
        ),
        (
            lambda: TF.spatial_pyramid_pool2d(torch.zeros(1, 1, 3, 8), (4,), bins="paper"),
            PoolingInputError,
            "bins='paper' needs at least 4 samples",
        ),
        (
            lambda: TF.masked_pool2d(torch.zeros(1, 2, 4, 4), torch.ones(4, 4)),
            PoolingInputError,
            r"mask must have shape \(1, 2, 4, 4\) \(like x\) or \(1, 1, 4, 4\)",
        ),
        (
            lambda: TF.masked_pool2d(torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 4, 4), "mean"),
            PoolingConfigError,
            "mode must be one of 'avg', 'sum', 'max'",
        ),
        (
            lambda: TF.attention_pool2d(
                torch.zeros(1, 4, 2, 2), None, *[torch.zeros(6, 4)] * 3, torch.zeros(4, 6), 4
            ),
            PoolingConfigError,
            "E = wq.shape\\[0\\] = 6 must be divisible by num_heads=4",
        ),
        (
            lambda: TF.attention_pool2d(torch.zeros(1, 4, 2, 2), torch.zeros(3), *[torch.zeros(4, 4)] * 4, 2),
            PoolingInputError,
            r"query must be None \(CLIP mode\) or Q >= 1 seeds",
        ),
        (
            lambda: TF.attention_pool2d(
                torch.zeros(1, 4, 2, 2), None, *[torch.zeros(4, 4)] * 4, 2, pos_embed=torch.zeros(4, 4)
            ),
            PoolingInputError,
            r"pos_embed must have shape \(5, 4\)",
        ),
        (
            lambda: TF.segment_pool(torch.zeros(4, 2), torch.tensor([0, 1]), 2),
            PoolingInputError,
            "batch must be a 1-D integer array",
        ),
        (
            lambda: TF.segment_pool(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), mode="median"),
            PoolingConfigError,
            "mode must be one of",
        ),
        (
            lambda: TF.segment_pool(
                torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), 1, "power_mean", p=0.0
            ),
            PoolingConfigError,
            "p must be > 0",
        ),
        (
            lambda: TF.segment_pool(
                torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), 1, "softmax", t=torch.ones(3)
            ),
            PoolingInputError,
            r"t must be a scalar or have the feature shape \(2,\)",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------- modules


def test_pooling_modules_match_the_functionals():
    x = torch.randn(2, 3, 9, 8)
    m = (torch.rand(2, 1, 9, 8) > 0.3).float()
    assert torch.equal(PT.SpatialPyramidPool((1, 2))(x), TF.spatial_pyramid_pool(x, (1, 2)))
    assert PT.SpatialPyramidPool()(torch.randn(2, 3, 5, 6, 7)).shape == (2, 3 * (1 + 8 + 64))
    assert torch.equal(PT.SPP((3, 5))(x), TF.spp(x, (3, 5)))
    assert torch.equal(PT.SPPF(3, 2)(x), TF.sppf(x, 3, 2))
    assert torch.equal(PT.MaskedPool(3, 2, 1, mode="max")(x, m), TF.masked_pool(x, m, "max", 3, 2, 1))
    assert torch.equal(PT.MaskedPool()(x, m), TF.masked_pool(x, m))
    assert "kernel_sizes=(3, 5)" in repr(PT.SPP((3, 5)))


def test_attention_pool_module_is_clip_and_trains():
    torch.manual_seed(0)
    m = PT.AttentionPool2d(3, 8, 2, 5)
    names = {n for n, _ in m.named_parameters()}
    assert names == {"positional_embedding", *(f"{p}_proj.{w}" for p in "qkvc" for w in ("weight", "bias"))}
    x = torch.randn(2, 8, 3, 3)
    # CLIP's AttentionPool2d.forward (openai/CLIP model.py) with these parameters.
    t = x.flatten(2).permute(2, 0, 1)
    t = torch.cat([t.mean(0, keepdim=True), t]) + m.positional_embedding[:, None]
    ref, _ = F.multi_head_attention_forward(
        t[:1],
        t,
        t,
        8,
        2,
        None,
        torch.cat([m.q_proj.bias, m.k_proj.bias, m.v_proj.bias]),
        None,
        None,
        False,
        0.0,
        m.c_proj.weight,
        m.c_proj.bias,
        training=False,
        need_weights=False,
        use_separate_proj_weight=True,
        q_proj_weight=m.q_proj.weight,
        k_proj_weight=m.k_proj.weight,
        v_proj_weight=m.v_proj.weight,
    )
    torch.testing.assert_close(m(x), ref[0])
    # Every parameter gets a gradient and one optimizer step changes it and lowers the loss.
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    loss = m(x).square().mean()
    loss.backward()
    opt.step()
    # (A key bias shifts every logit of a head equally: softmax ignores it, its gradient is 0.)
    assert torch.allclose(m.k_proj.bias.grad, torch.zeros(8), atol=1e-6)
    assert all(not torch.equal(before[n], p) for n, p in m.named_parameters() if n != "k_proj.bias")
    assert m(x).square().mean() < loss
    # state_dict round trip (and CLIP's key names).
    other = PT.AttentionPool2d(3, 8, 2, 5)
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other(x), m(x))
    # PMA seeds.
    pma = PT.AttentionPool2d((3, 3), 8, 4, num_queries=2)
    assert pma.query.shape == (2, 8) and pma.positional_embedding.shape == (9, 8)
    assert pma(x).shape == (2, 2, 8)
    pma(x).sum().backward()
    assert pma.query.grad is not None and pma.query.grad.abs().sum() > 0
    assert PT.AttentionPool2d(None, 8, 2)(torch.randn(1, 8, 4, 6)).shape == (1, 8)


def test_segment_pool_module_learns_t_and_p():
    x, seg = torch.rand(10, 3) + 0.5, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 3])
    for mode, name in (("softmax", "t"), ("power_mean", "p")):
        m = PT.SegmentPool(mode, learnable=True, channels=3, **{name: 2.0})
        assert [n for n, _ in m.named_parameters()] == [name]
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        before = getattr(m, name).detach().clone()
        m(x, seg, 4).sum().backward()
        opt.step()
        assert not torch.equal(before, getattr(m, name).detach())
        other = PT.SegmentPool(mode, learnable=True, channels=3)
        other.load_state_dict(m.state_dict())
        torch.testing.assert_close(other(x, seg, 4), m(x, seg, 4))
    assert not list(PT.SegmentPool("max").parameters())
    torch.testing.assert_close(PT.SegmentPool("mean")(x, seg, 4), TF.segment_pool(x, seg, 4, "mean"))


def test_module_construction_errors():
    with pytest.raises(PoolingConfigError, match="levels must be a non-empty sequence"):
        PT.SpatialPyramidPool(())
    with pytest.raises(PoolingConfigError, match="bins must be one of"):
        PT.SpatialPyramidPool(bins="exact")
    with pytest.raises(PoolingConfigError, match="kernel_size must be odd"):
        PT.SPP((3, 4))
    with pytest.raises(PoolingConfigError, match="repeats must be >= 1"):
        PT.SPPF(5, 0)
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=2"):
        PT.MaskedPool(2, padding=2)
    with pytest.raises(PoolingConfigError, match="stride, padding and ceil_mode need a kernel_size"):
        PT.MaskedPool(stride=2)
    with pytest.raises(PoolingConfigError, match="mode must be one of 'avg', 'sum', 'max'"):
        PT.MaskedPool(mode="mean")
    with pytest.raises(PoolingConfigError, match="embed_dim=10 must be divisible by num_heads=4"):
        PT.AttentionPool2d(7, 10, 4)
    with pytest.raises(PoolingConfigError, match="num_queries must be >= 1"):
        PT.AttentionPool2d(7, 8, 4, num_queries=0)
    with pytest.raises(
        PoolingConfigError, match="spacial_dim must be an int, a .height, width. pair or None"
    ):
        PT.AttentionPool2d((7, 7, 7), 8, 4)
    with pytest.raises(PoolingConfigError, match="learnable=True needs mode='softmax'"):
        PT.SegmentPool("mean", learnable=True)
    with pytest.raises(PoolingConfigError, match="p must be > 0"):
        PT.SegmentPool("power_mean", p=-1.0)
    with pytest.raises(PoolingConfigError, match="channels= sets the size of a learned t or p"):
        PT.SegmentPool("softmax", channels=3)
