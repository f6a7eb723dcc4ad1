"""LSE pooling (Pinheiro & Collobert, CVPR 2015; timm's LsePlus): a smooth, learnable max."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import blockwise
from ._input import Batch, check_grad, infer_ndim, prepare
from ._params import ChannelParam, channel_param
from ._passes import max_pass
from ._taps import at_taps, tap_counts, taps_nd

__all__ = ["lse_pool", "lse_pool1d", "lse_pool2d", "lse_pool3d"]

_R_HINT = "r is the sharpness: r=10 is timm's default, large r nears max, small r nears the mean."


def lse_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    r: Any = 10.0,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Log-sum-exp pooling: ``y = m + (1/r) log((1/n) sum exp(r (x_i - m)))`` per window.

    ``m`` is the window's maximum and ``n`` its number of taps inside the
    input (Pinheiro & Collobert, "From image-level to pixel-level labeling
    with convolutional networks", CVPR 2015; the normalised form is timm's
    ``LsePlus2d``). ``y`` lies in ``[m - log(n)/r, m]``: it approaches max
    pooling as ``r -> inf`` and the window mean as ``r -> 0``.

    Gradients, with ``w_i = exp(r (x_i - m)) / sum_j exp(r (x_j - m))`` (a
    softmax at temperature ``1/r``)::

        dy/dx_i = w_i
        dy/dr   = (sum_i w_i (x_i - m) - (y - m)) / r

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool` (no dilation).
    r : float or array_like of shape (C,)
        Sharpness, > 0 and finite, shared or per channel. Learnable: ``vjp``
        returns ``"r"`` in the shape passed (a float for a scalar).

    Notes
    -----
    * Padding and ceil-mode overhang are not taps: ``n`` counts the taps
      inside the input (timm pools whole maps, where the question does not
      arise).
    * Computed with the window maximum subtracted, so ``r (x - m) <= 0``:
      no overflow for any ``r`` and ``x`` (``r = 1e3``, ``x = 1e4`` in
      float32 is finite and correct), and the logarithm's argument is at
      least ``1/n``. Taps far below the maximum underflow to a weight of 0.
    * A window holding a NaN gives NaN; a window whose maximum is ``+inf``
      gives ``+inf``; a window made only of ``-inf`` gives ``-inf``. A
      ``-inf`` beside finite values has weight 0 but is still one of the
      ``n`` taps. Windows with a NaN or
      infinite maximum pass no gradient to ``x`` or ``r``, and NaN or
      infinite inputs receive a gradient of 0.
    * float16 is computed in float32 and returned as float16.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.lse import lse_pool1d
    >>> x = np.array([[[0.0, np.log(3.0), 1e4, 1e4]]])
    >>> lse_pool1d(x, 2, r=1.0)   # log((1 + 3) / 2), and 1e4 + log(1)
    array([[[6.93147181e-01, 1.00000000e+04]]])
    """
    return _lse_pool(x, kernel_size, stride, padding, ceil_mode, r=r, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    r: ChannelParam
    m: np.ndarray  # window maximum (+inf where it is not finite: every weight becomes 0)
    s: np.ndarray  # sum of exp(r (x - m)) (+inf where the maximum is not finite)
    log_n: np.ndarray  # log of the taps per window, shaped (1, 1, *out)
    degenerate: bool


def _lse_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    r: Any = 10.0,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "lse_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    dtype = batch.x.dtype
    param = channel_param(op, "r", r, batch.x.shape[1], dtype, _R_HINT)
    out_shape = (*batch.x.shape[:2], *spec.output_size)
    log_n = np.log(tap_counts(spec.axes)).astype(dtype).reshape(1, 1, *spec.output_size)
    y = batch.empty(out_shape)
    m_all = batch.empty(out_shape) if need_ctx else None
    s_all = batch.empty(out_shape) if need_ctx else None
    taps = taps_nd(spec.axes)
    degenerate = []

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, rb = ins
        rr = rb if param.scalar is None else dtype.type(param.scalar)
        m_raw = xb
        for j in reversed(range(nd)):
            m_raw = max_pass(m_raw, 2 + j, spec.axes[j], batch.empty, False)[0]
        bad = ~np.isfinite(m_raw)
        degenerate.append(bool(bad.any()))
        m = np.where(bad, 0, m_raw) if degenerate[-1] else m_raw
        s = np.zeros_like(m)
        for t in taps:
            o = at_taps(t.o)
            u = np.subtract(xb[at_taps(t.i)], m[o])
            np.multiply(u, rr, out=u)
            np.exp(u, out=u)
            s[o] += u
        yb = outs[0]
        np.log(s, out=yb)
        yb -= log_n
        yb /= rr
        yb += m
        if degenerate[-1]:
            # +inf wins outright; a window of -inf stays -inf; NaN stays NaN.
            yb[bad] = m_raw[bad]
            m[bad] = np.inf  # exp(r (x - inf)) = 0: no weight, no gradient
            s[bad] = np.inf
        if outs[1] is not None:
            outs[1][...] = m
            outs[2][...] = s

    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        blockwise(
            block,
            [batch.x, param.blocks(batch.x.shape[:2], nd)],
            [y, m_all, s_all],
            channels_last=batch.channels_last,
        )
    ctx = _Ctx(batch, spec, param, m_all, s_all, log_n, any(degenerate)) if need_ctx else None
    return batch.to_user(y), ctx


def _lse_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, Any]:
    batch, param = ctx.batch, ctx.r
    dtype = batch.x.dtype
    g = check_grad(batch, grad_output, ctx.m.shape).astype(dtype, copy=False)
    gx = batch.empty(batch.x.shape, fill=0)
    gr = batch.empty(ctx.m.shape)
    taps = taps_nd(ctx.spec.axes)
    lowest = np.finfo(dtype).min

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, gb, m, s, rb = ins
        gxb, grb = outs
        rr = rb if param.scalar is None else dtype.type(param.scalar)
        scale = np.divide(gb, s)  # g / S; 0 where the window is degenerate (S = inf)
        a = np.zeros_like(scale)  # sum of exp(u) u, u = r (x - m)
        for t in taps:
            o = at_taps(t.o)
            u = np.subtract(xb[at_taps(t.i)], m[o])
            np.multiply(u, rr, out=u)
            np.maximum(u, lowest, out=u)  # -inf inputs: weight 0 and 0 * u = 0, not NaN
            e = np.exp(u)
            u *= e
            a[o] += u
            e *= scale[o]
            dst = gxb[at_taps(t.i)]
            np.add(dst, e, out=dst)
        # dy/dr = (sum w u / r - (y - m)) / r = (A / S - log(S / n)) / r^2
        np.divide(a, s, out=grb)
        grb -= np.log(s)
        grb += ctx.log_n
        grb /= rr
        grb /= rr
        grb *= gb

    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        blockwise(
            block,
            [batch.x, g, ctx.m, ctx.s, param.blocks(batch.x.shape[:2], batch.nd)],
            [gx, gr],
            channels_last=batch.channels_last,
        )
    if ctx.degenerate:
        gx[~np.isfinite(gx)] = 0  # NaN and infinite inputs get no gradient
        gr[np.isinf(ctx.m)] = 0  # nor do windows whose maximum is not finite
    return {"x": batch.to_user(gx), "r": param.grad(gr)}


_aliases = define(
    lse_pool,
    _lse_pool,
    _lse_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    differentiable=("x", "r"),
    learnable=("r",),
    example=lambda x: ((x,), {"kernel_size": 2, "r": np.full(x.shape[1], 10.0)}),
)
lse_pool1d = _aliases["lse_pool1d"]
lse_pool2d = _aliases["lse_pool2d"]
lse_pool3d = _aliases["lse_pool3d"]
