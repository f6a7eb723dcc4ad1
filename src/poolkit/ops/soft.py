"""SoftPool (Stergiou, Poppe, Kalliatakis, ICCV 2021): softmax-weighted window averages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import blockwise
from ._input import Batch, check_grad, infer_ndim, prepare
from ._passes import max_pass
from ._taps import at_taps, taps_nd

__all__ = ["soft_pool", "soft_pool1d", "soft_pool2d", "soft_pool3d"]


def soft_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """SoftPool: each window's softmax-weighted average of itself.

    ``y = sum_i w_i x_i`` with ``w_i = exp(x_i) / sum_j exp(x_j)`` over the
    window's taps inside the input. Computed with the window maximum ``m``
    subtracted (``exp(x_i - m)``), so inputs of +-1e4 in float32 give finite,
    correct outputs and gradients; the reference CPU path
    ``avg_pool(x * exp(x)) / avg_pool(exp(x))`` overflows there. The output
    size is the shared window geometry for any kernel and stride (the
    reference CPU and CUDA paths disagree when ``kernel != stride``).

    Gradient: ``dy/dx_i = w_i (1 + x_i - y)``.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool`.

    Notes
    -----
    Padding and ceil-mode overhang are not part of the softmax (the
    reference's zero-padded averages give the same). A window holding a NaN
    gives NaN. A window whose maximum is ``+inf`` gives ``+inf`` and one made
    only of ``-inf`` gives ``-inf``. Windows with a NaN or infinite maximum
    pass no gradient. float16 is computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import soft_pool1d
    >>> soft_pool1d(np.array([[[0.0, np.log(3.0), 1e4, 1e4]]]), 2)
    array([[[8.23959217e-01, 1.00000000e+04]]])
    """
    return _soft_pool(x, kernel_size, stride, padding, ceil_mode, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    m: np.ndarray  # window maximum (0 where it is not finite)
    s: np.ndarray  # sum of exp(x - m) (inf where the window is degenerate: zero weights)
    y: np.ndarray
    degenerate: bool  # some window's maximum is NaN or +-inf


def _soft_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "soft_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    out_shape = (*batch.x.shape[:2], *spec.output_size)
    y = batch.empty(out_shape)
    m_all = batch.empty(out_shape) if need_ctx else None
    s_all = batch.empty(out_shape) if need_ctx else None
    taps = taps_nd(spec.axes)
    degenerate = []

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb = ins[0]
        m_raw = xb
        for j in reversed(range(nd)):
            m_raw = max_pass(m_raw, 2 + j, spec.axes[j], batch.empty, False)[0]
        bad = ~np.isfinite(m_raw)
        degenerate.append(bool(bad.any()))
        m = np.where(bad, 0, m_raw) if degenerate[-1] else m_raw
        s = np.zeros_like(m)
        num = np.zeros_like(m)
        with np.errstate(over="ignore", invalid="ignore"):
            for t in taps:
                o = at_taps(t.o)
                xs = xb[at_taps(t.i)]
                e = np.subtract(xs, m[o])
                np.exp(e, out=e)
                s[o] += e
                e *= xs
                num[o] += e
            yb = outs[0]
            np.divide(num, s, out=yb)
        if degenerate[-1]:
            # +inf wins the softmax outright; a window of -inf stays -inf; NaN stays NaN.
            yb[bad] = m_raw[bad]
            s[bad] = np.inf  # zero weights in the backward pass
        if outs[1] is not None:
            outs[1][...] = m
            outs[2][...] = s

    blockwise(block, [batch.x], [y, m_all, s_all], channels_last=batch.channels_last)
    ctx = _Ctx(batch, spec, m_all, s_all, y, any(degenerate)) if need_ctx else None
    return batch.to_user(y), ctx


def _soft_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.y.shape).astype(batch.x.dtype, copy=False)
    gx = batch.empty(batch.x.shape, fill=0)
    taps = taps_nd(ctx.spec.axes)

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, gb, m, s, y = ins
        gxb = outs[0]
        scale = np.divide(gb, s)  # g / S; 0 for degenerate windows (S = inf)
        for t in taps:
            o = at_taps(t.o)
            xs = xb[at_taps(t.i)]
            w = np.subtract(xs, m[o])
            np.exp(w, out=w)
            w *= scale[o]
            d = np.subtract(xs, y[o])
            d += 1
            w *= d
            dst = gxb[at_taps(t.i)]
            np.add(dst, w, out=dst)

    with np.errstate(over="ignore", invalid="ignore"):
        blockwise(block, [batch.x, g, ctx.m, ctx.s, ctx.y], [gx], channels_last=batch.channels_last)
    if ctx.degenerate:
        gx[~np.isfinite(gx)] = 0  # windows with a NaN or infinite maximum pass no gradient
    return {"x": batch.to_user(gx)}


_aliases = define(
    soft_pool,
    _soft_pool,
    _soft_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    example=lambda x: ((x,), {"kernel_size": 2}),
)
soft_pool1d = _aliases["soft_pool1d"]
soft_pool2d = _aliases["soft_pool2d"]
soft_pool3d = _aliases["soft_pool3d"]
