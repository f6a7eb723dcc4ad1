"""LIP, local importance pooling (Gao, Wang, Wu, ICCV 2019): averages weighted by exp(logits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PoolingInputError
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import blockwise
from ._input import Batch, check_float, check_grad, infer_ndim, prepare
from ._passes import max_pass
from ._taps import at_taps, taps_nd

__all__ = ["lip_pool", "lip_pool1d", "lip_pool2d", "lip_pool3d"]


def lip_pool(
    x: Any,
    logits: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Local importance pooling: ``y = sum_i e^{l_i} x_i / sum_i e^{l_i}`` over each window.

    ``l`` is a logit (importance) map of ``x``'s shape, in the paper the
    output of a small network ``G(x)`` (Gao, Wang, Wu, "LIP: Local Importance-
    based Pooling", ICCV 2019; reference ``lip2d(x, logit) =
    avg_pool(x * exp(logit)) / avg_pool(exp(logit))``). With ``l = 0`` it is
    average pooling over the taps inside the input.

    Gradients, with ``w_i = e^{l_i} / sum_j e^{l_j}``::

        dy/dx_i = w_i
        dy/dl_i = w_i (x_i - y)

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    logits : array_like
        Floating-point, the shape of ``x`` (same layout). ``vjp`` returns
        ``"logits"`` in its shape and dtype.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool` (no dilation).

    Notes
    -----
    * Padding and ceil-mode overhang are not taps (the reference's
      zero-padded averages give the same: their divisors cancel).
    * Computed with each window's largest logit subtracted, so logits of
      ``+-1e4`` give finite, correct results and gradients; the reference
      overflows to NaN once ``exp(l)`` does (``l > 88`` in float32).
      Logits far below their window's maximum underflow to a weight of 0.
    * Non-finite logits: ``-inf`` gives a tap weight 0; a window whose logits
      are all ``-inf`` has no weight and gives NaN, as does a window holding
      a NaN or ``+inf`` logit (its weights are undefined: inf/inf).
    * Non-finite inputs follow IEEE arithmetic on ``sum w_i x_i``: a NaN
      gives NaN, ``+inf`` (or ``-inf``) gives ``+inf`` (``-inf``), both
      together give NaN, and an infinite input whose weight underflowed to 0
      gives NaN (``0 * inf``).
    * Windows whose output is not finite pass no gradient; NaN or infinite
      inputs and logits receive a gradient of 0.
    * The weights are computed in the compute dtype (float32 for float16
      and float32 ``x``, float64 for float64); logits are cast to it.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.lip import lip_pool1d
    >>> x = np.array([[[1.0, 5.0, 2.0, 4.0]]])
    >>> lip_pool1d(x, np.zeros_like(x), 2)   # equal logits: the average
    array([[[3., 3.]]])
    >>> lip_pool1d(x, np.array([[[0.0, np.log(3.0), 1e4, -1e4]]]), 2)   # weights 1/4, 3/4 and 1, 0
    array([[[4., 2.]]])
    """
    return _lip_pool(x, logits, kernel_size, stride, padding, ceil_mode, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    logits: np.ndarray  # channels-first view in the compute dtype
    logits_dtype: Any
    m: np.ndarray  # window's largest logit (+inf in degenerate windows: every weight 0)
    s: np.ndarray  # sum of exp(l - m) (+inf in degenerate windows)
    y: np.ndarray  # output, 0 in degenerate windows
    degenerate: bool


def _prepare_logits(batch: Batch, x: Any, logits: Any, op: str) -> np.ndarray:
    l_user = np.asarray(logits)
    check_float(op, l_user, "logits")
    if l_user.shape != np.shape(x):
        raise PoolingInputError(
            f"{op}: logits must have the shape of x {np.shape(x)} (one logit per input value, same "
            f"layout), got {l_user.shape}."
        )
    lv = l_user if batch.batched else l_user[None]
    if batch.channels_last:
        lv = np.moveaxis(lv, -1, 1)
    return lv.astype(batch.x.dtype, copy=False)


def _lip_pool(
    x: Any,
    logits: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "lip_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    lg = _prepare_logits(batch, x, logits, op)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    out_shape = (*batch.x.shape[:2], *spec.output_size)
    y = batch.empty(out_shape)
    m_all = batch.empty(out_shape) if need_ctx else None
    s_all = batch.empty(out_shape) if need_ctx else None
    taps = taps_nd(spec.axes)
    degenerate = []

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, lb = ins
        m_raw = lb
        for j in reversed(range(nd)):
            m_raw = max_pass(m_raw, 2 + j, spec.axes[j], batch.empty, False)[0]
        bad_l = ~np.isfinite(m_raw)
        any_bad_l = bool(bad_l.any())
        m = np.where(bad_l, 0, m_raw) if any_bad_l else m_raw
        s = np.zeros_like(m)
        num = np.zeros_like(m)
        for t in taps:
            o = at_taps(t.o)
            e = np.subtract(lb[at_taps(t.i)], m[o])
            np.exp(e, out=e)
            s[o] += e
            e *= xb[at_taps(t.i)]
            num[o] += e
        yb = outs[0]
        np.divide(num, s, out=yb)
        if any_bad_l:
            yb[bad_l] = np.nan  # undefined weights (NaN, +inf) or none at all (all -inf)
        bad = ~np.isfinite(yb)
        degenerate.append(bool(bad.any()))
        if outs[1] is not None:
            if degenerate[-1]:
                m[bad] = np.inf  # exp(l - inf) = 0: no weight, no gradient
                s[bad] = np.inf
            outs[1][...] = m
            outs[2][...] = s

    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        blockwise(block, [batch.x, lg], [y, m_all, s_all], channels_last=batch.channels_last)
    ctx = None
    if need_ctx:
        yc = y
        if any(degenerate):  # the backward pass reads x - y: 0 instead of NaN or inf (weights are 0 there)
            yc = y.copy()
            yc[~np.isfinite(yc)] = 0
        ctx = _Ctx(batch, spec, lg, np.asarray(logits).dtype, m_all, s_all, yc, any(degenerate))
    return batch.to_user(y), ctx


def _lip_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, Any]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.y.shape).astype(batch.x.dtype, copy=False)
    gx = batch.empty(batch.x.shape, fill=0)
    gl = batch.empty(batch.x.shape, fill=0)
    taps = taps_nd(ctx.spec.axes)

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, lb, gb, m, s, y = ins
        gxb, glb = outs
        scale = np.divide(gb, s)  # g / S; 0 in degenerate windows (S = inf)
        for t in taps:
            o = at_taps(t.o)
            i = at_taps(t.i)
            w = np.subtract(lb[i], m[o])
            np.exp(w, out=w)
            w *= scale[o]  # g w_i
            dst = gxb[i]
            np.add(dst, w, out=dst)
            d = np.subtract(xb[i], y[o])
            d *= w
            dst = glb[i]
            np.add(dst, d, out=dst)

    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        blockwise(
            block,
            [batch.x, ctx.logits, g, ctx.m, ctx.s, ctx.y],
            [gx, gl],
            channels_last=batch.channels_last,
        )
    if ctx.degenerate:
        # Only taps whose every window is degenerate (NaN or infinite x or logits) get here.
        gx[~np.isfinite(gx)] = 0
        gl[~np.isfinite(gl)] = 0
    return {
        "x": batch.to_user(gx),
        "logits": batch.to_user(gl, cast=False).astype(ctx.logits_dtype, copy=False),
    }


_aliases = define(
    lip_pool,
    _lip_pool,
    _lip_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    differentiable=("x", "logits"),
    learnable=(),
    example=lambda x: (
        (x, np.linspace(-2.0, 2.0, x.size).reshape(x.shape).astype(x.dtype)),
        {"kernel_size": 2},
    ),
)
lip_pool1d = _aliases["lip_pool1d"]
lip_pool2d = _aliases["lip_pool2d"]
lip_pool3d = _aliases["lip_pool3d"]
