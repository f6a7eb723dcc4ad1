"""Gated max-average pooling (Lee, Gallagher, Tu, AISTATS 2016), and the learned window filters
(``sum_k w_k x_k`` over a window, forward and backward) that tree pooling shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import blockwise
from ._filters import (
    QUIET,
    Filters,
    block_channels,
    channel_index,
    check_filters,
    filter_grads,
    for_block,
    from_layout,
    gate,
    tap_layout,
    to_layout,
    window_dots,
    window_dots_backward,
)
from ._input import Batch, check_grad, infer_ndim, prepare
from ._taps import taps_nd
from .avg_pool import _avg_pool, _avg_pool_backward
from .max_pool import _max_pool, _max_pool_backward

__all__ = ["gated_pool", "gated_pool1d", "gated_pool2d", "gated_pool3d"]

# --------------------------------------------------------------------------- gated pooling


def gated_pool(
    x: Any,
    weight: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Gated max-average pooling: a learned, input-dependent mix of max and average pooling.

    ``y = s max(x_R) + (1 - s) avg(x_R)`` with the gate ``s = sigmoid(w . x_R)``
    (Lee, Gallagher, Tu, "Generalizing pooling functions in convolutional
    neural networks: mixed, gated, and tree", AISTATS 2016), ``x_R`` the
    window's taps and ``w`` a learned gate filter of the kernel's shape.

    Gradients (``vjp``), with ``d = max - avg``: ``dy/dw_k = s (1 - s) d x_k``;
    ``x`` gets ``s`` through the max (to its winner), ``1 - s`` through the
    average, and ``s (1 - s) d w_k`` through the gate.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    weight : array_like
        The gate filter: ``kernel_size`` shaped (one per layer, shared by every
        channel, the paper's default) or ``(C, *kernel_size)`` (one per channel).
        Learnable; its gradient has its shape and dtype.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool` (no dilation).
    data_format : {"channels_first", "channels_last"}

    Notes
    -----
    Padding: the max branch pads with ``-inf`` (max pooling's rule, so an
    all-negative border stays negative); the gate and the average count a
    tap in explicit padding as 0, like a zero-padded convolution. The average
    is :func:`poolkit.ops.avg_pool` with its defaults (PyTorch's): the divisor
    counts the taps inside the input and the explicit padding, never those a
    ceil-mode window hangs past the padding; the gate skips those taps too.
    The paper is silent on padding.

    A window holding a NaN or an infinity gives NaN (also when the gate
    saturates; ``max - avg`` is NaN there), with NaN gradients, which then
    reach ``weight``'s gradient: no warning is raised. The gate is computed
    without overflow, so inputs or weights of any finite size saturate it to
    exactly 0 or 1 (then ``y`` is exactly the average or the maximum).
    float16 is computed in float32. An empty batch gives an empty output and
    zero weight gradients.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.gated import gated_pool1d
    >>> x = np.array([[[1.0, 3.0, 2.0, 0.0]]])
    >>> gated_pool1d(x, np.zeros(2), 2)             # s = 1/2: halfway between max and avg
    array([[[2.5, 1.5]]])
    >>> gated_pool1d(x, np.array([1e4, 1e4]), 2)    # s = 1: max pooling
    array([[[3., 2.]]])
    """
    return _gated_pool(x, weight, kernel_size, stride, padding, ceil_mode, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    weight: Filters
    d: np.ndarray  # max - avg (channels-first)
    max_ctx: Any
    avg_ctx: Any


def _gated_pool(
    x: Any,
    weight: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "gated_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    n, c = batch.x.shape[:2]
    w = check_filters(op, "weight", weight, spec.kernel_size, c, batch.x.dtype, None)
    taps_w = tap_layout([w], nd)
    taps = taps_nd(spec.axes)
    xu = to_layout(batch, batch.x)  # the compute-dtype input, batched, in the user's layout
    win = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)
    win.update(data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op)
    with np.errstate(**QUIET):
        mu, max_ctx = _max_pool(xu, **win)
        au, avg_ctx = _avg_pool(xu, count_include_pad=True, **win)
        m, a = from_layout(batch, mu), from_layout(batch, au)  # m is ours: it becomes d below
        y = batch.empty(m.shape)

        def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
            xb, cb, ab = ins
            yb, mb = outs
            z = window_dots(xb, taps, for_block(taps_w, block_channels(cb)), yb.shape)[0]
            s, sc, _ = gate(z)
            np.multiply(s, mb, out=yb)
            sc *= ab
            yb += sc
            d = np.subtract(mb, ab, out=z)
            if need_ctx:
                mb[...] = d
            d *= 0  # NaN exactly in windows holding NaN or inf: they give NaN whatever the gate
            yb += d

        blockwise(block, [batch.x, channel_index(n, c, nd), a], [y, m], channels_last=batch.channels_last)
    ctx = _Ctx(batch, spec, w, m, max_ctx, avg_ctx) if need_ctx else None
    return batch.to_user(y), ctx


def _gated_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.d.shape).astype(batch.x.dtype, copy=False)
    n, c = batch.x.shape[:2]
    nd = batch.nd
    taps_w = tap_layout([ctx.weight], nd)
    taps = taps_nd(ctx.spec.axes)
    acc = np.zeros((1, c, taps_w.shape[1]))
    gx = batch.empty(batch.x.shape, fill=0)
    gs = batch.empty(ctx.d.shape)  # g s, then g (1 - s)

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, cb, gb, db = ins
        gsb, gxb = outs
        sl = block_channels(cb)
        wb = for_block(taps_w, sl)
        z = window_dots(xb, taps, wb, gb.shape)[0]  # recomputed: cheaper than storing s
        s, _, ds = gate(z)
        np.multiply(gb, s, out=gsb)
        ds *= gb
        ds *= db
        window_dots_backward(xb, taps, wb, [ds], gxb, acc, sl)

    with np.errstate(**QUIET):
        blockwise(
            block, [batch.x, channel_index(n, c, nd), g, ctx.d], [gs, gx], channels_last=batch.channels_last
        )
        gx += from_layout(batch, _max_pool_backward(ctx.max_ctx, to_layout(batch, gs))["x"])
        np.subtract(g, gs, out=gs)
        gx += from_layout(batch, _avg_pool_backward(ctx.avg_ctx, to_layout(batch, gs))["x"])
    return {"x": batch.to_user(gx), "weight": filter_grads(acc, [ctx.weight])[0]}


_aliases = define(
    gated_pool,
    _gated_pool,
    _gated_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    differentiable=("x", "weight"),
    learnable=("weight",),
    stochastic=False,
    example=lambda x: ((x, np.full((x.shape[1], 2, 2), 0.1)), {"kernel_size": 2}),
)
gated_pool1d = _aliases["gated_pool1d"]
gated_pool2d = _aliases["gated_pool2d"]
gated_pool3d = _aliases["gated_pool3d"]
