"""Stochastic, mixed and S3 pooling in torch: poolkit's random pooling operators.

Semantics are the NumPy reference's (:mod:`poolkit.ops.stochastic`,
:mod:`~poolkit.ops.mixed`, :mod:`~poolkit.ops.s3`). The random draws come
from torch (``rng``: None for torch's global generator, an int seed or a
``torch.Generator``), so they differ from NumPy's; given the same explicit
draws (``samples``, or a drawn ``lambda`` passed as ``alpha``) the results
are equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..._validate import check_bool, check_choice, int_tuple
from ...errors import PoolingConfigError, PoolingInputError
from ...geometry import AxisWindow, WindowSpec, window_spec
from ...ops.mixed import MODES, _check_alpha
from ...ops.s3 import _check_samples as _check_rows_numpy
from ...ops.stochastic import _check_samples as _check_uniforms_numpy
from .._core import (
    aliases,
    all_finite,
    as_generator,
    cpu_fast_path,
    generic_grads,
    host_empty,
    host_zeros,
    nd_of,
    needs_grad,
    pad_to_windows,
    param_tensor,
    prepare,
    upcast,
    windowed,
    zero_nonfinite,
)
from .._taps import (
    AVG_POOL,
    MAX_POOL,
    Polyphase,
    TapAdjoint,
    batch_chunks,
    chunk_buffers,
    dense_taps,
    flat_taps,
    native_avg_adjoint,
    native_window,
    tap_select_adjoint,
    tap_views,
    window_peak,
)
from .classic import _avg_pool, _max_pool

__all__ = [
    "stochastic_pool",
    "stochastic_pool1d",
    "stochastic_pool2d",
    "stochastic_pool3d",
    "mixed_pool",
    "mixed_pool1d",
    "mixed_pool2d",
    "mixed_pool3d",
    "s3_pool",
    "s3_pool1d",
    "s3_pool2d",
    "s3_pool3d",
]

# --------------------------------------------------------------------------- stochastic


def stochastic_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    training: bool = True,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Stochastic pooling (Zeiler & Fergus, ICLR 2013); see :func:`poolkit.ops.stochastic_pool`.

    ``training=True`` outputs one activation per window, drawn with
    probability ``p_i = a_i / sum(a)`` (``a = max(x, 0)``); its gradient
    goes to the sampled element. ``training=False`` gives
    ``sum(a^2) / sum(a)`` with the exact gradient ``(2 a_i - y) / sum(a)``
    where ``x_i > 0``.

    Parameters
    ----------
    samples : tensor or array_like, optional
        One uniform in [0, 1) per window, shaped ``(N, C, *out)`` in
        channels-first order whatever ``data_format``; given, the result
        equals the NumPy reference's with the same ``samples``. Values of a
        tensor are not checked (that would wait for the device).
    rng : None, int or torch.Generator
        Draws the uniforms (in the compute dtype) when ``samples`` is not given.

    Notes
    -----
    A custom autograd Function: training saves the index of each window's
    sample (one byte per output element for kernels up to 255 taps),
    evaluation the input and three output-sized tensors, instead of the
    kernel-volume tensors a tap loop under autograd would keep. Double
    backward: training's second derivative is 0; evaluation's backward is
    written in differentiable torch ops. float16/bfloat16 are computed in
    float32. Conventions (negative inputs, padding, non-finite values,
    the sampling rule) are the NumPy reference's.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import stochastic_pool1d
    >>> x = torch.tensor([[[1.0, 3.0, 0.0, -2.0, 0.0, 4.0]]])
    >>> stochastic_pool1d(x, 2, training=False)
    tensor([[[2.5000, 0.0000, 4.0000]]])
    >>> stochastic_pool1d(x, 2, samples=torch.tensor([[[0.3, 0.5, 0.9]]]))  # u = 0.3 > p(1) = 1/4
    tensor([[[3., 0., 4.]]])
    """
    return _stochastic_pool(
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        training=training,
        samples=samples,
        rng=rng,
        data_format=data_format,
    )


def _uniforms(
    op: str, samples: Any, out_shape: tuple[int, ...], batched: bool, like: torch.Tensor
) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor):
        u = _check_uniforms_numpy(op, samples, out_shape, batched)
        return torch.as_tensor(u, device=like.device)
    u = samples.to(like.device)
    if not batched and tuple(u.shape) == out_shape[1:]:
        u = u.unsqueeze(0)
    if tuple(u.shape) != out_shape:
        raise PoolingInputError(
            f"{op}: samples must have shape (N, C, *out) = {out_shape} (one uniform per window, "
            f"channels-first whatever data_format), got {tuple(samples.shape)}."
        )
    if not u.is_floating_point():
        raise PoolingInputError(f"{op}: samples must be floats in [0, 1), got dtype {u.dtype}.")
    return u


def _stochastic_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    training: bool = True,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "stochastic_pool",
) -> torch.Tensor:
    training = check_bool(op, "training", training)
    p, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    gen = as_generator(op, rng, p.x.device)
    xc = upcast(p.x)
    out_shape = (*xc.shape[:2], *spec.output_size)
    u = None if samples is None else _uniforms(op, samples, out_shape, p.batched, xc)
    if training and u is None:
        u = torch.rand(out_shape, generator=gen, device=xc.device, dtype=xc.dtype)
    if needs_grad(xc):
        y = _Stochastic.apply(xc, u, spec, training)
    else:
        y = _stochastic_forward(xc, u, spec, training)[0]
    return p.to_user(y.to(p.dtype))


def _scale_and_weights(x: torch.Tensor, spec: WindowSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``a = max(x, 0)`` (padded with 0), each window's max of ``a`` and its scale.

    The scale is the max where it is > 0 (``+inf`` in windows holding ``+inf``), else 1; tap
    weights ``a / scale`` with NaN -> 1 are then ``a / max(a)``, or in ``+inf`` windows the
    indicator of the ``+inf`` taps (``inf / inf``), without a masked select per tap.
    """
    a = x.clamp(min=0)  # NaN stays NaN
    ap, m = pad_to_windows(a, spec, 0.0), window_peak(a, spec)  # every window holds a tap of x
    scale = torch.where(m > 0, m, torch.ones_like(m))
    return ap, m, scale


def _weight(
    a: torch.Tensor, scale: torch.Tensor, finite: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``a / scale`` with NaN -> 1 and +inf -> 1 (skipped when every window maximum is ``finite``),
    written into ``out`` when given."""
    # into a buffer: copy the (strided) tap first; the division then reads contiguous memory, which
    # PyTorch's CPU kernels vectorise (about 1.6x faster than dividing the strided view)
    w = torch.div(a, scale) if out is None else out.copy_(a).div_(scale)
    return w if finite else w.nan_to_num_(nan=1.0, posinf=1.0)


def _sample_taps(
    x: torch.Tensor, u: torch.Tensor, spec: WindowSpec
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Training-mode sampling on eager CPU calls over :class:`~poolkit.torch._taps.Polyphase` taps
    of ``max(x, 0)``: no padded copy, unit-stride reads, no gather, a batch chunk at a time
    (:meth:`~poolkit.torch._taps.Polyphase.chunks`) in reused buffers. None where a window maximum is
    not finite (the generic path's NaN and +inf rules apply).

    The generic path's arithmetic in the same order (the weights, their running sum and the
    threshold below the total), with two rewrites: the sampled tap is the number of taps whose
    running sum stays at or below the threshold (the sum never decreases), padding taps included;
    and the output follows the running sum, taking each tap's value while the sum before it is
    still at or below the threshold, so it ends at the crossing tap's.
    """
    out = tuple(u.shape)
    poly = Polyphase(spec)
    kernel = len(poly.taps)
    y = host_empty(out, x.dtype)
    win = host_empty(out, torch.uint8 if kernel < 255 else torch.int32)
    work = chunk_buffers(out, x.dtype, 7)
    for b, phases in poly.chunks(x, out, writable=True):
        a = {ph: v.clamp_(min=0) for ph, v in phases.items()}  # copies, even at unit strides
        if not _sample_chunk(poly, a, u[b], y[b], win[b], work(b)):
            return None
    return y, win


def _sample_chunk(
    poly: Polyphase,
    a: dict[tuple[int, ...], torch.Tensor],
    u: torch.Tensor,
    y: torch.Tensor,
    win: torch.Tensor,
    work: list[torch.Tensor],
) -> bool:
    """One batch chunk of :func:`_sample_taps` into its ``y`` and ``win``; False where a window
    maximum is not finite. ``a``: the chunk's phases of ``max(x, 0)``; ``work``: seven buffers."""
    m, total, w, thr, c, under, count = work
    taps = [tap for tap in poly.taps if tap is not None]
    m.zero_()  # every window holds a tap of x: max(a) >= 0
    for oi, ph, pi in taps:
        torch.maximum(m[oi], a[ph][pi], out=m[oi])
    if not all_finite(m):
        return False
    scale = m.add_(torch.eq(m, 0, out=w))  # m where > 0, else 1 (m >= 0)
    total.zero_()
    for oi, ph, pi in taps:
        total[oi].add_(torch.div(a[ph][pi], scale[oi], out=w[oi]))
    torch.mul(total, 1 - torch.finfo(m.dtype).eps / 2, out=c)  # see _stochastic_forward
    thr = torch.mul(u, total, out=thr) if u.dtype == m.dtype else thr.copy_(u * total)
    torch.minimum(thr, c, out=thr)
    # 0/1 masks as floats: lerp_ by one selects exactly, and a random bool mask would cost
    # torch.where a branch misprediction per element (several times slower)
    y.zero_()
    c.zero_()
    count.zero_()
    under.fill_(1)  # running sum <= threshold, before the next tap
    for tap in poly.taps:
        if tap is not None:
            oi, ph, pi = tap
            v = a[ph][pi]
            y[oi].lerp_(v, under[oi])
            c[oi].add_(torch.div(v, scale[oi], out=w[oi]))
            torch.le(c, thr, out=under)
        count.add_(under)
    win.copy_(count)
    win.masked_fill_(total <= 0, len(poly.taps))  # no positive value: no sample, no gradient
    return True


def _stochastic_forward(
    x: torch.Tensor, u: torch.Tensor | None, spec: WindowSpec, training: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Output and what the backward needs (training: the sample index; eval: scale, q, 1/sum)."""
    if training and cpu_fast_path(x):
        assert u is not None
        fast = _sample_taps(x, u, spec)
        if fast is not None:
            return fast[0], (fast[1],)
    ap, m, scale = _scale_and_weights(x, spec)
    views = tap_views(ap, spec)
    nan = torch.isnan(m)
    # every window maximum finite: every weight is (no NaN or +inf tap), and nan_to_num is the identity
    # (checked on the host: eager CPU calls only)
    finite = cpu_fast_path(m) and all_finite(m)
    w = torch.empty_like(m)  # one buffer for every tap's weight (no autograd in here)
    if training:
        assert u is not None
        s = torch.zeros_like(m)
        for a in views:
            s.add_(_weight(a, scale, finite, w))
        # threshold strictly below the total, so some tap always crosses it when the total is > 0:
        # s * (1 - eps / 2) is the float just below s (nextafter, which ONNX lacks) for s = 0 or
        # s >= 1 (the largest tap weighs exactly 1)
        below = s * (1 - torch.finfo(s.dtype).eps / 2)
        thr = torch.minimum((u * s).to(s.dtype), below)
        kernel = len(views)
        idx_dtype = torch.uint8 if kernel < 255 else torch.int32
        win = torch.zeros(m.shape, dtype=idx_dtype, device=m.device)
        c, after = torch.zeros_like(m), torch.empty_like(m)
        new, crossed = torch.empty(m.shape, dtype=torch.bool, device=m.device), torch.empty_like(nan)
        for t, a in enumerate(views):
            torch.add(c, _weight(a, scale, finite, w), out=after)
            # the running sum crosses the threshold at this tap
            torch.le(c, thr, out=new).logical_and_(torch.gt(after, thr, out=crossed))
            c, after = after, c
            if t:  # one crossing per window, so adding marks it (a byte view of the mask: no cast)
                win.add_(new.view(torch.uint8) if idx_dtype == torch.uint8 else new.to(idx_dtype), alpha=t)
        base, offs = flat_taps(spec, tuple(ap.shape[2:]), ap.device)
        flat = base + torch.take(offs, win.long())
        n, ch = m.shape[:2]
        y = ap.reshape(n, ch, -1).gather(2, flat.reshape(n, ch, -1)).reshape(m.shape)
        y = torch.where(nan, m, y)  # a window without a sample has a = 0 at its tap 0: y = 0
        # windows without a sample (no positive value, or a NaN) pass no gradient: index K
        has = (s > 0) & ~nan
        win = torch.where(has, win, torch.full_like(win, kernel))
        return y, (win,)
    s1 = torch.zeros_like(m)
    s2 = torch.zeros_like(m)
    for a in views:
        _weight(a, scale, finite, w)
        s1.add_(w)
        s2.addcmul_(w, w)
    has = s1 > 0
    safe = s1 + (~has).to(s1.dtype)  # 1 where the window has no positive value (its s2 is 0 too)
    q = s2 / safe
    y = torch.where(nan, m, scale * q)  # +inf windows: inf * 1
    live = has & torch.isfinite(m)
    inv = live.to(s1.dtype) / safe
    return y, (scale, q, inv)


class _Stochastic(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, u: torch.Tensor | None, spec: WindowSpec, training: bool
    ) -> torch.Tensor:
        y, saved = _stochastic_forward(x, u, spec, training)
        ctx.spec, ctx.training = spec, training
        if training:
            ctx.save_for_backward(*saved)
        else:
            ctx.save_for_backward(x, *saved)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        spec = ctx.spec
        if ctx.training:
            (win,) = ctx.saved_tensors
            return tap_select_adjoint(g, win, spec), None, None, None
        x, scale, q, inv = ctx.saved_tensors
        # NaN and +-inf taps lie only in windows that pass no gradient (inv = 0 there)
        xz = zero_nonfinite(pad_to_windows(x, spec, 0.0))
        if torch.is_grad_enabled():
            # double backward: q and 1/sum as functions of x (y / scale is exact for any fixed scale)
            s1 = torch.zeros_like(q)
            s2 = torch.zeros_like(q)
            for v in tap_views(xz, spec):
                w = v.clamp(min=0) / scale
                s1 = s1 + w
                s2 = s2 + w * w
            live = inv > 0
            safe = s1 + (~live).to(s1.dtype)
            q = s2 / safe
            inv = live.to(s1.dtype) / safe
        gs = g * inv
        terms = (((v.clamp(min=0) / scale) * 2 - q) * gs * (v > 0).to(gs.dtype) for v in dense_taps(xz, spec))
        return TapAdjoint(spec, x).add_all(terms).result(), None, None, None


# --------------------------------------------------------------------------- mixed


def mixed_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    alpha: Any = None,
    mode: str = "layer",
    training: bool = True,
    rng: Any = None,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Mixed pooling ``a * max_pool(x) + (1 - a) * avg_pool(x)``; see :func:`poolkit.ops.mixed_pool`.

    ``alpha=None``: ``a = lambda`` drawn in {0, 1} (``training=True``, from
    ``rng``) or 1/2 (``training=False``), Yu et al. 2014. ``alpha`` given
    (a float or a tensor, learnable): Lee et al. 2016. ``mode`` sets its
    shape: ``"layer"`` ``()``, ``"channel"`` ``(C,)``, ``"window"`` the
    output's spatial shape. A drawn ``lambda`` passed as ``alpha``
    reproduces the call, in either backend.

    Notes
    -----
    Autograd through poolkit's torch ``max_pool`` and ``avg_pool``
    (``count_include_pad=True``); non-finite windows follow the NumPy
    reference (a term whose coefficient is 0 is dropped, and they add nothing
    to ``alpha``'s gradient). The values of an ``alpha`` tensor are not
    checked against [0, 1] (that would wait for the device): keep it there,
    e.g. with a sigmoid or a clamp (:class:`poolkit.torch.MixedPool2d` clamps).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import mixed_pool1d
    >>> x = torch.tensor([[[1.0, 3.0, -2.0, 0.0]], [[4.0, 0.0, 2.0, 2.0]]])
    >>> mixed_pool1d(x, 2, alpha=0.25)
    tensor([[[ 2.2500, -0.7500]],
    <BLANKLINE>
            [[ 2.5000,  2.0000]]])
    """
    return _mixed_pool(
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        alpha=alpha,
        mode=mode,
        training=training,
        rng=rng,
        data_format=data_format,
    )


def _alpha(op: str, alpha: Any, mode: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The NumPy reference's checks of ``alpha`` (values only for floats and arrays: a tensor's stay
    on its device), in plain Python for tensors and floats so they trace under ``torch.compile``."""
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if mode != "layer":
            _check_alpha(op, np.zeros(()), mode, shape)  # raises the shape message
        if not 0 <= alpha <= 1:
            _check_alpha(op, alpha, mode, shape)  # raises the range message
        return torch.full(shape, float(alpha), dtype=like.dtype, device=like.device)
    if not isinstance(alpha, torch.Tensor):
        return torch.as_tensor(
            _check_alpha(op, alpha, mode, shape), dtype=like.dtype, device=like.device
        ).reshape(shape)
    if alpha.is_complex() or alpha.dtype == torch.bool:
        raise PoolingConfigError(
            f"{op}: alpha must be real numbers in [0, 1], got dtype {alpha.dtype}. "
            f"Pass e.g. alpha=0.5 or a float tensor."
        )
    got = tuple(alpha.shape)
    if not (got == shape or (mode == "layer" and got == (1,))):
        _check_alpha(op, np.zeros(got), mode, shape)  # raises the shape message
    return param_tensor(alpha, like).reshape(shape)


def _mixed_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    alpha: Any = None,
    mode: str = "layer",
    training: bool = True,
    rng: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "mixed_pool",
) -> torch.Tensor:
    mode = check_choice(op, "mode", mode, MODES)
    training = check_bool(op, "training", training)
    p, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    gen = as_generator(op, rng, p.x.device)
    xc = upcast(p.x)
    nd, c = p.nd, xc.shape[1]
    shape = {"layer": (), "channel": (c,), "window": spec.output_size}[mode]
    if alpha is not None:
        a = _alpha(op, alpha, mode, shape, xc)
    elif training:
        a = torch.randint(0, 2, shape, generator=gen, device=xc.device).to(xc.dtype)
    else:
        a = torch.full(shape, 0.5, dtype=xc.dtype, device=xc.device)
    a = a.reshape({"layer": (), "channel": (1, c, *[1] * nd), "window": (1, 1, *spec.output_size)}[mode])
    pads = native_window(spec)
    if pads is not None and needs_grad(xc, a) and xc.is_contiguous() and cpu_fast_path(xc):
        return p.to_user(_MixedFunction.apply(xc, a, spec, pads).to(p.dtype))
    win = dict(ndim=nd, op=op)
    mx = _max_pool(xc, kernel_size, stride, padding, 1, ceil_mode, **win)
    av = _avg_pool(xc, kernel_size, stride, padding, ceil_mode, True, **win)
    return p.to_user(_combine(a, mx, av).to(p.dtype))


class _MixedFunction(torch.autograd.Function):
    """Mixed pooling on the CPU with one input-sized gradient: the average branch's adjoint, into which
    the max branch's gradient is added at the winners (``scatter_add_``: deterministic on the CPU).

    Autograd through the two pooling calls would allocate a gradient per branch and a third for their
    sum. ``dy/dmax = a`` and ``dy/davg = 1 - a`` everywhere; ``dy/da = max - avg`` where finite.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, a: torch.Tensor, spec: WindowSpec, pads: tuple[int, ...]
    ) -> torch.Tensor:
        k, s, nd = spec.kernel_size, spec.stride, spec.ndim
        mx, idx = MAX_POOL[nd](x, k, s, pads, 1, spec.ceil_mode, True)
        av = AVG_POOL[nd](x, k, s, pads, spec.ceil_mode, True)
        ctx.spec, ctx.pads = spec, pads
        ctx.save_for_backward(x, a, idx, mx, av)
        d = mx - av
        if not all_finite(d):
            return _combine(a, mx, av)
        lo = a <= 0.5  # _combine's formula with every d finite: av + a d, or mx - (1 - a) d
        return torch.where(lo, av, mx).addcmul_(torch.where(lo, a, a - 1), d)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        x, a, idx, mx, av = ctx.saved_tensors
        spec, pads = ctx.spec, ctx.pads
        if torch.is_grad_enabled():  # double backward: autograd through the pooling kernels
            k, s, nd = spec.kernel_size, spec.stride, spec.ndim
            y = _combine(
                a,
                MAX_POOL[nd](x, k, s, pads, 1, spec.ceil_mode),
                AVG_POOL[nd](x, k, s, pads, spec.ceil_mode, True),
            )
            return (*generic_grads(y, (x, a), ctx.needs_input_grad[:2], g), None, None)
        gx = ga = None
        if ctx.needs_input_grad[0]:
            gmax = g * a
            gx = native_avg_adjoint(g - gmax, spec, pads, True, x)
            n, c = x.shape[:2]
            gx.view(n, c, -1).scatter_add_(2, idx.reshape(n, c, -1), gmax.reshape(n, c, -1))
        if ctx.needs_input_grad[1]:
            d = mx - av
            ga = (g * d.nan_to_num_(0.0, 0.0, 0.0)).sum_to_size(a.shape)
        return gx, ga, None, None


def _combine(a: torch.Tensor, mx: torch.Tensor, av: torch.Tensor) -> torch.Tensor:
    """``a * mx + (1 - a) * av`` as the NumPy reference computes it.

    ``av + a * d`` for ``a <= 1/2`` and ``mx - (1 - a) * d`` above (``d = mx - av``): exact at
    ``a = 0``, ``a = 1`` and ``mx == av``. Where ``d`` is not finite, a term whose coefficient is 0
    is dropped and ``a`` gets no gradient; the selects keep every unused branch's gradient finite.
    """
    d = mx - av
    fin = torch.isfinite(d)
    d0 = torch.where(fin, d, torch.zeros_like(d))
    lo = a <= 0.5
    y = torch.where(lo, av, mx) + torch.where(lo, a, a - 1) * d0
    ad = a.detach()
    zero = torch.zeros_like(mx)
    special = torch.where(ad == 0, zero, mx) * ad + torch.where(ad == 1, zero, av) * (1 - ad)
    return torch.where(fin, y, special)


# --------------------------------------------------------------------------- S3


def s3_pool(
    x: torch.Tensor,
    kernel_size: Any = 2,
    grid_size: Any = 2,
    *,
    stride: Any = 2,
    training: bool = True,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """S3Pool (Zhai et al., CVPR 2017): stride-1 max pooling, then random ordered rows per grid cell.

    See :func:`poolkit.ops.s3_pool`. ``samples`` (one 1-D integer tensor or
    array per spatial axis: the kept positions) replaces the draw from
    ``rng``; given, the result equals the NumPy reference's. Tensor samples
    are checked for shape and dtype only (their values would wait for the
    device): they must be strictly increasing and in range.

    Notes
    -----
    Autograd through poolkit's torch ``max_pool`` and ``index_select``
    (kept rows are distinct, so its backward adds to distinct rows:
    deterministic). Evaluation keeps every ``stride``-th row with a strided
    view. One draw per call and axis, shared by the batch and the channels.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import s3_pool1d
    >>> x = torch.tensor([[[1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 6.0, -1.0]]])
    >>> s3_pool1d(x, 2, grid_size=4, training=False)
    tensor([[[5., 2., 4., 6.]]])
    >>> s3_pool1d(x, 2, grid_size=4, samples=[torch.tensor([2, 3, 6, 7])])
    tensor([[[ 2.,  3.,  6., -1.]]])
    """
    return _s3_pool(
        x,
        kernel_size,
        grid_size,
        stride=stride,
        training=training,
        samples=samples,
        rng=rng,
        data_format=data_format,
    )


def s3_settings(
    op: str, nd: int, kernel_size: Any, grid_size: Any, stride: Any
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Checked ``kernel_size``, ``grid_size`` and ``stride`` tuples (the grid a multiple of the stride)."""
    k = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    grid = int_tuple(op, "grid_size", grid_size, nd, 1)
    s = int_tuple(op, "stride", stride, nd, 1)
    for j in range(nd):
        if grid[j] % s[j]:
            raise PoolingConfigError(
                f"{op}: grid_size must be a multiple of stride on every axis (each grid cell keeps "
                f"grid_size / stride rows), got grid_size={grid[j]} and stride={s[j]} on axis {j}. "
                f"Use grid_size={s[j] * max(1, round(grid[j] / s[j]))} or another multiple of {s[j]}."
            )
    return k, grid, s


def _rows(
    op: str, samples: Any, sizes: tuple[int, ...], s: tuple[int, ...], device: torch.device
) -> list[torch.Tensor]:
    nd = len(sizes)
    tensors = isinstance(samples, (list, tuple)) and any(isinstance(r, torch.Tensor) for r in samples)
    if not tensors and not torch.compiler.is_compiling():  # host data: check the values too
        return [
            torch.as_tensor(r, dtype=torch.int64, device=device)
            for r in _check_rows_numpy(op, samples, sizes, s)
        ]
    if len(samples) != nd:
        raise PoolingInputError(
            f"{op}: samples must be a sequence of {nd} 1-D integer arrays (the kept rows of each "
            f"spatial axis), got {len(samples)} of them."
        )
    out = []
    for j, (r, n, st) in enumerate(zip(samples, sizes, s)):
        t = torch.as_tensor(r, device=device)
        k = -(-n // st)
        if tuple(t.shape) != (k,) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise PoolingInputError(
                f"{op}: samples[{j}] must be {k} integer positions (ceil({n} / stride)), got dtype "
                f"{t.dtype} and shape {tuple(t.shape)}."
            )
        out.append(t.to(torch.int64))
    return out


class _KeptMax(torch.autograd.Function):
    """Stride-1 'same' max pooling evaluated at the kept positions only (S3Pool on the CPU).

    Each kernel tap is gathered at the kept positions (``torch.gather`` along every axis: the
    gathers are output-sized), a batch chunk at a time (:func:`~poolkit.torch._taps.batch_chunks`);
    taps in the padding read the nearest edge value, which the window holds too, so the maximum
    and its winner are those of ``-inf`` padding. The winner follows PyTorch's rule (first maximum
    in row-major order, the last NaN), kept as one byte per output; the backward adds the gradient
    at the winners with ``scatter_add`` (deterministic on the CPU; a chunk at a time, or in one
    recorded call for a double backward). The native stride-1 kernel would build the whole input-sized
    maximum map and its int64 indices first.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, spec: WindowSpec, *kept: torch.Tensor) -> torch.Tensor:
        out = (*x.shape[:2], *(len(r) for r in kept))
        kernel = math.prod(spec.kernel_size)
        code = host_zeros(out, torch.uint8 if kernel < 256 else torch.int32)
        best = host_empty(out, x.dtype)
        for b in batch_chunks(out):  # the gathers stay chunk-sized (cached, no fresh memory)
            cb, bb = code[b], best[b]
            for t, v in enumerate(_kept_taps(x[b], spec, kept, (b.stop - b.start, *out[1:]))):
                if t == 0:
                    bb.copy_(v)
                    continue
                take = torch.gt(v, bb).logical_or_(torch.isnan(v))
                cb.mul_(take.logical_not()).add_(take.to(cb.dtype), alpha=t)
                torch.maximum(bb, v, out=bb)  # NaN propagates: the running maximum of the kernels' rule
        ctx.spec = spec
        ctx.save_for_backward(code, *kept)
        ctx.mark_non_differentiable(code)
        return best

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        code, *kept = ctx.saved_tensors
        spec = ctx.spec
        n, c = g.shape[:2]
        # each tap's input position at each kept window, flat over the input plane:
        # (taps, windows), tiny; the winners' positions are one lookup in it
        table = torch.zeros((1, *(len(r) for r in kept)), dtype=torch.int64, device=g.device)
        for j, ax in enumerate(spec.axes):
            shape = [1] * (spec.ndim + 1)
            shape[1 + j] = len(kept[j])
            pos = _kept_positions(kept[j], ax) * math.prod(b.size for b in spec.axes[j + 1 :])
            table = (table.unsqueeze(1) + pos.reshape(-1, *shape[1:]).unsqueeze(0)).flatten(0, 1)
        windows = table[0].numel()
        step = torch.arange(windows, device=g.device)

        def winners(b: slice) -> torch.Tensor:  # flat input positions of chunk b's winners
            return torch.take(table, code[b].reshape(-1, c, windows).long().mul_(windows).add_(step))

        gx = host_zeros((n, c, math.prod(spec.input_size)), g.dtype)
        if torch.is_grad_enabled():  # double backward: recorded, out of place
            gx = gx.scatter_add(2, winners(slice(0, n)), g.reshape(n, c, windows))
        else:
            for b in batch_chunks(tuple(code.shape)):  # int64 indices a chunk at a time
                gx[b].scatter_add_(2, winners(b), g[b].reshape(-1, c, windows))
        return (gx.reshape(n, c, *spec.input_size), None, *([None] * len(kept)))


def _kept_positions(kept: torch.Tensor, ax: AxisWindow) -> torch.Tensor:
    """``(kernel, len(kept))``: the input position each tap of each kept 'same' window reads along
    ``ax``, taps in the padding clamped to the nearest edge."""
    taps = torch.arange(ax.kernel, device=kept.device) - ax.pad_lo
    return (taps.reshape(-1, 1) + kept.reshape(1, -1)).clamp_(0, ax.size - 1)


def _kept_taps(
    x: torch.Tensor, spec: WindowSpec, kept: tuple[torch.Tensor, ...], out: tuple[int, ...]
) -> Iterator[torch.Tensor]:
    """Each kernel tap (row-major) at the kept positions: output-shaped gathers, one axis after
    another, each partial gather shared by every tap with that prefix."""
    pos = [_kept_positions(r, ax) for r, ax in zip(kept, spec.axes)]

    def gather(v: torch.Tensor, j: int) -> Iterator[torch.Tensor]:
        if j == spec.ndim:
            yield v
            return
        shape = list(v.shape)
        shape[2 + j] = out[2 + j]
        view = [1] * len(out)
        view[2 + j] = out[2 + j]
        for p in pos[j]:
            yield from gather(torch.gather(v, 2 + j, p.reshape(view).expand(shape)), j + 1)

    return gather(x, 0)


def _draw_rows(gen: torch.Generator | None, n: int, g: int, s: int, device: torch.device) -> torch.Tensor:
    """``per = g / s`` sorted rows from each full cell of ``g``, ``ceil(r / s)`` from a partial one."""
    per = g // s
    q, r = divmod(n, g)
    parts = []
    if q:
        pick = torch.rand((q, g), generator=gen, device=device).argsort(dim=1)[:, :per]
        parts.append((pick.sort(dim=1).values + torch.arange(q, device=device)[:, None] * g).reshape(-1))
    if r:
        pick = torch.rand((r,), generator=gen, device=device).argsort()[: -(-r // s)]
        parts.append(pick.sort().values + q * g)
    return torch.cat(parts)


def _s3_pool(
    x: torch.Tensor,
    kernel_size: Any = 2,
    grid_size: Any = 2,
    *,
    stride: Any = 2,
    training: bool = True,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "s3_pool",
) -> torch.Tensor:
    training = check_bool(op, "training", training)
    nd = nd_of(op, x, ndim, kernel_size, grid_size, stride)
    k, grid, s = s3_settings(op, nd, kernel_size, grid_size, stride)
    p = prepare(x, op=op, nd=nd, data_format=data_format)
    gen = as_generator(op, rng, p.x.device)
    sizes = p.spatial
    given = None if samples is None else _rows(op, samples, sizes, s, p.x.device)
    if cpu_fast_path(p.x):  # only the kept windows, never the whole stride-1 max map
        if training:
            kept = given or [_draw_rows(gen, sizes[j], grid[j], s[j], p.x.device) for j in range(nd)]
        else:
            kept = [torch.arange(0, sizes[j], s[j], device=p.x.device) for j in range(nd)]
        spec = window_spec(sizes, k, 1, "same", op=op)
        return p.to_user(_KeptMax.apply(p.x, spec, *kept))
    m = _max_pool(p.x, k, 1, "same", 1, False, ndim=nd, op=op)
    if not training:
        return p.to_user(m[(slice(None), slice(None), *(slice(None, None, st) for st in s))])
    rows = (
        given
        if given is not None
        else [_draw_rows(gen, sizes[j], grid[j], s[j], p.x.device) for j in range(nd)]
    )
    y = m
    for j, r in enumerate(rows):
        y = y.index_select(2 + j, r)
    return p.to_user(y)


_a = aliases(stochastic_pool, _stochastic_pool, (1, 2, 3))
stochastic_pool1d, stochastic_pool2d, stochastic_pool3d = (_a[f"stochastic_pool{i}d"] for i in (1, 2, 3))
_a = aliases(mixed_pool, _mixed_pool, (1, 2, 3))
mixed_pool1d, mixed_pool2d, mixed_pool3d = (_a[f"mixed_pool{i}d"] for i in (1, 2, 3))
_a = aliases(s3_pool, _s3_pool, (1, 2, 3))
s3_pool1d, s3_pool2d, s3_pool3d = (_a[f"s3_pool{i}d"] for i in (1, 2, 3))
