"""GeM, LSE, SoftPool and LIP in torch: NumPy parity, double backward, stability, memory, modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import poolkit.torch as PT
import poolkit.torch.functional as TF
from poolkit import registry
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp
from poolkit.torch._core import generic_paths
from poolkit.torch.functional import smooth

from cases import RESEARCH_CASES, Case, nonfinite_gem_input, nonfinite_lip_inputs
from torch_helpers import DEVICES

LAYOUTS = ["channels_first", "channels_last"]
OPS = ["gem_pool", "lse_pool", "soft_pool", "lip_pool"]


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _call(op: str, case: Case, rng: np.random.Generator, per_channel: bool):
    """Arrays (in channels-first) and learnable settings for ``op`` on ``case``."""
    c = case.shape[1]
    x = case.input(rng)
    if op == "gem_pool":  # about half the inputs below eps: the clamp's zero gradient is covered
        return (x,), {"p": np.linspace(1.5, 4.0, c) if per_channel else 2.5}
    if op == "lse_pool":
        return (x,), {"r": np.linspace(0.5, 8.0, c) if per_channel else 3.0}
    if op == "lip_pool":
        return (x, rng.standard_normal(case.shape) * 2), {}
    return (x,), {}


def _check_against_numpy(op, arrays, params, kw, rng, device="cpu", rtol=1e-10):
    """Forward and the gradient of every array and learnable setting against ``poolkit.ops.vjp`` (float64)."""
    y, pullback = vjp(op, *arrays, **params, **kw)
    g = rng.standard_normal(y.shape)
    ref = pullback(g)
    ts = [torch.tensor(a, device=device, requires_grad=True) for a in arrays]
    tp = {
        k: torch.tensor(np.asarray(v, np.float64), device=device, requires_grad=True)
        for k, v in params.items()
    }
    yt = getattr(TF, op)(*ts, **tp, **kw)
    np.testing.assert_allclose(yt.detach().cpu().numpy(), y, rtol=1e-12, atol=1e-14)
    yt.backward(torch.tensor(g, device=device))
    for name, t in zip(registry.get(op).arrays, ts):
        np.testing.assert_allclose(t.grad.cpu().numpy(), ref[name], rtol=rtol, atol=1e-12, err_msg=name)
    for name, t in tp.items():
        assert t.grad.shape == np.shape(ref[name])
        np.testing.assert_allclose(t.grad.cpu().numpy(), ref[name], rtol=rtol, atol=1e-12, err_msg=name)


# --------------------------------------------------------------------------- parity with NumPy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [c.values[0] for c in RESEARCH_CASES], ids=[c.id for c in RESEARCH_CASES])
@pytest.mark.parametrize("op", OPS)
def test_research_cases_match_numpy(op, case: Case, layout, device, rng):
    arrays, params = _call(op, case, rng, per_channel=layout == "channels_first")
    arrays = tuple(_layout(a, layout) for a in arrays)
    _check_against_numpy(op, arrays, params, dict(data_format=layout, **case.window()), rng, device)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [c.values[0] for c in RESEARCH_CASES], ids=[c.id for c in RESEARCH_CASES])
@pytest.mark.parametrize("op", ["lse_pool", "soft_pool", "lip_pool"])
def test_window_shifts_match_numpy(op, case: Case, layout, rng):
    """The per-window shifts (taken on accelerators and in compiled graphs), forced on the CPU."""
    arrays, params = _call(op, case, rng, per_channel=layout == "channels_first")
    arrays = tuple(_layout(a, layout) for a in arrays)
    with generic_paths():
        _check_against_numpy(op, arrays, params, dict(data_format=layout, **case.window()), rng)


def _far_below(dtype=torch.float32):
    """A plane whose top-left 2x2 window sits at 0 and every other value 200 below: ``exp(-200)`` is 0."""
    x = torch.full((1, 2, 4, 6), -200.0, dtype=dtype)
    x[:, :, :2, :2] = 0.0
    return x


@pytest.mark.parametrize("op", ["lse_pool", "soft_pool", "lip_pool"])
def test_plane_shifts_are_taken_and_fall_back_when_weights_underflow(op, monkeypatch, rng):
    """CPU calls shift by each plane's maximum unless a window's weights underflow; then by each window's."""
    taken = []
    plane_exp = smooth._plane_exp

    def spy(*args, **kwargs):
        out = plane_exp(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(smooth, "_plane_exp", spy)
    kw = dict(r=1.0) if op == "lse_pool" else {}

    def run(x):
        args = (torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1)), x)
        args = args if op == "lip_pool" else (x,)
        leaves = [a.clone().requires_grad_(True) for a in args]
        y = getattr(TF, op + "2d")(*leaves, 2, **kw)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape))
        return y.detach(), [t.grad for t in leaves]

    for x, plane in [(torch.randn(2, 3, 6, 8, dtype=torch.float64), True), (_far_below(), False)]:
        taken.clear()
        y, grads = run(x)
        assert taken and all(t == plane for t in taken), taken
        with generic_paths():
            y_w, grads_w = run(x)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, y_w, rtol=1e-6, atol=1e-6)
        for g, g_w in zip(grads, grads_w):
            torch.testing.assert_close(g, g_w, rtol=1e-6, atol=1e-6)
    taken.clear()
    with generic_paths():
        run(torch.randn(1, 1, 4, 4))
    assert taken == [False]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (2, 3, 7), (1, 2, 3, 4, 3)], ids=["2d", "1d", "3d"])
def test_global_gem_matches_numpy(shape, layout, rng):
    x = _layout(rng.standard_normal(shape) + 0.3, layout)
    for p in (np.linspace(1.5, 4.0, shape[1]), 2.5):
        for keep in (False, True):
            _check_against_numpy(
                "global_gem_pool", (x,), {"p": p}, dict(keepdims=keep, data_format=layout), rng
            )


def test_unbatched_and_float_parameters(rng):
    x = rng.standard_normal((3, 7, 6))
    for op, kw in [("gem_pool2d", dict(p=2.0)), ("lse_pool2d", dict(r=4.0)), ("soft_pool2d", {})]:
        ref = getattr(__import__("poolkit.ops", fromlist=[op]), op)(x, 3, 2, 1, **kw)
        np.testing.assert_allclose(getattr(TF, op)(torch.tensor(x), 3, 2, 1, **kw).numpy(), ref, rtol=1e-12)
    # arrays are accepted for p and r, as NumPy's operator takes them
    y = TF.gem_pool2d(torch.tensor(x), 2, p=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(y.numpy(), vjp("gem_pool2d", x, kernel_size=2, p=np.array([1.0, 2.0, 3.0]))[0])


# --------------------------------------------------------------------------- second derivatives


GRADGRAD = [
    ("gem_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), ("p",)),
    ("lse_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), ("r",)),
    ("soft_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), ()),
    ("lip_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), ("logits",)),
    ("soft_pool1d", dict(kernel_size=2), ()),
    ("lse_pool3d", dict(kernel_size=2, padding=1), ("r",)),
]


@pytest.mark.parametrize("op,kw,extra", GRADGRAD, ids=[f"{o}-{i}" for i, (o, _, _) in enumerate(GRADGRAD)])
def test_gradgradcheck(op, kw, extra):
    nd = int(op[-2])
    g = torch.Generator().manual_seed(1)
    shape = (1, 2, *[4, 5, 3][:nd])
    x = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    inputs = [x]
    if "logits" in extra:
        inputs.append(torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_())
    if "p" in extra or "r" in extra:
        inputs.append(torch.tensor([2.5, 4.0], dtype=torch.float64, requires_grad=True))
    fn = getattr(TF, op)

    def f(*ts):
        if "logits" in extra:
            return fn(ts[0], ts[1], **kw)
        if extra:
            return fn(ts[0], **{extra[0]: ts[1]}, **kw)
        return fn(ts[0], **kw)

    assert torch.autograd.gradcheck(f, tuple(inputs))
    assert torch.autograd.gradgradcheck(
        f, tuple(inputs), fast_mode=True
    )  # random projections: seconds, not tens


# --------------------------------------------------------------------------- large values, NaN and inf


def test_soft_pool_is_stable_at_1e4_in_float32(rng):
    x = torch.tensor(rng.standard_normal((1, 2, 6, 6)) * 1e4, dtype=torch.float32, requires_grad=True)
    y = TF.soft_pool2d(x, 2)
    y.sum().backward()
    xm = x.detach().clone().requires_grad_(True)
    ym = F.max_pool2d(xm, 2)
    ym.sum().backward()
    torch.testing.assert_close(y, ym, rtol=0, atol=0)  # one-hot softmax at this scale: max pooling
    torch.testing.assert_close(x.grad, xm.grad, rtol=0, atol=0)
    e = torch.exp(x.detach())  # the reference's formulation overflows here
    assert torch.isnan(F.avg_pool2d(x.detach() * e, 2) / F.avg_pool2d(e, 2)).any()


@pytest.mark.parametrize(
    "op,kw",
    [
        ("lse_pool2d", dict(kernel_size=3, stride=1, padding=1, r=np.array([1e3, 1.0]))),
        ("gem_pool2d", dict(kernel_size=2, p=np.array([3.0, 1.5]))),
        ("soft_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ],
)
def test_large_inputs_match_numpy_in_float32(op, kw, rng):
    x = (rng.standard_normal((1, 2, 6, 6)) * 1e4).astype(np.float32)
    y, pullback = vjp(op, x, **kw)
    grads = pullback(np.ones_like(y))
    xt = torch.tensor(x, requires_grad=True)
    name = "r" if "r" in kw else "p"
    tkw = {
        k: torch.tensor(v, dtype=torch.float32, requires_grad=True) if k == name else v for k, v in kw.items()
    }
    yt = getattr(TF, op)(xt, **tkw)
    yt.sum().backward()
    assert torch.isfinite(yt).all() and torch.isfinite(xt.grad).all()
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), grads["x"], rtol=1e-5, atol=1e-6)
    if name in tkw:
        assert torch.isfinite(tkw[name].grad).all()
        np.testing.assert_allclose(tkw[name].grad.numpy(), grads[name], rtol=1e-4, atol=1e-6)


def test_lip_logits_of_1e4_in_float32(rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    logits = np.where(rng.random(x.shape) < 0.5, 1e4, -1e4).astype(np.float32)
    y, pullback = vjp("lip_pool2d", x, logits, kernel_size=2)
    grads = pullback(np.ones_like(y))
    xt, lt = torch.tensor(x, requires_grad=True), torch.tensor(logits, requires_grad=True)
    yt = TF.lip_pool2d(xt, lt, 2)
    yt.sum().backward()
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), grads["x"], rtol=1e-6)
    np.testing.assert_allclose(lt.grad.numpy(), grads["logits"], rtol=1e-6, atol=1e-7)
    w = torch.exp(torch.tensor(logits))  # sebgao/LIP's formulation: inf / inf
    assert torch.isnan(F.avg_pool2d(torch.tensor(x) * w, 2) / F.avg_pool2d(w, 2)).any()


NAN, INF = np.nan, np.inf


def _soft_lse_input() -> np.ndarray:
    x = np.array([[[[INF, 0.0], [1.0, 2.0]], [[-INF, -INF], [-INF, -INF]], [[NAN, 0.0], [1.0, 2.0]]]])
    return np.concatenate([x, np.tile([[1.0, 2.0], [3.0, 4.0]], (1, 3, 1, 1))], axis=-1)


@pytest.mark.parametrize(
    "window", [dict(kernel_size=2), dict(kernel_size=2, stride=1, padding=1)], ids=["tiles", "overlap-pad"]
)
@pytest.mark.parametrize(
    "op,arrays,params",
    [
        ("soft_pool2d", (_soft_lse_input(),), {}),
        ("lse_pool2d", (_soft_lse_input(),), {"r": np.array([1.0, 2.0, 3.0])}),
        ("gem_pool2d", (nonfinite_gem_input(),), {"p": np.array([2.0, 3.0, 4.0])}),
        ("lip_pool2d", nonfinite_lip_inputs(), {}),
    ],
    ids=["soft", "lse", "gem", "lip"],
)
def test_nan_and_inf_follow_the_numpy_rules_exactly(op, arrays, params, window):
    y, pullback = vjp(op, *arrays, **params, **window)
    ref = pullback(np.ones_like(y))
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    yt = getattr(TF, op)(*ts, **tp, **window)
    yt.sum().backward()
    np.testing.assert_array_equal(yt.detach().numpy(), y)  # NaN where NumPy has NaN, inf where it has inf
    for name, t in [*zip(registry.get(op).arrays, ts), *tp.items()]:
        assert torch.isfinite(t.grad).all(), name
        np.testing.assert_allclose(t.grad.numpy(), ref[name], rtol=1e-12, atol=0, err_msg=name)


def test_gem_overflow_and_underflow_pass_no_gradient():
    for value, p, expect in [(1e13, 3.0, np.inf), (-1.0, 10.0, 0.0)]:  # (1e13)^3 overflows, eps^10 underflows
        x = torch.full((1, 1, 2, 2), value, dtype=torch.float32, requires_grad=True)
        pt = torch.tensor(p, requires_grad=True)
        y = TF.gem_pool2d(x, 2, p=pt)
        y.sum().backward()
        assert y.item() == expect and (x.grad == 0).all() and pt.grad == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gem_gradient_at_eps(dtype):
    """The gradient passes at x == eps (the NumPy reference's rule) and stops just below it and for x < 0."""
    eps = 1e-3
    e = torch.tensor(eps, dtype=dtype)
    below = torch.nextafter(e, torch.tensor(0.0, dtype=dtype))
    x = torch.stack([e, below, e * 4, -e]).reshape(1, 1, 4).detach().requires_grad_(True)
    TF.gem_pool1d(x, 2, p=3.0, eps=eps).sum().backward()
    y, pullback = vjp("gem_pool", x.detach().numpy(), kernel_size=2, p=3.0, eps=eps)
    ref = pullback(np.ones_like(y))["x"]
    assert ref[0, 0, 0] > 0 and ref[0, 0, 1] == 0 and ref[0, 0, 3] == 0
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=1e-6)


# --------------------------------------------------------------------------- memory


def _saved_bytes(fn, *inputs) -> tuple[int, torch.Tensor]:
    seen: dict = {}

    def pack(t):
        seen[(t.data_ptr(), tuple(t.shape), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(*inputs)
    return sum(seen.values()), y


@pytest.mark.parametrize("op", ["soft_pool2d", "lse_pool2d", "gem_pool2d", "lip_pool2d"])
def test_backward_saves_inputs_and_output_sized_tensors_only(op):
    x = torch.randn(2, 4, 24, 24, requires_grad=True)
    args = (x, torch.randn(2, 4, 24, 24, requires_grad=True)) if op == "lip_pool2d" else (x,)
    kw = dict(kernel_size=5, stride=1, padding=2)  # 25 taps: a tap loop under autograd would keep 25 maps
    saved, y = _saved_bytes(lambda *a: getattr(TF, op)(*a, **kw), *args)
    inputs = sum(a.numel() * a.element_size() for a in args)
    out = y.numel() * y.element_size()
    assert saved <= inputs + 3 * out + 64, f"saved {saved / out:.1f} outputs"


# --------------------------------------------------------------------------- dtypes, determinism, errors


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", OPS)
def test_low_precision_within_tolerance_of_float32(op, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, 11, generator=g)
    extra = (torch.randn(2, 3, 12, 11, generator=g),) if op == "lip_pool" else ()
    kw = dict(kernel_size=3, stride=2, padding=1)
    fn = getattr(TF, op)
    y32 = fn(x, *extra, **kw)
    xl = x.to(dtype).requires_grad_(True)
    y = fn(xl, *(e.to(dtype) for e in extra), **kw)
    assert y.dtype == dtype
    # the inputs' own rounding (bfloat16: 2^-8 relative) dominates: the arithmetic is float32
    tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(y.float(), y32, rtol=tol, atol=tol)
    y.sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()


def test_empty_batch():
    x = torch.zeros(0, 3, 6, 6, requires_grad=True)
    p = torch.ones(3, requires_grad=True)
    outs = [
        TF.gem_pool2d(x, 2, p=p),
        TF.lse_pool2d(x, 3, 2, 1, r=p),
        TF.soft_pool2d(x, 2),
        TF.lip_pool2d(x, x, 2),
    ]
    assert [tuple(o.shape) for o in outs] == [(0, 3, 3, 3)] * 4 and TF.global_gem_pool(x).shape == (0, 3)
    gx, gp = torch.autograd.grad(sum(o.sum() for o in outs), (x, p))
    assert gx.shape == x.shape and torch.equal(gp, torch.zeros(3))


def test_deterministic_algorithms_mode():
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(2, 3, 9, 9, requires_grad=True)
        logits = torch.randn(2, 3, 9, 9, requires_grad=True)
        p = torch.tensor(3.0, requires_grad=True)

        def grads():
            outs = [
                TF.gem_pool2d(x, 3, 2, 1, p=p),
                TF.global_gem_pool(x, p=p),
                TF.lse_pool2d(x, 3, 1, 1, r=p),
                TF.soft_pool2d(x, 3, 1, 1),
                TF.lip_pool2d(x, logits, 3, 2, 1),
            ]
            return torch.autograd.grad(sum(o.sum() for o in outs), (x, logits, p))

        for a, b in zip(grads(), grads()):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(False)


def test_compiled_training_step_matches_eager():
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    r = torch.full((3,), 5.0, requires_grad=True)

    def f(x, r):
        return TF.lse_pool2d(x, 3, 2, 1, r=r).sum() + TF.soft_pool2d(x, 2).sum()

    torch._dynamo.reset()  # aot_eager: traces the autograd.Functions' forward and backward, skips codegen
    got = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(x, r), (x, r))
    want = torch.autograd.grad(f(x, r), (x, r))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_parameter_and_input_errors():
    x = torch.ones(1, 3, 4, 4)
    with pytest.raises(
        PoolingInputError, match=r"gem_pool2d: p must be a scalar or have shape \(3,\).*got shape \(2,\)"
    ):
        TF.gem_pool2d(x, 2, p=torch.ones(2))
    with pytest.raises(PoolingConfigError, match=r"p must be > 0 and finite, got 0\.0"):
        TF.gem_pool2d(x, 2, p=0.0)
    with pytest.raises(PoolingConfigError, match="p must be a positive real number or a tensor of 3"):
        TF.global_gem_pool(x, p=torch.tensor(True))
    with pytest.raises(PoolingConfigError, match=r"r must be > 0 and finite, got -1\.0"):
        TF.lse_pool2d(x, 2, r=-1.0)
    with pytest.raises(PoolingConfigError, match="eps must be > 0"):
        TF.gem_pool2d(x, 2, eps=0.0)
    with pytest.raises(
        PoolingInputError,
        match=r"lip_pool2d: logits must have the shape of x \(1, 3, 4, 4\).*got \(1, 3, 4\)",
    ):
        TF.lip_pool2d(x, torch.ones(1, 3, 4), 2)
    with pytest.raises(PoolingInputError, match="expects a floating-point logits .* got dtype int32"):
        TF.lip_pool2d(x, torch.ones(1, 3, 4, 4, dtype=torch.int32), 2)
    with pytest.raises(PoolingInputError, match="expects logits as a torch.Tensor, got ndarray"):
        TF.lip_pool2d(x, np.ones((1, 3, 4, 4)), 2)
    with pytest.raises(
        PoolingInputError, match=r"global_gem_pool expects an array shaped \(N, C, \*spatial\)"
    ):
        TF.global_gem_pool(torch.ones(4, 4))
    with pytest.raises(PoolingInputError, match="needs at least one spatial position"):
        TF.global_gem_pool(torch.ones(1, 3, 0, 4))
    with pytest.raises(PoolingInputError, match=r"soft_pool2d expects a 4-D tensor"):
        TF.soft_pool2d(torch.ones(4, 4), 2)


# --------------------------------------------------------------------------- modules


def _step(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One SGD step on a random regression target; returns the parameters before the step."""
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    out = module(x)
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    ((out - target) ** 2).mean().backward()
    opt.step()
    return before


@pytest.mark.parametrize(
    "module,name,shape",
    [
        (PT.GeMPool2d(kernel_size=2, p=3.0), "p", ()),
        (PT.GeMPool1d(3, 2, 1, p=2.0, channels=3), "p", (3,)),
        (PT.GlobalGeMPool(p=3.0), "p", ()),
        (PT.LSEPool2d(2, r=10.0), "r", ()),
        (PT.LSEPool3d(2, r=4.0, channels=3), "r", (3,)),
    ],
    ids=["gem2d", "gem1d-per-channel", "global-gem", "lse2d", "lse3d-per-channel"],
)
def test_learnable_modules_register_and_train_their_parameter(module, name, shape):
    nd = {"1d": 1, "3d": 3}.get(type(module).__name__[-2:], 2)
    x = torch.rand(2, 3, *[6, 5, 4][:nd]) + 0.1
    param = getattr(module, name)
    assert isinstance(param, nn.Parameter) and param.shape == shape
    assert [n for n, _ in module.named_parameters()] == [name]
    fn = TF.global_gem_pool if isinstance(module, PT.GlobalGeMPool) else type(module).function
    args = () if isinstance(module, PT.GlobalGeMPool) else (module.kernel_size, module.stride, module.padding)
    torch.testing.assert_close(module(x), fn(x, *args, **{name: param.detach()}))
    before = _step(module, x)
    assert not torch.equal(before[name], param.detach())


def test_fixed_parameters_are_buffers_in_the_state_dict():
    m = PT.GeMPool2d(2, p=2.0, channels=3, learnable=False)
    assert list(m.parameters()) == [] and set(m.state_dict()) == {"p"}
    m2 = PT.LSEPool2d(2, r=3.0, learnable=False)
    assert isinstance(m2.r, torch.Tensor) and not isinstance(m2.r, nn.Parameter)


def test_state_dict_round_trip():
    m = PT.GeMPool2d(2, channels=3)
    with torch.no_grad():
        m.p.copy_(torch.tensor([1.5, 2.5, 4.0]))
    lip = PT.LIPPool2d(3, 2, 1, channels=3)
    x = torch.rand(2, 3, 8, 8)
    _step(lip, x)
    m_new, lip_new = PT.GeMPool2d(2, channels=3), PT.LIPPool2d(3, 2, 1, channels=3)
    m_new.load_state_dict(m.state_dict())
    lip_new.load_state_dict(lip.state_dict())
    torch.testing.assert_close(m_new(x), m(x), rtol=0, atol=0)
    torch.testing.assert_close(lip_new(x), lip(x), rtol=0, atol=0)


def test_soft_pool_modules():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    assert list(PT.SoftPool2d(2).parameters()) == []
    torch.testing.assert_close(PT.SoftPool2d(3, 2, 1)(x), TF.soft_pool2d(x, 3, 2, 1))
    torch.testing.assert_close(PT.SoftPool1d(2)(x[:, :, 0]), TF.soft_pool1d(x[:, :, 0], 2))
    m = PT.SoftPool2d(2, data_format="channels_last")
    torch.testing.assert_close(m(x.permute(0, 2, 3, 1)), TF.soft_pool2d(x, 2).permute(0, 2, 3, 1))
    assert PT.SoftPool3d(2).stride == 2 and "kernel_size=2" in repr(PT.SoftPool3d(2))


def test_lip_default_logit_network_starts_as_average_pooling_and_trains():
    m = PT.LIPPool2d(3, 2, 1, channels=4)
    assert isinstance(m.logit, PT.LIPLogit)
    assert {n: tuple(p.shape) for n, p in m.named_parameters()} == {
        "logit.0.weight": (4, 4, 1, 1),
        "logit.1.weight": (4,),
        "logit.1.bias": (4,),
    }
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(m(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    before = _step(m, x)
    assert not torch.equal(before["logit.0.weight"], m.logit[0].weight.detach())
    assert not torch.allclose(m(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    logits = m.logit(x)
    assert (logits > 0).all() and (logits < 12).all()  # the gate bounds the logits to (0, 12)


def test_lip_custom_logit_and_layouts():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    soft = PT.LIPPool2d(3, 2, 1, logit=nn.Identity())
    torch.testing.assert_close(soft(x), TF.soft_pool2d(x, 3, 2, 1))
    m = PT.LIPPool2d(2, channels=3).double()
    cl = PT.LIPPool2d(2, channels=3, data_format="channels_last").double()
    cl.load_state_dict(m.state_dict())
    with torch.no_grad():
        m.logit[0].weight.normal_()
        cl.logit[0].weight.copy_(m.logit[0].weight)
    torch.testing.assert_close(cl(x.permute(0, 2, 3, 1)), m(x).permute(0, 2, 3, 1))
    torch.testing.assert_close(cl(x[0].permute(1, 2, 0)), m(x[:1])[0].permute(1, 2, 0))  # unbatched
    y1 = PT.LIPPool1d(3, 2, 1, channels=3)(x[:, :, 0].float())
    y3 = PT.LIPPool3d(2, channels=3)(x[:, :, :4, :4].unsqueeze(-1).expand(-1, -1, -1, -1, 2).float())
    assert y1.shape == (2, 3, 3) and y3.shape == (2, 3, 2, 2, 1)


def test_module_construction_errors():
    with pytest.raises(PoolingConfigError, match="kernel_size must be >= 1"):
        PT.GeMPool2d(0)
    with pytest.raises(PoolingConfigError, match=r"GeMPool2d: p must be > 0, got 0\.0"):
        PT.GeMPool2d(2, p=0.0)
    with pytest.raises(PoolingConfigError, match="channels must be >= 1"):
        PT.GeMPool2d(2, channels=0)
    with pytest.raises(PoolingConfigError, match="learnable must be True or False"):
        PT.GlobalGeMPool(learnable=1)
    with pytest.raises(PoolingConfigError, match="r must be a finite number"):
        PT.LSEPool2d(2, r=float("nan"))
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=3"):
        PT.SoftPool2d(3, padding=2)
    with pytest.raises(PoolingConfigError, match="LIPPool2d: the default logit network .* pass channels=C"):
        PT.LIPPool2d(2)
    with pytest.raises(PoolingConfigError, match="logit must be an nn.Module"):
        PT.LIPPool2d(2, logit=lambda x: x)
    with pytest.raises(PoolingConfigError, match="data_format must be one of"):
        PT.SoftPool2d(2, data_format="NHWC")
    with pytest.raises(PoolingInputError, match=r"p must be a scalar or have shape \(3,\)"):
        PT.GeMPool2d(2, channels=4)(torch.rand(1, 3, 4, 4))  # channels that do not match x
