"""GeM, LSE, SoftPool and LIP pooling in torch: smooth, weighted relatives of max and average pooling.

Semantics are the NumPy reference's (:mod:`poolkit.ops.gem`, ``lse``, ``soft``,
``lip``), including their rules for +-1e4, NaN, inf and degenerate windows.
Each operator is a custom ``torch.autograd.Function`` when a gradient is
needed: it saves its inputs and output-sized statistics (the window
maximum and the softmax denominator), where plain autograd through a loop
over the window's taps would keep every tap's weights, a kernel-volume of
memory. The backward passes are written in differentiable torch ops, so
double backward works. Without a gradient (inference, ``torch.compile``,
``torch.export``, ONNX) the same forward runs as plain torch ops.

SoftPool, LIP and LSE shift their exponents by each window's maximum
(exact for any input). Eager CPU calls first try one shift per ``(n, c)``
plane instead: one contiguous exponential per input value and PyTorch's
average-pooling kernels for the window sums, 2-3x faster, checked on the
host for windows whose weights underflowed (those calls then take the
per-window path: see :func:`poolkit.torch._core.cpu_fast_path`). That path
also saves the weights (one input-sized tensor) for the backward.

float16 and bfloat16 inputs are computed in float32 on every device (the
weights are exponentials and powers) and returned in the input dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..._validate import check_bool, check_real
from ...errors import PoolingInputError
from ...geometry import WindowSpec, window_spec
from ...ops._input import float_dtype_error
from ...ops.gem import _P_HINT
from ...ops.lse import _R_HINT
from .._core import (
    aliases,
    all_finite,
    channel_param,
    cpu_fast_path,
    divisor,
    host_empty,
    host_ufunc,
    nd_of,
    needs_grad,
    pad_to_windows,
    prepare,
    upcast,
    windowed,
    zero_nonfinite,
)
from .._taps import (
    TapAdjoint,
    tap_bias,
    taps,
    tiling,
    window_mean,
    window_mean_adjoint,
    window_peak,
)

__all__ = [
    "gem_pool",
    "gem_pool1d",
    "gem_pool2d",
    "gem_pool3d",
    "global_gem_pool",
    "lse_pool",
    "lse_pool1d",
    "lse_pool2d",
    "lse_pool3d",
    "soft_pool",
    "soft_pool1d",
    "soft_pool2d",
    "soft_pool3d",
    "lip_pool",
    "lip_pool1d",
    "lip_pool2d",
    "lip_pool3d",
]

_INF = float("inf")


# --------------------------------------------------------------------------- GeM


class _Windows:
    """Window means over the taps inside the input (GeM's ``1/|R|``), and their adjoint."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return window_mean(t, self.spec)

    def adjoint(self, w: torch.Tensor, like: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """``factor`` times the adjoint of :meth:`mean` applied to ``w`` (a new tensor)."""
        a = window_mean_adjoint(w, self.spec, like)
        return a * factor if torch.is_grad_enabled() else a.mul_(factor)


class _Plane:
    """Means over each whole ``(n, c)`` plane (global GeM), and their adjoint."""

    def __init__(self, nd: int) -> None:
        self.dims = tuple(range(2, 2 + nd))

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=self.dims, keepdim=True)

    def adjoint(self, w: torch.Tensor, like: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        n = 1
        for d in self.dims:
            n *= int(like.shape[d])
        return factor * (w / n)


def _gem_mean(x: torch.Tensor, p: Any, eps: float, pool: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean(c^p)`` over the windows and ``c^p``, ``c = max(x, eps)``.

    ``p`` is a tensor or a Python number: PyTorch raises to a number's power
    with dedicated kernels (``c * c * c`` for 3), several times faster than
    ``exp(p log c)``.
    """
    c = x.clamp(min=eps)
    cp = c.pow(p) if torch.is_grad_enabled() else c.pow_(p)
    return pool.mean(cp), cp


def _inverse(p: Any) -> Any:
    return 1.0 / p if isinstance(p, float) else p.reciprocal()


class _GeMFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, p: torch.Tensor, eps: float, pool: Any, power: float | None
    ) -> torch.Tensor:
        exponent = p if power is None else power
        mean, cp = _gem_mean(x, exponent, eps, pool)
        y = mean.pow(_inverse(exponent))
        ctx.eps, ctx.pool, ctx.power = eps, pool, power
        # c^p is kept: the backward would otherwise raise c to a power twice more
        ctx.save_for_backward(x, p, y, mean, cp)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        x, p, y, mean, cp = ctx.saved_tensors
        eps, pool = ctx.eps, ctx.pool
        if torch.is_grad_enabled():  # double backward: the mean as a function of x and p (y is an output)
            mean, cp = _gem_mean(x, p if ctx.power is None else ctx.power, eps, pool)
        ratio = y / mean  # y^(1-p); NaN, inf or 0/0 in windows that overflowed, underflowed or hold NaN/inf
        if torch.is_grad_enabled():
            bad = ~torch.isfinite(ratio.detach())
            w = torch.where(bad, torch.zeros_like(ratio), ratio) * g
        else:
            bad = None
            w = ratio.nan_to_num_(0.0, 0.0, 0.0).mul_(g)
        gx = gp = None
        if ctx.needs_input_grad[0]:  # the gradient passes where x >= eps (c = x there)
            gx = pool.adjoint(w, x, cp)  # times c^(p-1) = c^p / c
            if torch.is_grad_enabled():
                gx = zero_nonfinite(
                    torch.where(x >= eps, gx / x, torch.zeros((), dtype=x.dtype, device=x.device))
                )
            else:
                # x where x >= eps, else +inf: the quotient is 0 there (F.threshold keeps values > t)
                below = float(
                    torch.nextafter(torch.tensor(eps, dtype=x.dtype), torch.tensor(-_INF, dtype=x.dtype))
                )
                gx = gx.div_(F.threshold(x, below, _INF)).nan_to_num_(0.0, 0.0, 0.0)
        if ctx.needs_input_grad[1]:  # dy/dp = (y / p) (mean(c^p log c) / mean(c^p) - log y)
            t = pool.mean(cp * x.clamp(min=eps).log())
            gpw = (t / mean - y.log()) * y / p * g
            bad = ~torch.isfinite(y / mean) if bad is None else bad
            gp = torch.where(bad, torch.zeros_like(gpw), gpw).sum_to_size(p.shape)
        return gx, gp, None, None, None


def _gem(x: torch.Tensor, p: torch.Tensor, eps: float, pool: Any, power: float | None) -> torch.Tensor:
    """GeM with ``p`` as a tensor, and ``power``: the same value as a Python float when the caller
    gave a number (a constant: the fast power kernels), else None."""
    if needs_grad(x, p):
        return _GeMFunction.apply(x, p, eps, pool, power)
    exponent = p if power is None else power
    return _gem_mean(x, exponent, eps, pool)[0].pow(_inverse(exponent))


def _number(p: Any) -> float | None:
    """``p`` as a float when it is a plain number (already validated), else None."""
    return float(p) if isinstance(p, (int, float)) and not isinstance(p, bool) else None


def gem_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    p: Any = 3.0,
    eps: float = 1e-6,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """GeM pooling: each window's generalized mean ``((1/|R|) sum max(x, eps)^p)^(1/p)``.

    See :func:`poolkit.ops.gem_pool` for the formula, the gradients and the
    conventions (padding is not part of the mean; overflow gives ``+inf``,
    underflow 0; windows with a non-finite or zero output pass no gradient).

    ``p`` is a float, an array or a tensor, one value or one per channel
    (``(C,)``); a tensor with ``requires_grad`` is learned. Floats and arrays
    are checked (> 0, finite); a tensor's values are not (reading them would
    synchronise with the device).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import gem_pool1d
    >>> gem_pool1d(torch.tensor([[[1.0, 3.0, 2.0, 2.0]]], dtype=torch.float64), 2, p=2.0)
    tensor([[[2.2361, 2.0000]]], dtype=torch.float64)
    """
    return _gem_pool(x, kernel_size, stride, padding, ceil_mode, p=p, eps=eps, data_format=data_format)


def _gem_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    p: Any = 3.0,
    eps: float = 1e-6,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "gem_pool",
) -> torch.Tensor:
    pr, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    xc = upcast(pr.x)
    pt = channel_param(op, "p", p, xc, pr.nd, _P_HINT)
    e = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
    return pr.to_user(_gem(xc, pt, e, _Windows(spec), _number(p)).to(pr.dtype))


def global_gem_pool(
    x: torch.Tensor,
    p: Any = 3.0,
    eps: float = 1e-6,
    *,
    keepdims: bool = False,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Global GeM: the generalized mean of ``max(x, eps)`` over each whole plane, ``(N, C, ...) -> (N, C)``.

    cirtorch's ``avg_pool2d(x.clamp(min=eps).pow(p), (H, W)).pow(1/p)`` for
    any spatial rank (see :func:`poolkit.ops.global_gem_pool`); ``p`` as in
    :func:`gem_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import global_gem_pool
    >>> x = torch.tensor([[[[1.0, 3.0], [2.0, 4.0]]]], dtype=torch.float64)
    >>> global_gem_pool(x, p=1.0)
    tensor([[2.5000]], dtype=torch.float64)
    """
    op = "global_gem_pool"
    keepdims = check_bool(op, "keepdims", keepdims)
    nd = nd_of(op, x, None, variants=False)
    pr = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    if 0 in pr.spatial:
        raise PoolingInputError(f"{op} needs at least one spatial position, got spatial size {pr.spatial}.")
    xc = upcast(pr.x)
    pt = channel_param(op, "p", p, xc, nd, _P_HINT)
    e = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
    y = _gem(xc, pt, e, _Plane(nd), _number(p)).to(pr.dtype)
    if keepdims:
        return pr.to_user(y)
    return y.reshape(y.shape[0], y.shape[1])


# --------------------------------------------------------------------------- plane shifts


def _plane_exp(logits: torch.Tensor, spec: WindowSpec, r: Any = None) -> tuple[torch.Tensor, ...] | None:
    """``e = exp(r (l - M))`` with ``M`` each plane's largest logit, and the window means of ``e``.

    Returns ``(e, mean e, M)``, or None where :func:`cpu_fast_path` rules the
    CPU path out, a plane's maximum is not finite, or a window's mean is not
    a normal number at least ``1/eps`` above the smallest one (its weights
    underflowed, or a window held nothing but ``-inf``): the callers then
    shift by each window's maximum. A window whose mean passes holds a weight
    of at least that size, so the weights lost to underflow are below its
    rounding error. Runs without autograd (the backward passes are explicit).
    """
    if not cpu_fast_path(logits):
        return None
    with torch.no_grad():
        peak = logits.amax(dim=tuple(range(2, logits.dim())), keepdim=True)
        if not bool(torch.isfinite(peak).all()):
            return None
        e = torch.sub(logits, peak, out=host_empty(logits.shape, logits.dtype))
        if r is not None:
            e.mul_(r)
        host_ufunc("exp", e, e)
        se = window_mean(e, spec)
        fi = torch.finfo(se.dtype)
        low, high = torch.aminmax(se)  # NaN propagates, and fails both tests
        if not (bool(low >= fi.tiny / fi.eps) and bool(high <= fi.max)):
            return None
    return e, se, peak


def _plane_weighted(
    x: torch.Tensor, logits: torch.Tensor, spec: WindowSpec
) -> tuple[torch.Tensor, ...] | None:
    """SoftPool's and LIP's ``y = mean(e x) / mean(e)`` with plane shifts: ``(y, e, mean e)``, or None
    (also when a ``y`` is not finite: the per-window path has the rules for non-finite inputs)."""
    plane = _plane_exp(logits, spec)
    if plane is None:
        return None
    e, se, _ = plane
    with torch.no_grad():
        y = window_mean(torch.mul(x, e, out=host_empty(e.shape, e.dtype)), spec).div_(se)
    return (y, e, se) if all_finite(y) else None


def _plane_weighted_adjoint(
    y: torch.Tensor, e: torch.Tensor, se: torch.Tensor, g: torch.Tensor, spec: WindowSpec, want_b: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``A = mean^T(g / mean e)`` and ``B = mean^T(g y / mean e)`` for ``y = mean(e x) / mean(e)``.

    The gradient is ``e A`` for ``x`` as a value and ``e (x A - B)``
    through the weights (``B`` only with ``want_b``).
    """
    scale = g / se
    a = window_mean_adjoint(scale, spec, e)
    return a, window_mean_adjoint(scale.mul_(y), spec, e) if want_b else None


# --------------------------------------------------------------------------- LSE


def _lse_sums(x: torch.Tensor, r: torch.Tensor, spec: WindowSpec, m: torch.Tensor) -> torch.Tensor:
    """``sum exp(r (x - m))`` over each window's taps inside the input."""
    xp = pad_to_windows(x, spec, 0.0)
    bias = tap_bias(spec, x)
    s = torch.zeros_like(m)
    for _, (xv, bv) in taps(spec, xp, bias):
        u = r * (xv - m)
        s.add_(torch.exp(u if bv is None else u + bv))
    return s


class _LSEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, r: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
        ctx.spec = spec
        plane = _lse_plane(x, r, spec)
        ctx.plane = plane is not None
        if plane is not None:
            y, e, se, peak = plane
            ctx.save_for_backward(x, r, y, e, se, peak)
            return y
        y, m, s = _lse_forward(x, r, spec)
        ctx.save_for_backward(x, r, m, s)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        spec = ctx.spec
        if ctx.plane:
            x, r, y, e, se, peak = ctx.saved_tensors
            if not torch.is_grad_enabled():
                return (*_lse_plane_backward(ctx, x, r, y, e, se, peak, g), None)
            with torch.no_grad():  # double backward: the per-window formulation
                _, m, s = _lse_forward(x, r, spec)
        else:
            x, r, m, s = ctx.saved_tensors  # m, s: +inf in degenerate windows (every weight 0)
        bad = torch.isinf(s)
        if torch.is_grad_enabled():  # double backward: s as a function of x and r
            s = torch.where(bad, s, _lse_sums(x, r, spec, m))
        scale = g / s
        lowest = torch.finfo(x.dtype).min  # -inf exponents: weight 0 and 0 * u = 0, not NaN
        xp = pad_to_windows(x, spec, 0.0)
        bias = tap_bias(spec, x)
        acc = TapAdjoint(spec, x)
        a = torch.zeros_like(s)  # sum of exp(u) u, u = r (x - m)
        for idx, (xv, bv) in taps(spec, xp, bias):
            u = r * (xv - m)
            u = (u if bv is None else u + bv).clamp(min=lowest)
            e = torch.exp(u)
            a.addcmul_(e, u)
            acc.add(idx, e * scale)
        gx = zero_nonfinite(acc.result()) if ctx.needs_input_grad[0] else None
        gr = None
        if ctx.needs_input_grad[1]:  # dy/dr = (A / S - log(S / n)) / r^2
            log_n = divisor(spec, False, s).log()
            gw = (a / s - s.log() + log_n) / r / r * g
            gr = torch.where(bad, torch.zeros_like(gw), gw).sum_to_size(r.shape)
        return gx, gr, None


def _lse_plane(x: torch.Tensor, r: torch.Tensor, spec: WindowSpec) -> tuple[torch.Tensor, ...] | None:
    """LSE with one shift per plane, ``y = M + log(mean exp(r (x - M))) / r``: ``(y, e, mean e, M)`` or None."""
    plane = _plane_exp(x, spec, r)
    if plane is None:
        return None
    e, se, peak = plane
    with torch.no_grad():
        return se.log().div_(r).add_(peak), e, se, peak


def _lse_plane_backward(
    ctx: Any,
    x: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    e: torch.Tensor,
    se: torch.Tensor,
    peak: torch.Tensor,
    g: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dy/dx_i = e_i / (n mean e) (each window's softmax); dy/dr = (mean(e u) / mean(e) - log mean(e)) / r^2."""
    spec = ctx.spec
    gx = gr = None
    if ctx.needs_input_grad[0]:
        gx = window_mean_adjoint(g / se, spec, e).mul_(e)
    if ctx.needs_input_grad[1]:
        u = torch.sub(x, peak).mul_(r)
        eu = window_mean(u.mul_(e), spec)
        gr = ((eu / se - se.log()) / r / r * g).sum_to_size(r.shape)
    return gx, gr


def _lse_forward(
    x: torch.Tensor, r: torch.Tensor, spec: WindowSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m_raw = window_peak(x, spec)
    bad = ~torch.isfinite(m_raw)
    m = torch.where(bad, torch.zeros_like(m_raw), m_raw)
    s = _lse_sums(x, r, spec, m)
    log_n = divisor(spec, False, s).log()
    y = torch.where(bad, m_raw, (s.log() - log_n) / r + m)
    inf = torch.full_like(m, _INF)
    return y, torch.where(bad, inf, m), torch.where(bad, inf, s)


def lse_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    r: Any = 10.0,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Log-sum-exp pooling ``m + (1/r) log((1/n) sum exp(r (x_i - m)))`` (timm's ``LsePlus``).

    See :func:`poolkit.ops.lse_pool`: ``m`` is the window maximum (so no
    ``r`` and ``x`` overflow), ``n`` the taps inside the input; a NaN window
    gives NaN, ``+inf`` wins, all ``-inf`` stays ``-inf``, and such windows
    pass no gradient. ``r`` is a float, an array or a tensor (one value or
    ``(C,)``), learnable.

    Examples
    --------
    >>> import math, torch
    >>> from poolkit.torch.functional import lse_pool1d
    >>> x = torch.tensor([[[0.0, math.log(3.0), 1e4, 1e4]]], dtype=torch.float64)
    >>> lse_pool1d(x, 2, r=1.0)
    tensor([[[6.9315e-01, 1.0000e+04]]], dtype=torch.float64)
    """
    return _lse_pool(x, kernel_size, stride, padding, ceil_mode, r=r, data_format=data_format)


def _lse_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    r: Any = 10.0,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "lse_pool",
) -> torch.Tensor:
    pr, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    xc = upcast(pr.x)
    rt = channel_param(op, "r", r, xc, pr.nd, _R_HINT)
    if needs_grad(xc, rt):
        y = _LSEFunction.apply(xc, rt, spec)
    else:
        plane = _lse_plane(xc, rt, spec)
        y = plane[0] if plane is not None else _lse_forward(xc, rt, spec)[0]
    return pr.to_user(y.to(pr.dtype))


# --------------------------------------------------------------------------- SoftPool


def _weight_sums(
    x: torch.Tensor, logits: torch.Tensor, spec: WindowSpec, m: torch.Tensor, numerator: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``S = sum exp(l - m)`` and ``sum exp(l - m) x`` over each window's taps inside the input.

    SoftPool's (``logits is x``) and LIP's. Outside autograd one output-shaped
    buffer serves every tap (fresh memory costs more than the arithmetic);
    under autograd (double backward) the ops are out of place.
    """
    xp = pad_to_windows(x, spec, 0.0)
    lp = xp if logits is x else pad_to_windows(logits, spec, 0.0)
    bias = tap_bias(spec, x)
    s = torch.zeros_like(m)
    num = torch.zeros_like(m) if numerator else None
    tracked = torch.is_grad_enabled() and needs_grad(x, logits, m)
    e = None if tracked else torch.empty_like(m)
    for _, (xv, lv, bv) in taps(spec, xp, lp, bias):
        w = _tap_weight(lv, m, bv, e)
        if e is None:
            s = s + w
            num = None if num is None else num + w * xv
        else:
            s.add_(w)
            if num is not None:
                num.addcmul_(w, xv)
    return s, num


def _tap_weight(
    lv: torch.Tensor, m: torch.Tensor, bv: torch.Tensor | None, out: torch.Tensor | None
) -> torch.Tensor:
    """``exp(l - m)`` at one tap (``bv``: -inf in padding), written into ``out`` when given (no autograd)."""
    if out is None:
        u = lv - m
        return torch.exp(u if bv is None else u + bv)
    torch.sub(lv, m, out=out)
    if bv is not None:
        out.add_(bv)
    return out.exp_()


def _weighted_adjoint(
    x: torch.Tensor,
    logits: torch.Tensor,
    spec: WindowSpec,
    m: torch.Tensor,
    scale: torch.Tensor,
    y: torch.Tensor,
    want_w: bool,
    want_d: bool,
    plus: float = 0.0,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Adjoints of the weighted mean ``y = sum w_i x_i / S``, ``w_i = exp(l_i - m)``.

    With ``scale = g / S``: ``sum_windows w_i scale`` (the gradient reaching
    ``x_i`` as a value) and ``sum_windows w_i scale (x_i - y + plus)`` (through
    the weights: LIP's logits with ``plus = 0``; SoftPool adds both, which is
    ``plus = 1`` in the second alone). Buffers are reused outside autograd.
    """
    xp = pad_to_windows(x, spec, 0.0)
    lp = xp if logits is x else pad_to_windows(logits, spec, 0.0)
    bias = tap_bias(spec, x)
    acc_w = TapAdjoint(spec, x) if want_w else None
    acc_d = TapAdjoint(spec, x) if want_d else None
    tracked = torch.is_grad_enabled()
    e = None if tracked else torch.empty_like(m)
    t = None if tracked or not want_d else torch.empty_like(m)
    for idx, (xv, lv, bv) in taps(spec, xp, lp, bias):
        w = _tap_weight(lv, m, bv, e)
        w = w * scale if e is None else w.mul_(scale)
        if acc_w is not None:
            acc_w.add(idx, w)
        if acc_d is None:
            continue
        if t is None:
            acc_d.add(idx, w * (xv - y + plus))
        else:
            torch.sub(xv, y, out=t)
            if plus:
                t.add_(plus)
            acc_d.add(idx, t.mul_(w))
    return (
        None if acc_w is None else acc_w.result(),
        None if acc_d is None else acc_d.result(),
    )


def _soft_forward(x: torch.Tensor, spec: WindowSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m_raw = window_peak(x, spec)
    bad = ~torch.isfinite(m_raw)
    m = torch.where(bad, torch.zeros_like(m_raw), m_raw)
    s, num = _weight_sums(x, x, spec, m)
    assert num is not None
    # +inf wins the softmax outright; a window of -inf stays -inf; NaN stays NaN.
    y = torch.where(bad, m_raw, num / s)
    return y, m, torch.where(bad, torch.full_like(s, _INF), s)


class _SoftPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
        ctx.spec = spec
        plane = _plane_weighted(x, x, spec)
        ctx.plane = plane is not None
        if plane is not None:
            y, e, se = plane
            ctx.save_for_backward(x, y, e, se)
            return y
        y, m, s = _soft_forward(x, spec)
        ctx.save_for_backward(x, y, m, s)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        spec = ctx.spec
        if ctx.plane:
            x, y, e, se = ctx.saved_tensors
            if not torch.is_grad_enabled():  # dy/dx_i = e_i (1 + x_i - y) / S: e ((1 + x) A - B)
                tiles = tiling(spec, x, e)
                if tiles is not None:  # one window per input: e (x c + c (1 - y)), c = g / (n mean e)
                    split, spread = tiles
                    c = (g / se).div_(math.prod(spec.kernel_size))
                    d = (1.0 - y).mul_(c)
                    gx = torch.addcmul(d.view(spread), x.view(split), c.view(spread))
                    return gx.mul_(e.view(split)).view(x.shape), None
                a, b = _plane_weighted_adjoint(y, e, se, g, spec, want_b=True)
                assert b is not None
                return a.addcmul_(a, x).sub_(b).mul_(e), None
            with torch.no_grad():  # double backward: the per-window formulation
                _, m, s = _soft_forward(x, spec)
        else:
            x, y, m, s = ctx.saved_tensors  # m: 0, s: +inf in windows with a NaN or infinite maximum
        if torch.is_grad_enabled():  # double backward: S as a function of x (y is an output)
            s = torch.where(torch.isinf(s), s, _weight_sums(x, x, spec, m, numerator=False)[0])
        # dy/dx_i = w_i (1 + x_i - y) / S
        _, gx = _weighted_adjoint(x, x, spec, m, g / s, y, want_w=False, want_d=True, plus=1.0)
        assert gx is not None
        return zero_nonfinite(gx), None


def soft_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """SoftPool: each window's softmax-weighted average ``sum_i e^{x_i} x_i / sum_i e^{x_i}``.

    See :func:`poolkit.ops.soft_pool`. Computed with the window maximum
    subtracted, so +-1e4 in float32 stays finite and correct (the
    reference's ``avg_pool(x e^x) / avg_pool(e^x)`` overflows); padding is
    outside the softmax. The backward pass saves only the input, the output,
    the window maximum and the denominator (all output-sized but ``x``).

    Examples
    --------
    >>> import math, torch
    >>> from poolkit.torch.functional import soft_pool1d
    >>> soft_pool1d(torch.tensor([[[0.0, math.log(3.0), 1e4, 1e4]]]), 2)
    tensor([[[8.2396e-01, 1.0000e+04]]])
    """
    return _soft_pool(x, kernel_size, stride, padding, ceil_mode, data_format=data_format)


def _soft_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "soft_pool",
) -> torch.Tensor:
    pr, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    xc = upcast(pr.x)
    if needs_grad(xc):
        y = _SoftPoolFunction.apply(xc, spec)
    else:
        plane = _plane_weighted(xc, xc, spec)
        y = plane[0] if plane is not None else _soft_forward(xc, spec)[0]
    return pr.to_user(y.to(pr.dtype))


# --------------------------------------------------------------------------- LIP


def _lip_forward(
    x: torch.Tensor, logits: torch.Tensor, spec: WindowSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m_raw = window_peak(logits, spec)
    bad_l = ~torch.isfinite(m_raw)
    m = torch.where(bad_l, torch.zeros_like(m_raw), m_raw)
    s, num = _weight_sums(x, logits, spec, m)
    assert num is not None
    # NaN or +inf logits: undefined weights; all -inf: no weight at all.
    y = torch.where(bad_l, torch.full_like(s, float("nan")), num / s)
    bad = ~torch.isfinite(y)
    inf = torch.full_like(m, _INF)
    return y, torch.where(bad, inf, m), torch.where(bad, inf, s)


class _LIPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, logits: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
        ctx.spec = spec
        plane = _plane_weighted(x, logits, spec)
        ctx.plane = plane is not None
        if plane is not None:
            y, e, se = plane
            ctx.save_for_backward(x, logits, y, e, se)
            return y
        y, m, s = _lip_forward(x, logits, spec)
        ctx.save_for_backward(x, logits, y, m, s)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        spec = ctx.spec
        want_x, want_l = ctx.needs_input_grad[:2]
        if ctx.plane:
            x, logits, y, e, se = ctx.saved_tensors
            if not torch.is_grad_enabled():  # dy/dx_i = e_i A, dy/dl_i = e_i (x_i A - B)
                a, b = _plane_weighted_adjoint(y, e, se, g, spec, want_b=want_l)
                gl = None
                if b is not None:  # x outside every window (floor mode) meets A = B = 0: inf * 0 there
                    gl = b.addcmul_(x, a, value=-1.0).mul_(e).neg_().nan_to_num_(0.0, 0.0, 0.0)
                return a.mul_(e) if want_x else None, gl, None
            with torch.no_grad():  # double backward: the per-window formulation
                _, m, s = _lip_forward(x, logits, spec)
        else:
            x, logits, y, m, s = ctx.saved_tensors  # m, s: +inf where y is not finite (every weight 0)
        bad = torch.isinf(s)
        if torch.is_grad_enabled():  # double backward: S as a function of the logits (y is an output)
            s = torch.where(bad, s, _weight_sums(x, logits, spec, m, numerator=False)[0])
        y0 = torch.where(bad, torch.zeros_like(y), y)
        # dy/dx_i = w_i / S, dy/dl_i = w_i (x_i - y) / S
        gx, gl = _weighted_adjoint(x, logits, spec, m, g / s, y0, want_w=want_x, want_d=want_l)
        gx = zero_nonfinite(gx) if gx is not None else None
        gl = zero_nonfinite(gl) if gl is not None else None
        return gx, gl, None


def lip_pool(
    x: torch.Tensor,
    logits: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Local importance pooling: ``sum_i e^{l_i} x_i / sum_i e^{l_i}`` over each window (Gao et al., ICCV 2019).

    See :func:`poolkit.ops.lip_pool`. ``logits`` has ``x``'s shape and
    layout (in the paper the output of a small network of ``x``; the module
    :class:`poolkit.torch.LIPPool2d` builds it). Each window's largest logit
    is subtracted, so logits of +-1e4 stay finite (sebgao/LIP's
    ``avg_pool(x e^l) / avg_pool(e^l)`` gives NaN once ``e^l`` overflows).
    Logits are cast to ``x``'s compute dtype.

    Examples
    --------
    >>> import math, torch
    >>> from poolkit.torch.functional import lip_pool1d
    >>> x = torch.tensor([[[1.0, 5.0, 2.0, 4.0]]], dtype=torch.float64)
    >>> lip_pool1d(x, torch.tensor([[[0.0, math.log(3.0), 1e4, -1e4]]], dtype=torch.float64), 2)
    tensor([[[4., 2.]]], dtype=torch.float64)
    """
    return _lip_pool(x, logits, kernel_size, stride, padding, ceil_mode, data_format=data_format)


def _lip_pool(
    x: torch.Tensor,
    logits: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "lip_pool",
) -> torch.Tensor:
    pr = prepare(x, op=op, nd=nd_of(op, x, ndim, kernel_size, stride), data_format=data_format)
    if not isinstance(logits, torch.Tensor):
        raise PoolingInputError(
            f"{op} expects logits as a torch.Tensor, got {type(logits).__name__}. Use torch.as_tensor(logits)."
        )
    if not logits.is_floating_point():
        kind = "complex" if logits.is_complex() else str(logits.dtype).replace("torch.", "")
        raise float_dtype_error(op, kind, "logits", "float()")
    if tuple(logits.shape) != tuple(x.shape):
        raise PoolingInputError(
            f"{op}: logits must have the shape of x {tuple(x.shape)} (one logit per input value, same "
            f"layout), got {tuple(logits.shape)}."
        )
    spec = window_spec(pr.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    xc = upcast(pr.x)
    lc = pr.from_user(logits).to(xc.dtype)
    if needs_grad(xc, lc):
        y = _LIPFunction.apply(xc, lc, spec)
    else:
        plane = _plane_weighted(xc, lc, spec)
        y = plane[0] if plane is not None else _lip_forward(xc, lc, spec)[0]
    return pr.to_user(y.to(pr.dtype))


_a = aliases(gem_pool, _gem_pool, (1, 2, 3))
gem_pool1d, gem_pool2d, gem_pool3d = (_a[f"gem_pool{i}d"] for i in (1, 2, 3))
_a = aliases(lse_pool, _lse_pool, (1, 2, 3))
lse_pool1d, lse_pool2d, lse_pool3d = (_a[f"lse_pool{i}d"] for i in (1, 2, 3))
_a = aliases(soft_pool, _soft_pool, (1, 2, 3))
soft_pool1d, soft_pool2d, soft_pool3d = (_a[f"soft_pool{i}d"] for i in (1, 2, 3))
_a = aliases(lip_pool, _lip_pool, (1, 2, 3))
lip_pool1d, lip_pool2d, lip_pool3d = (_a[f"lip_pool{i}d"] for i in (1, 2, 3))
