"""Gated, tree and detail-preserving pooling in torch: poolkit's learned pooling operators.

Semantics are the NumPy reference's (:mod:`poolkit.ops.gated`,
:mod:`~poolkit.ops.tree`, :mod:`~poolkit.ops.dpp`). The window dot products
``sum_k w_k x_k`` that gated and tree pooling share, the gate and DPP are
custom autograd Functions over tap loops (strided views, no kernel-volume
copy); their backward passes are written in torch ops, so double backward
works.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

from ..._validate import check_bool, check_real
from ...errors import PoolingConfigError, PoolingInputError
from ...geometry import WindowSpec
from ...ops._filters import check_filters
from ...ops.dpp import _param as _check_dpp_param
from ...ops.tree import _check_tree
from .._core import (
    Shaped,
    aliases,
    all_finite,
    cpu_fast_path,
    divisor,
    finite_bound,
    generic_grads,
    host_empty,
    host_ufunc,
    host_zeros,
    needs_grad,
    pad_to_windows,
    param_tensor,
    real_tensor,
    upcast,
    windowed,
)
from .._taps import (
    Polyphase,
    TapAdjoint,
    chunk_buffers,
    dense_taps,
    tap_index,
    tap_ranges,
    tap_views,
    window_max,
    window_sum,
)
from .classic import _avg_pool, _max_pool

__all__ = [
    "gated_pool",
    "gated_pool1d",
    "gated_pool2d",
    "gated_pool3d",
    "tree_pool",
    "tree_pool1d",
    "tree_pool2d",
    "tree_pool3d",
    "dpp_pool",
    "dpp_pool1d",
    "dpp_pool2d",
    "dpp_pool3d",
]


# --------------------------------------------------------------------------- shared pieces


def _filters(
    op: str, name: str, value: Any, kernel: tuple[int, ...], c: int, like: torch.Tensor, lead: str | None
) -> tuple[torch.Tensor, Shaped]:
    """A filter argument as ``(J, Cw, K)`` (Cw: 1 shared, or C) in ``like``'s dtype, and its shape.

    The NumPy reference's checks and messages (:func:`poolkit.ops._filters.check_filters`), in
    plain Python for tensors, so they trace under ``torch.compile``; values stay on the device.
    """
    if not isinstance(value, torch.Tensor):
        info = check_filters(op, name, value, kernel, c, np.float64, lead)
        value = torch.as_tensor(np.asarray(value), dtype=like.dtype, device=like.device)
        per_channel = info.per_channel
    else:
        real_tensor(op, name, value)
        shape = tuple(value.shape)
        nl = 0 if lead is None else 1
        per_channel = len(shape) == nl + len(kernel) + 1
        ok = (
            len(shape) in (nl + len(kernel), nl + len(kernel) + 1)
            and shape[len(shape) - len(kernel) :] == kernel
        )
        if ok and per_channel:
            ok = shape[nl] == c
        if not ok:
            pre = "" if lead is None else f"{lead}, "
            ks = ", ".join(map(str, kernel))
            raise PoolingInputError(
                f"{op}: {name} must have shape ({pre}{ks}) (shared by every channel) or ({pre}{c}, {ks}) "
                f"(one per channel), with kernel_size={kernel} and C={c}, got shape {shape}."
            )
        value = param_tensor(value, like)
    j = 1 if lead is None else int(value.shape[0])
    return value.reshape(j, c if per_channel else 1, math.prod(kernel)), Shaped(tuple(value.shape))


def _dots(x: torch.Tensor, w: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """``r[j] = sum_k w[j, :, k] x_k`` over each window's taps inside the input (zero padding):
    ``(J, N, C, *out)``."""
    j, cw, k = w.shape
    wb = w.reshape(j, 1, cw, *[1] * spec.ndim, k)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):  # recorded: out of place
        r = torch.zeros((j, *x.shape[:2], *spec.output_size), dtype=x.dtype, device=x.device)
        for t, v in enumerate(tap_views(pad_to_windows(x, spec, 0.0), spec)):
            r = r + wb[..., t] * v
        return r
    if cpu_fast_path(x):
        return _phase_dots(x, w, spec)
    r = torch.zeros((j, *x.shape[:2], *spec.output_size), dtype=x.dtype, device=x.device)
    buf = torch.empty_like(r[0])  # each tap's in-range samples, copied dense (see dense_taps)
    for t, rng in enumerate(tap_ranges(spec)):
        if rng is not None:
            oi, ii = rng
            v = buf[oi].copy_(x[ii])
            for i in range(j):  # one filter at a time, in place: no J-fold temporaries
                r[i][oi].addcmul_(v, wb[i, ..., t])
    return r


def _phase_dots(x: torch.Tensor, w: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """:func:`_dots` on eager CPU calls over :class:`~poolkit.torch._taps.Polyphase` taps (unit-stride
    reads), a batch chunk at a time (:meth:`~poolkit.torch._taps.Polyphase.chunks`)."""
    j, cw, k = w.shape
    wb = w.reshape(j, 1, cw, *[1] * spec.ndim, k)
    out = (*x.shape[:2], *spec.output_size)
    r = host_zeros((j, *out), x.dtype)
    poly = Polyphase(spec)
    for b, phases in poly.chunks(x, out):
        rb = r[:, b]
        for t, tap in enumerate(poly.taps):
            if tap is not None:
                oi, ph, pi = tap
                for i in range(j):  # one filter at a time, in place: no J-fold temporaries
                    rb[i][oi].addcmul_(phases[ph][pi], wb[i, ..., t])
    return r


class _WindowDots(torch.autograd.Function):
    """:func:`_dots` saving ``x`` and ``w`` (autograd through the tap loop would allocate an
    input-sized gradient per tap in the backward). No padded copy: the loops read and write each
    tap's in-range samples (:func:`~poolkit.torch._taps.tap_ranges`); on eager CPU calls from
    :class:`~poolkit.torch._taps.Polyphase` phases, a batch chunk at a time in both passes."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
        ctx.spec, ctx.cpu = spec, cpu_fast_path(x)
        ctx.save_for_backward(x, w)
        return _phase_dots(x, w, spec) if ctx.cpu else _dots(x, w, spec)

    @staticmethod
    def backward(ctx: Any, gr: torch.Tensor) -> tuple[Any, ...]:
        x, w = ctx.saved_tensors
        spec = ctx.spec
        j, cw, k = w.shape
        wb = w.reshape(j, 1, cw, *[1] * spec.ndim, k)
        gw = []
        if torch.is_grad_enabled():  # double backward: recorded, out of place, over a padded copy
            dims = (1, *range(3, 3 + spec.ndim))  # batch and space: the weight gradient is per channel
            xp = pad_to_windows(x, spec, 0.0)
            acc = TapAdjoint(spec, x)
            for t, (idx, v) in enumerate(zip(tap_index(spec), tap_views(xp, spec))):
                acc.add(idx, (gr * wb[..., t]).sum(0))
                gw.append((gr * v).sum(dim=dims))
            gx = acc.result()
        elif ctx.cpu:
            return _phase_dots_adjoint(gr, x, w, spec, ctx.needs_input_grad[1])
        else:
            gx = torch.zeros_like(x, memory_format=torch.contiguous_format)
            return gx, _dots_adjoint(gr, x, w, spec, gx), None
        g = torch.stack(gw, dim=-1)  # (J, C, K)
        if cw == 1:
            g = g.sum(dim=1, keepdim=True)
        return gx, g, None


def _phase_dots_adjoint(
    gr: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: WindowSpec, want_w: bool
) -> tuple[torch.Tensor, torch.Tensor | None, None]:
    """:func:`_dots_adjoint` over :class:`~poolkit.torch._taps.Polyphase` taps, a batch chunk at a
    time: each tap's term added into the chunk's phase-shaped gradients (unit strides), interleaved
    into the input's while cached; the phases are split again only for the filters' gradient."""
    j, cw, k = w.shape
    wb = w.reshape(j, 1, cw, *[1] * spec.ndim, k)
    plane = (0, *range(2, 2 + spec.ndim))
    out = tuple(gr.shape[1:])
    poly = Polyphase(spec)
    gx = poly.gradient(x)
    gw = torch.zeros((j, gr.shape[2], k), dtype=gr.dtype) if want_w else None
    work = chunk_buffers(out, gr.dtype, 2)
    for b, phases, gph in poly.gradient_chunks(x, out, gx, split=want_w):
        term, prod = work(b)
        grb = gr[:, b]
        for t, tap in enumerate(poly.taps):
            if tap is None:
                continue
            oi, ph, pi = tap
            tt = torch.mul(grb[0][oi], wb[0, ..., t], out=term[oi])
            for i in range(1, j):
                tt.addcmul_(grb[i][oi], wb[i, ..., t])
            gph[ph][pi].add_(tt)
            if gw is not None and phases is not None:  # phases are split where gw is wanted
                v = phases[ph][pi]
                for i in range(j):
                    gw[i, :, t] += torch.mul(grb[i][oi], v, out=prod[oi]).sum(dim=plane)
    if gw is None:
        return gx, None, None
    return gx, (gw.sum(dim=1, keepdim=True) if cw == 1 else gw), None


def _dots_adjoint(
    gr: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: WindowSpec, gx: torch.Tensor
) -> torch.Tensor:
    """Add the adjoint of :func:`_dots` for ``x`` into ``gx`` (unpadded) and return the filters'
    gradient, shaped like ``w``. Outside autograd: output-sized buffers reused for every tap."""
    j, cw, k = w.shape
    wb = w.reshape(j, 1, cw, *[1] * spec.ndim, k)
    plane = (0, *range(2, 2 + spec.ndim))  # batch and space: the weight gradient is per channel
    gw = []
    term, prod, buf = (torch.empty_like(gr[0]) for _ in range(3))
    for t, rng in enumerate(tap_ranges(spec)):
        if rng is None:
            gw.append(torch.zeros((j, gr.shape[2]), dtype=gr.dtype, device=gr.device))
            continue
        oi, ii = rng
        tt = torch.mul(gr[0][oi], wb[0, ..., t], out=term[oi])
        for i in range(1, j):
            tt.addcmul_(gr[i][oi], wb[i, ..., t])
        gx[ii].add_(tt)
        v = buf[oi].copy_(x[ii])
        gw.append(torch.stack([torch.mul(gr[i][oi], v, out=prod[oi]).sum(dim=plane) for i in range(j)]))
    g = torch.stack(gw, dim=-1)  # (J, C, K)
    return g.sum(dim=1, keepdim=True) if cw == 1 else g


def _window_dots(x: torch.Tensor, w: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    return _WindowDots.apply(x, w, spec) if needs_grad(x, w) else _dots(x, w, spec)


class _Gate(torch.autograd.Function):
    """``sigmoid(z)`` and ``1 - sigmoid(z)``, both accurate when saturated, with the derivative
    ``s (1 - s)`` taken as their product (``s * (1 - s)`` would lose it to cancellation)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, sc = torch.sigmoid(z), torch.sigmoid(-z)
        ctx.save_for_backward(s, sc)
        return s, sc

    @staticmethod
    def backward(ctx: Any, gs: torch.Tensor, gsc: torch.Tensor) -> torch.Tensor:
        s, sc = ctx.saved_tensors
        return (gs - gsc) * (s * sc)


def _gated_mix(z: torch.Tensor, mx: torch.Tensor, av: torch.Tensor) -> torch.Tensor:
    """``s max + (1 - s) avg``, ``s = sigmoid(z)``, under autograd; NaN in windows holding NaN or
    inf, whatever the gate."""
    s, sc = _gate(z)
    return s * mx + sc * av + (mx - av) * 0


def _gate(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if needs_grad(z):
        return _Gate.apply(z)
    return torch.sigmoid(z), torch.sigmoid(-z)


# --------------------------------------------------------------------------- gated


def gated_pool(
    x: torch.Tensor,
    weight: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Gated max-average pooling ``s max + (1 - s) avg``, ``s = sigmoid(w . x_R)`` (Lee et al., AISTATS 2016).

    See :func:`poolkit.ops.gated_pool`. ``weight`` is the gate filter,
    ``kernel_size`` shaped (shared by every channel) or ``(C, *kernel_size)``
    (one per channel); a tensor with ``requires_grad`` learns.

    Notes
    -----
    Max branch: poolkit's torch ``max_pool`` (``-inf`` padding); average:
    ``avg_pool`` with ``count_include_pad=True``; the gate counts padding
    and ceil-mode overhang as 0. A window holding a NaN or an infinity gives
    NaN. The gate is a custom Function whose derivative stays accurate when
    saturated; float16/bfloat16 are computed in float32.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import gated_pool1d
    >>> x = torch.tensor([[[1.0, 3.0, 2.0, 0.0]]])
    >>> gated_pool1d(x, torch.zeros(2), 2)
    tensor([[[2.5000, 1.5000]]])
    """
    return _gated_pool(x, weight, kernel_size, stride, padding, ceil_mode, data_format=data_format)


def _gated_pool(
    x: torch.Tensor,
    weight: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "gated_pool",
) -> torch.Tensor:
    p, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    nd = p.nd
    xc = upcast(p.x)
    w, _ = _filters(op, "weight", weight, spec.kernel_size, xc.shape[1], xc, None)
    if cpu_fast_path(xc):
        if needs_grad(xc, w):
            return p.to_user(_GatedTaps.apply(xc, w, spec).to(p.dtype))
        return p.to_user(_gated_taps(xc, w, spec)[0].to(p.dtype))
    z = _window_dots(xc, w, spec)[0]
    mx = _max_pool(xc, kernel_size, stride, padding, 1, ceil_mode, ndim=nd, op=op)
    av = _avg_pool(xc, kernel_size, stride, padding, ceil_mode, True, ndim=nd, op=op)
    y = _gated_mix(z, mx, av)
    return p.to_user(y.to(p.dtype))


def _count(spec: WindowSpec, include_pad: bool, like: torch.Tensor) -> float | torch.Tensor:
    """:func:`~poolkit.torch._core.divisor`, as a number where every window averages the same count."""
    d = spec.divisor(include_pad).clip(1, None)
    if d.size and d.min() == d.max():
        return float(d.flat[0])
    return divisor(spec, include_pad, like)


def _gated_taps(x: torch.Tensor, w: torch.Tensor, spec: WindowSpec) -> tuple[torch.Tensor, ...]:
    """Gated pooling on eager CPU calls in one loop over :class:`~poolkit.torch._taps.Polyphase`
    taps, each feeding the running maximum, the sum and the gate's dot product in place, where the
    generic path runs max pooling (with int64 indices), average pooling and the dot products as
    three passes over the input.

    The input is split into phases a batch chunk at a time, in reused buffers (the backward splits
    it again), so no phase-shaped copy of the whole input is made or kept.

    Returns ``(y, max, avg, s, 1 - s)``; windows holding a NaN or an infinity give NaN.
    """
    out = (*x.shape[:2], *spec.output_size)
    wb = w.reshape(w.shape[1], *[1] * spec.ndim, w.shape[2])
    mx = host_empty(out, x.dtype).fill_(-math.inf)
    av, z = host_zeros(out, x.dtype), host_zeros(out, x.dtype)
    poly = Polyphase(spec)
    for b, phases in poly.chunks(x, out):
        mxb, avb, zb = mx[b], av[b], z[b]
        for t, tap in enumerate(poly.taps):
            if tap is not None:
                oi, ph, pi = tap
                v, m = phases[ph][pi], mxb[oi]
                torch.maximum(m, v, out=m)
                avb[oi].add_(v)
                zb[oi].addcmul_(v, wb[..., t])
    av.div_(_count(spec, True, av))
    s, sc = torch.sigmoid(z), torch.sigmoid(z.neg_(), out=z)
    y = torch.mul(s, mx, out=host_empty(out, x.dtype)).addcmul_(sc, av)
    if not all_finite(y):
        y.add_((mx - av).mul_(0))  # NaN in windows holding NaN or inf, whatever the gate
    return y, mx, av, s, sc


class _GatedTaps(torch.autograd.Function):
    """:func:`_gated_taps` with its gradient in one more loop over the taps: one input-sized
    gradient, each tap's term (average share, the max share at each window's first maximum in
    PyTorch's scan order, the gate's dot-product adjoint) added in place. Windows holding
    non-finite values, and double backward, take autograd through the generic formulation."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
        y, mx, av, s, sc = _gated_taps(x, w, spec)
        ctx.spec, ctx.finite = spec, all_finite(y)
        ctx.save_for_backward(x, w, mx, av, s, sc)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        x, w, mx, av, s, sc = ctx.saved_tensors
        spec = ctx.spec
        if torch.is_grad_enabled() or not ctx.finite:  # autograd through the generic formulation
            with torch.enable_grad():
                av2 = window_sum(x, spec) / divisor(spec, True, x)
                y = _gated_mix(_window_dots(x, w, spec)[0], window_max(x, spec), av2)
            return (*generic_grads(y, (x, w), ctx.needs_input_grad[:2], g), None)
        out = mx.shape
        wb = w.reshape(w.shape[1], *[1] * spec.ndim, w.shape[2])
        # dy/dmax = s, dy/davg = 1 - s, dy/dz = (max - avg) s (1 - s), as the gate's Function
        gm = torch.mul(g, s, out=host_empty(out, x.dtype))  # the max share not yet given to a winner
        ga = torch.mul(g, sc, out=host_empty(out, x.dtype)).div_(_count(spec, True, g))
        gz = torch.sub(mx, av, out=host_empty(out, x.dtype)).mul_(g).mul_(s).mul_(sc)
        poly = Polyphase(spec)
        gx = poly.gradient(x)
        plane = (0, *range(2, 2 + spec.ndim))
        gw = torch.zeros(x.shape[1], len(poly.taps), dtype=x.dtype) if ctx.needs_input_grad[1] else None
        work = chunk_buffers(out, x.dtype, 3)
        for b, phases, gph in poly.gradient_chunks(x, out, gx):
            assert phases is not None
            term, hit, prod = work(b)
            gmb, gab, gzb, mxb = gm[b], ga[b], gz[b], mx[b]
            for t, tap in enumerate(poly.taps):
                if tap is None:
                    continue
                oi, ph, pi = tap
                v = phases[ph][pi]
                # the 0/1 hits as floats: a product, where a bool mask would cost torch.where a
                # branch misprediction per element
                tt = torch.mul(gmb[oi], torch.eq(v, mxb[oi], out=hit[oi]), out=term[oi])
                gmb[oi].sub_(tt)
                tt.add_(gab[oi]).addcmul_(gzb[oi], wb[..., t])
                gph[ph][pi].add_(tt)
                if gw is not None:
                    gw[:, t] += torch.mul(v, gzb[oi], out=prod[oi]).sum(dim=plane)
        if gw is None:
            return gx, None, None
        if w.shape[1] == 1:  # gw: (C, K)
            gw = gw.sum(dim=0, keepdim=True)
        return (gx if ctx.needs_input_grad[0] else None), gw.reshape(w.shape), None


# --------------------------------------------------------------------------- tree


def tree_pool(
    x: torch.Tensor,
    leaves: Any,
    gates: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Tree pooling: leaf filters ``v_m . x_R`` mixed by a binary tree of sigmoid gates (Lee et al., 2016).

    See :func:`poolkit.ops.tree_pool`: ``leaves`` ``(L, [C,] *kernel_size)``,
    ``gates`` ``(L - 1, [C,] *kernel_size)`` in heap order (node 0 the root,
    children ``2k + 1`` and ``2k + 2``); ``f_k = s_k f_left + (1 - s_k) f_right``
    with ``s_k = sigmoid(w_k . x_R)``. Padding and ceil-mode overhang count as 0.

    Notes
    -----
    All ``2L - 1`` filter responses come from one tap loop (a custom
    Function saving only the padded input and the filters); autograd then
    keeps the ``2L - 1`` responses and ``L - 1`` gates, output-sized each.
    float16/bfloat16 are computed in float32.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import tree_pool1d
    >>> x = torch.tensor([[[1.0, 3.0, 2.0, 0.0]]])
    >>> leaves = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    >>> tree_pool1d(x, leaves, torch.zeros(1, 2), 2)
    tensor([[[1.5000, 1.5000]]])
    """
    return _tree_pool(x, leaves, gates, kernel_size, stride, padding, ceil_mode, data_format=data_format)


def _tree_pool(
    x: torch.Tensor,
    leaves: Any,
    gates: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "tree_pool",
) -> torch.Tensor:
    p, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    xc = upcast(p.x)
    c = xc.shape[1]
    wl, fl = _filters(op, "leaves", leaves, spec.kernel_size, c, xc, "L")
    wg, fg = _filters(op, "gates", gates, spec.kernel_size, c, xc, "L - 1")
    _check_tree(op, fl, fg)
    n_leaves = wl.shape[0]
    cw = max(wl.shape[1], wg.shape[1])
    k = wl.shape[2]
    w = torch.cat([wg.expand(n_leaves - 1, cw, k), wl.expand(n_leaves, cw, k)])
    f = list(_window_dots(xc, w, spec).unbind(0))
    for node in reversed(range(n_leaves - 1)):  # bottom-up: children before parents
        s, sc = _gate(f[node])
        f[node] = s * f[2 * node + 1] + sc * f[2 * node + 2]
    return p.to_user(f[0].to(p.dtype))


# --------------------------------------------------------------------------- detail-preserving


def dpp_pool(
    x: torch.Tensor,
    alpha: Any,
    lam: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    asymmetric: bool = False,
    eps: float = 1e-3,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Detail-preserving pooling (Saeedan et al., CVPR 2018); see :func:`poolkit.ops.dpp_pool`.

    ``D = sum_q w_q I_q / sum_q w_q`` with ``w_q = alpha + rho(I_q - Itilde)``,
    ``rho(d) = sqrt(d^2 + eps^2)^lam`` (``max(0, d)`` when ``asymmetric``)
    and ``Itilde`` the window's plain average, over the taps inside the
    input. ``alpha`` and ``lam`` (``>= 0``): floats, or tensors of shape
    ``()`` or ``(C,)``, learnable.

    Notes
    -----
    A custom autograd Function: forward and backward are tap loops in log
    space, as in the NumPy reference (finite for any ``alpha``, ``lam`` and
    ``eps``), saving the padded input and three output-sized tensors; the
    backward is written in torch ops, so double backward works. The values
    of ``alpha``/``lam`` tensors are not checked (that would wait for the
    device): keep them finite and ``>= 0`` (a negative ``alpha`` gives NaN;
    :class:`poolkit.torch.DPPPool2d` clamps at 0). float16/bfloat16 are
    computed in float32.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import dpp_pool1d
    >>> x = torch.tensor([[[0.0, 0.0, 0.0, 3.0]]])
    >>> dpp_pool1d(x, 1.0, 0.0, 4)
    tensor([[[0.7500]]])
    >>> dpp_pool1d(x, 0.0, 1.0, 4)
    tensor([[[1.5000]]])
    """
    return _dpp_pool(
        x,
        alpha,
        lam,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        asymmetric=asymmetric,
        eps=eps,
        data_format=data_format,
    )


def _dpp_param(op: str, name: str, value: Any, c: int, like: torch.Tensor) -> torch.Tensor:
    """``alpha``/``lam`` as ``(1, 1 or C, 1, ...)`` in ``like``'s dtype; the NumPy reference's checks
    (values only for floats and arrays: a tensor's stay on its device)."""
    if isinstance(value, torch.Tensor):
        real_tensor(op, name, value)
        if tuple(value.shape) not in ((), (c,)):
            raise PoolingInputError(
                f"{op}: {name} must be a scalar (one per layer) or shaped (C,) = ({c},) (one per "
                f"channel), got shape {tuple(value.shape)}."
            )
        t = param_tensor(value, like)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value >= 0):
            raise PoolingConfigError(
                f"{op}: {name} must be finite and >= 0, got {value!r}. Keep it in range, e.g. with "
                f"{name}.clamp(min=0) after each update."
            )
        t = torch.full((), float(value), dtype=like.dtype, device=like.device)
    else:
        a = _check_dpp_param(op, name, value, c, np.float64).value
        t = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    return t.reshape(1, -1, *[1] * (like.dim() - 2))


class _Geometry:
    """Per-call constants of the DPP tap loops: which windows hold each tap, 1 / taps per window,
    and the range limits of ``d^2`` and ``eps^2``."""

    def __init__(self, spec: WindowSpec, like: torch.Tensor, eps: float, asym: bool) -> None:
        self.spec, self.asym = spec, asym
        per_axis: list[list[torch.Tensor | None]] = []
        for j, ax in enumerate(spec.axes):
            shape = [1] * (2 + spec.ndim)
            shape[2 + j] = ax.out
            o = torch.arange(ax.out, device=like.device).reshape(shape)
            # tap k reads the input for outputs [o_lo, o_hi) and padding elsewhere
            per_axis.append(
                [
                    None if (o_lo, o_hi) == (0, ax.out) else ((o >= o_lo) & (o < o_hi)).to(like.dtype)
                    for o_lo, o_hi, _ in ax.taps
                ]
            )
        self.valid: list[torch.Tensor | None] = []  # per tap, row-major; None: every window holds it
        for k in itertools.product(*(range(ax.kernel) for ax in spec.axes)):
            m = None
            for j, kj in enumerate(k):
                mj = per_axis[j][kj]
                if mj is not None:
                    m = mj if m is None else m * mj
            self.valid.append(m)
        self.inv = 1.0 / divisor(spec, False, like)  # 1 / taps inside the input
        info = torch.finfo(like.dtype)
        self.big = float(info.max) / 4
        self.eps2 = min(max(eps * eps, float(info.tiny)), self.big)
        self.eps2_t = torch.tensor(self.eps2, dtype=like.dtype, device=like.device)
        self.bounded = False

    def deviation(
        self, v: torch.Tensor, m: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``d = I - Itilde`` (``max(0, .)`` when asymmetric) and ``q = min(d^2, big) + eps^2``;
        written into the buffers ``out`` (``d``, ``q``) when given (outside autograd), without the
        ``min`` where :meth:`bound` showed that ``d^2`` stays below ``big``."""
        if out is None:
            d = v - m
            d = d.clamp(min=0) if self.asym else d
            return d, (d * d).clamp(max=self.big) + self.eps2
        d = torch.sub(v, m, out=out[0])
        if self.asym:
            d.clamp_(min=0)
        if self.bounded:
            return d, torch.addcmul(self.eps2_t, d, d, out=out[1])
        return d, torch.mul(d, d, out=out[1]).clamp_(max=self.big).add_(self.eps2)

    def bound(self, magnitude: float) -> None:
        """Note the input's largest magnitude (:func:`~poolkit.torch._core.finite_bound`): where
        ``(2 magnitude)^2`` is below ``big`` (up to rounding), no ``d^2`` reaches the ``min``."""
        self.bounded = 4.0 * magnitude * magnitude * (1 + 1e-3) < self.big


def _cap(e: torch.Tensor) -> torch.Tensor:
    """A tap's log weight, capped at 0 where it lies in padding (masked out afterwards; its exponent
    is not bounded by the window's largest weight and could overflow). A select, not a clamp: the
    window's largest tap sits exactly at 0 and must keep its derivative."""
    return torch.where(e > 0, torch.zeros_like(e), e)


def _dpp_core(
    xp: torch.Tensor, la: torch.Tensor, hl: torch.Tensor, geo: _Geometry, lmax: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``D``, the log of each window's largest weight (given, or the max over its taps), the sum of
    the weights divided by it, and the tap views. ``la = log(alpha)``, ``hl = lam / 2``."""
    spec = geo.spec
    m = torch.zeros((*xp.shape[:2], *spec.output_size), dtype=xp.dtype, device=xp.device)
    for v in dense_taps(xp, spec):
        m = m + v  # padding is 0: the sum of the taps inside the input
    m = m * geo.inv
    if lmax is None:
        # rho grows with d^2 (with max(0, d)^2 when asymmetric) as lam >= 0: the largest weight
        qmax = torch.zeros_like(m)
        for v, ok in zip(dense_taps(xp, spec), geo.valid):
            q = geo.deviation(v, m)[1]
            qmax = torch.maximum(qmax, q if ok is None else q * ok)
        lmax = torch.maximum(torch.log(qmax) * hl, la)
    ea = torch.exp(la - lmax)  # alpha / the largest weight
    s = torch.zeros_like(m)
    y = torch.zeros_like(m)
    for v, ok in zip(dense_taps(xp, spec), geo.valid):
        q = geo.deviation(v, m)[1]
        e = torch.log(q) * hl - lmax  # <= 0 at taps inside the input
        if ok is None:
            w = torch.exp(e) + ea  # (alpha + rho) / the largest weight
        else:
            w = (torch.exp(_cap(e)) + ea) * ok
        s = s + w
        y = y + w * v
    return y / s, lmax, s


def _reduce_param(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-element parameter gradient summed over batch and space (and channels when shared)."""
    out = g.sum(dim=(0, *range(2, g.dim())), keepdim=True)
    return out.sum(dim=1, keepdim=True) if like.shape[1] == 1 else out


def _dpp_vjp(
    xp: torch.Tensor,
    alpha: torch.Tensor,
    lam: torch.Tensor,
    g: torch.Tensor,
    lmax: torch.Tensor,
    s: torch.Tensor,
    y: torch.Tensor,
    geo: _Geometry,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The NumPy reference's backward in torch ops (scaled by the largest weight throughout)."""
    spec = geo.spec
    hl = lam / 2
    m = torch.zeros_like(g)
    for v in dense_taps(xp, spec):
        m = m + v
    m = m * geo.inv
    gs = g / s
    ea = torch.exp(torch.log(alpha) - lmax)
    gm = torch.zeros_like(g)  # the gradient reaching Itilde
    gl = torch.zeros_like(g)
    acc = TapAdjoint(spec, xp)
    for idx, v, ok in zip(tap_index(spec), dense_taps(xp, spec), geo.valid):
        d, q = geo.deviation(v, m)
        h = torch.log(q)  # 2 log sqrt(d^2 + eps^2)
        e = h * hl - lmax
        r = torch.exp(e) if ok is None else torch.exp(_cap(e)) * ok  # rho / the largest weight
        w = r + (ea if ok is None else ea * ok)
        beta = (v - y) * gs * r  # beta_q rho_q (scaled)
        gl = gl + h * beta
        dd = d / q * lam * beta  # beta_q rho'(d_q) = beta_q rho_q lam d / (d^2 + eps^2)
        acc.add(idx, w * gs + dd)  # g w_q / S (I[q] as the weighted value) and rho's own term
        gm = gm - dd
    gm = gm * geo.inv
    for idx, ok in zip(tap_index(spec), geo.valid):
        acc.add(idx, gm if ok is None else gm * ok)
    # dD/dalpha = sum_q (I[q] - D) / S = count (Itilde - D) / S, S unscaled
    ga = (m - y) * gs / geo.inv * torch.exp(-lmax)
    return acc.padded, _reduce_param(ga, alpha), _reduce_param(gl, lam) / 2


class _DPP(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, xp: torch.Tensor, alpha: torch.Tensor, lam: torch.Tensor, geo: _Geometry
    ) -> torch.Tensor:
        y, lmax, s = _dpp_core(xp, torch.log(alpha), lam / 2, geo)
        ctx.geo = geo
        ctx.save_for_backward(xp, alpha, lam, lmax, s, y)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        xp, alpha, lam, lmax, s, y = ctx.saved_tensors
        if torch.is_grad_enabled():
            # double backward: D and S as functions of the inputs; every formula is exact for
            # any fixed scale, so the largest weight stays a constant
            y, _, s = _dpp_core(xp, torch.log(alpha), lam / 2, ctx.geo, lmax.detach())
        gx, ga, gl = _dpp_vjp(xp, alpha, lam, g, lmax, s, y, ctx.geo)
        return gx, ga, gl, None


def _dpp_chunk_forward(
    taps: list[tuple[tuple[slice, ...], torch.Tensor]],
    m: torch.Tensor,
    lmax: torch.Tensor,
    s: torch.Tensor,
    y: torch.Tensor,
    work: list[torch.Tensor],
    la: torch.Tensor,
    hl: torch.Tensor,
    geo: _Geometry,
) -> None:
    """One batch chunk of :func:`_dpp_taps_forward`, into the chunk's ``m``, ``lmax``, ``s`` and
    ``y``; ``work``: three chunk-sized buffers (the last holding finite values)."""
    hi, lo, q = work
    m.zero_()
    hi.fill_(-math.inf)
    if not geo.asym:
        lo.fill_(math.inf)
    for oi, v in taps:
        m[oi].add_(v)
        torch.maximum(hi[oi], v, out=hi[oi])
        if not geo.asym:
            torch.minimum(lo[oi], v, out=lo[oi])
    m.mul_(geo.inv)
    qmax = geo.deviation(hi, m, (hi, hi))[1]
    if not geo.asym:
        torch.maximum(qmax, geo.deviation(lo, m, (lo, lo))[1], out=qmax)
    torch.maximum(host_ufunc("log", qmax, qmax).mul_(hl), la, out=lmax)
    nlmax = torch.neg(lmax, out=hi)
    s.zero_()
    y.zero_()
    for oi, v in taps:
        geo.deviation(v, m[oi], (q[oi], q[oi]))
        # log and exp over the whole plane (one contiguous loop; a border tap's slice would run
        # them elementwise at every row's end): the values outside the tap's outputs are unused
        r = host_ufunc("exp", torch.addcmul(nlmax, host_ufunc("log", q, q), hl, out=q), q)[oi]  # rho / max
        s[oi].add_(r)
        y[oi].addcmul_(r, v)
    ea = host_ufunc("exp", torch.sub(la, lmax, out=lo), lo).div_(geo.inv)  # count alpha / the largest weight
    s.add_(ea)
    y.addcmul_(ea, m).div_(s)


def _dpp_taps_forward(
    x: torch.Tensor, alpha: torch.Tensor, lam: torch.Tensor, geo: _Geometry
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """:func:`_dpp_core` on eager CPU calls, in place on :class:`~poolkit.torch._taps.Polyphase`
    taps (no padded copy; padding taps are skipped, where the generic loop weighs them 0), a batch
    chunk at a time (:func:`~poolkit.torch._taps.batch_chunks`).

    The same formulas, regrouped to touch each tap less: the largest weight comes from the
    window's largest and smallest values (``rho`` grows with ``|d|`` and rounding is monotone, so
    it equals the maximum over taps exactly); ``alpha``'s share of ``S`` and ``D``'s numerator is
    ``count alpha`` and ``count alpha Itilde``, added once, so each tap adds only ``rho``.

    Each chunk is split into phases in reused buffers (the backward splits it again), so the
    phases never leave the cache and are not kept.

    Returns ``y`` and ``(m, lmax, s)`` for :class:`_DPPTaps`.
    """
    spec = geo.spec
    out = (*x.shape[:2], *spec.output_size)
    poly = Polyphase(spec)
    hl, la = lam / 2, torch.log(alpha)
    m, lmax, s, y = (host_empty(out, x.dtype) for _ in range(4))
    work = chunk_buffers(out, x.dtype, 3)
    for b, phases in poly.chunks(x, out):
        work(b)[2].fill_(1.0)
        taps = [(oi, phases[ph][pi]) for oi, ph, pi in filter(None, poly.taps)]
        _dpp_chunk_forward(taps, m[b], lmax[b], s[b], y[b], work(b), la, hl, geo)
    return y, (m, lmax, s)


def _dpp_chunk_backward(
    taps: list[tuple[tuple[slice, ...], torch.Tensor, torch.Tensor]],
    saved: tuple[torch.Tensor, ...],
    work: list[torch.Tensor],
    alpha: torch.Tensor,
    lam: torch.Tensor,
    geo: _Geometry,
    need: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One batch chunk of :class:`_DPPTaps`'s backward: adds the input's gradient into the taps'
    gradient views and returns ``alpha``'s and ``lam``'s (per element, reduced), where ``need``."""
    g, y, m, lmax, s = saved
    gs, gp, nlmax, gu, gl, d_buf, h_buf, r_buf, u_buf, q_buf = work
    hl = lam / 2
    # with G = g / S: beta_q rho_q = G (I[q] - D) rho_q; rho'(d_q) = rho_q lam d_q / q_q. With
    # w_q = (I[q] - D) d_q / q_q, every tap's gradient is rho_q (G + G lam w_q), and every tap of the
    # window also gets G alpha - G lam sum(rho w) / count (alpha's weight and Itilde's share)
    torch.div(g, s, out=gs)
    torch.mul(gs, lam, out=gp)
    torch.neg(lmax, out=nlmax)
    gu.zero_()
    if need[1]:
        gl.zero_()
    for oi, v, gv in taps:
        d, q = geo.deviation(v, m[oi], (d_buf[oi], q_buf[oi]))
        # log and exp over the whole plane, as in the forward
        h = host_ufunc("log", q_buf, h_buf)  # 2 log sqrt(d^2 + eps^2)
        r = host_ufunc("exp", torch.addcmul(nlmax, h, hl, out=r_buf), r_buf)[oi]  # rho / the largest weight
        e = torch.sub(v, y[oi], out=u_buf[oi])  # I[q] - D
        if need[1]:
            gl[oi].addcmul_(h[oi].mul_(r), e)  # beta_q rho_q log(rho_q) / (lam G / 2)
        w = e.mul_(d.div_(q))  # d / q first: (I[q] - D) d can overflow where d^2 is capped
        gu[oi].addcmul_(r, w)
        gv.addcmul_(r, torch.addcmul(gs[oi], gp[oi], w, out=d))
    ea = host_ufunc("exp", torch.sub(torch.log(alpha), lmax, out=d_buf), d_buf)  # alpha / the largest weight
    gm = gu.mul_(gp).mul_(-geo.inv).addcmul_(gs, ea)
    for oi, _, gv in taps:
        gv.add_(gm[oi])
    ga = gl_out = None
    if need[0]:
        # dD/dalpha = sum_q (I[q] - D) / S = count (Itilde - D) / S, S unscaled
        ga = _reduce_param(
            torch.sub(m, y, out=u_buf).mul_(gs).div_(geo.inv).mul_(host_ufunc("exp", nlmax, nlmax)), alpha
        )
    if need[1]:
        gl_out = _reduce_param(gl.mul_(gs), lam) / 2
    return ga, gl_out


class _DPPTaps(torch.autograd.Function):
    """:class:`_DPP` on eager CPU calls for finite inputs (:func:`_dpp_taps_forward`); its backward
    (:func:`_dpp_chunk_backward`) regroups :func:`_dpp_vjp`'s formulas the same way, in place, a
    batch chunk at a time, each tap's terms recomputed (nothing kernel-sized is kept), the input's
    gradient in phase-shaped buffers. Non-finite inputs and double backward take :class:`_DPP`."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, alpha: torch.Tensor, lam: torch.Tensor, geo: _Geometry
    ) -> torch.Tensor:
        y, saved = _dpp_taps_forward(x, alpha, lam, geo)
        ctx.geo = geo
        ctx.save_for_backward(x, alpha, lam, y, *saved)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, alpha, lam, y, m, lmax, s = ctx.saved_tensors
        geo = ctx.geo
        if torch.is_grad_enabled():
            yg = _DPP.apply(pad_to_windows(x, geo.spec, 0.0), alpha, lam, geo)
            return (*generic_grads(yg, (x, alpha, lam), ctx.needs_input_grad[:3], g), None)
        poly = Polyphase(geo.spec)
        gx = poly.gradient(x)
        need = (ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        ga = gl = None
        work = chunk_buffers(y.shape, y.dtype, 10)
        for b, phases, gph in poly.gradient_chunks(x, y.shape, gx):
            assert phases is not None
            work(b)[-1].fill_(1.0)
            taps = [(oi, phases[ph][pi], gph[ph][pi]) for oi, ph, pi in filter(None, poly.taps)]
            saved = tuple(t[b] for t in (g, y, m, lmax, s))
            pa, pl = _dpp_chunk_backward(taps, saved, work(b), alpha, lam, geo, need)
            ga = pa if ga is None else ga + pa
            gl = pl if gl is None else gl + pl
        return gx, ga, gl, None


def _dpp_pool(
    x: torch.Tensor,
    alpha: Any,
    lam: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    asymmetric: bool = False,
    eps: float = 1e-3,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "dpp_pool",
) -> torch.Tensor:
    p, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    asym = check_bool(op, "asymmetric", asymmetric)
    eps = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
    xc = upcast(p.x)
    c = xc.shape[1]
    a = _dpp_param(op, "alpha", alpha, c, xc)
    lm = _dpp_param(op, "lam", lam, c, xc)
    geo = _Geometry(spec, xc, eps, asym)
    bound = finite_bound(xc) if cpu_fast_path(xc) else None
    if bound is not None:
        geo.bound(bound)
        if needs_grad(xc, a, lm):
            return p.to_user(_DPPTaps.apply(xc, a, lm, geo).to(p.dtype))
        return p.to_user(_dpp_taps_forward(xc, a, lm, geo)[0].to(p.dtype))
    xp = pad_to_windows(xc, spec, 0.0)
    if needs_grad(xp, a, lm):
        y = _DPP.apply(xp, a, lm, geo)
    else:
        y = _dpp_core(xp, torch.log(a), lm / 2, geo)[0]
    return p.to_user(y.to(p.dtype))


_a = aliases(gated_pool, _gated_pool, (1, 2, 3))
gated_pool1d, gated_pool2d, gated_pool3d = (_a[f"gated_pool{i}d"] for i in (1, 2, 3))
_a = aliases(tree_pool, _tree_pool, (1, 2, 3))
tree_pool1d, tree_pool2d, tree_pool3d = (_a[f"tree_pool{i}d"] for i in (1, 2, 3))
_a = aliases(dpp_pool, _dpp_pool, (1, 2, 3))
dpp_pool1d, dpp_pool2d, dpp_pool3d = (_a[f"dpp_pool{i}d"] for i in (1, 2, 3))
