"""Masked pooling: pooling restricted to a binary or soft mask (masked average pooling)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_choice
from ..errors import PoolingInputError
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import max_passes, max_passes_backward, sum_passes, sum_passes_backward
from ._input import Batch, check_float, check_grad, infer_ndim, prepare

__all__ = ["masked_pool", "masked_pool1d", "masked_pool2d", "masked_pool3d"]


def masked_pool(
    x: Any,
    mask: Any,
    mode: str = "avg",
    kernel_size: Any = None,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Pooling over the positions a mask selects (masked average pooling of few-shot segmentation).

    With ``kernel_size=None`` the pooling is global over the spatial axes,
    ``(N, C, *spatial) -> (N, C)``; with a kernel it slides windows
    (PyTorch's geometry) and returns ``(N, C, *out)``.

    ``avg``: ``sum(m x) / sum(m)``; ``sum``: ``sum(m x)``; ``max``: the
    maximum over the positions with ``m > 0``.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``).
    mask : array_like
        Binary or soft weights ``>= 0``, shaped like ``x`` or with one channel
        (``(N, 1, *spatial)`` / ``(N, *spatial, 1)``), broadcast over channels.
    mode : {"avg", "sum", "max"}
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.avg_pool`; padding is masked out.

    Notes
    -----
    Empty rule: where the mask (or the window's part of it) sums to 0, every
    mode gives 0 and passes no gradient. Gradients: ``x`` always; ``mask``
    for ``avg`` (``(x - y) / sum(m)``) and ``sum`` (``x``), 0 for ``max``
    (the mask only selects). With a one-channel mask its gradient is summed
    over channels.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import masked_pool2d
    >>> x = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> masked_pool2d(x, np.array([[[[1.0, 0.0], [0.0, 1.0]]]]))
    array([[1.5]])
    """
    return _masked_pool(x, mask, mode, kernel_size, stride, padding, ceil_mode, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    mode: str
    spec: WindowSpec
    m: np.ndarray  # channels-first view of the mask, full channel count
    mask_channels: int
    mask_dtype: np.dtype
    y: np.ndarray
    den: np.ndarray  # sum(m) per output
    winners: Any
    global_: bool


def _global_spec(spatial: tuple[int, ...]) -> WindowSpec:
    return window_spec(spatial, spatial, op="masked_pool")


def _masked_pool(
    x: Any,
    mask: Any,
    mode: str = "avg",
    kernel_size: Any = None,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "masked_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    mode = check_choice(op, "mode", mode, ("avg", "sum", "max"))
    nd = infer_ndim(op, x, ndim, kernel_size)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True, allow_unbatched=False)
    mask = np.asarray(mask)
    check_float(op, mask.astype(np.float64) if mask.dtype == bool else mask, "mask")
    n, c = batch.x.shape[:2]
    cl = batch.channels_last
    want = [(n, c, *batch.spatial), (n, 1, *batch.spatial)]
    if cl:
        want = [(w[0], *w[2:], w[1]) for w in want]
    if mask.shape not in [tuple(w) for w in want]:
        raise PoolingInputError(
            f"{op}: mask must have shape {want[0]} (like x) or {want[1]} (one channel), got {mask.shape}."
        )
    m = mask.astype(batch.x.dtype, copy=False)
    if np.any(m < 0) or not np.isfinite(m).all():
        raise PoolingInputError(f"{op}: mask values must be finite and >= 0 (binary or soft weights).")
    mask_channels = mask.shape[-1] if cl else mask.shape[1]
    m = np.moveaxis(m, -1, 1) if cl else m
    m = np.broadcast_to(m, batch.x.shape)
    spec = (
        _global_spec(batch.spatial)
        if kernel_size is None
        else window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    )
    axes = spec.axes
    den = sum_passes(m, axes, batch.empty, (), cl)  # weight per output; 0 means empty
    winners = None
    if mode == "max":
        y, winners = _masked_max(batch, m, axes, need_ctx)
        y = np.where(den > 0, y, 0)
    else:
        num = _masked_sum(batch, m, axes)
        y = np.divide(num, den, out=np.zeros_like(num), where=den > 0) if mode == "avg" else num
    out = batch.to_user(y)
    if kernel_size is None:
        out = out.reshape(out.shape[0], -1)
    ctx = (
        _Ctx(batch, mode, spec, m, mask_channels, mask.dtype, y, den, winners, kernel_size is None)
        if need_ctx
        else None
    )
    return out, ctx


def _masked_sum(batch: Batch, m: np.ndarray, axes: Any) -> np.ndarray:
    xm = batch.empty(batch.x.shape)
    np.multiply(batch.x, m, out=xm)
    return sum_passes(xm, axes, batch.empty, (), batch.channels_last)


def _masked_max(batch: Batch, m: np.ndarray, axes: Any, track: bool) -> tuple[np.ndarray, Any]:
    xm = batch.empty(batch.x.shape)
    xm[...] = batch.x
    xm[m <= 0] = -np.inf  # unused positions can never win
    return max_passes(xm, axes, batch.empty, track, batch.channels_last)


def _masked_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    cl = batch.channels_last
    g = np.asarray(grad_output, dtype=batch.x.dtype)
    if ctx.global_ and g.ndim == 2:  # global: (N, C)
        g = (
            g.reshape(g.shape + (1,) * batch.nd)
            if not cl
            else g.reshape((g.shape[0],) + (1,) * batch.nd + (g.shape[1],))
        )
    g = check_grad(batch, g, ctx.y.shape)
    axes = ctx.spec.axes
    if ctx.mode == "max":
        gx = max_passes_backward(g * (ctx.den > 0), ctx.winners, axes, batch.empty, cl)
        gm = np.zeros(batch.x.shape, dtype=batch.x.dtype)
    elif ctx.mode == "sum":
        gx = sum_passes_backward(g, axes, batch.empty, (), cl)  # sum over windows of g
        gm = gx * batch.x
        gx *= ctx.m
    else:
        w = np.divide(g, ctx.den, out=np.zeros_like(g), where=ctx.den > 0)
        back_y = sum_passes_backward(w * ctx.y, axes, batch.empty, (), cl)  # sum over windows of g y / den
        gx = sum_passes_backward(w, axes, batch.empty, (), cl)  # sum over windows of g / den
        gm = gx * batch.x
        gm -= back_y
        del back_y
        gx *= ctx.m
    if ctx.mask_channels == 1 and batch.x.shape[1] != 1:
        gm = gm.sum(axis=1, keepdims=True)
    gm = np.moveaxis(gm, 1, -1) if cl else gm
    mask_dtype = batch.dtype if ctx.mask_dtype == np.bool_ else ctx.mask_dtype
    return {"x": batch.to_user(gx), "mask": gm.astype(mask_dtype)}


def _example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    mask = (np.arange(x[:, :1].size).reshape(x[:, :1].shape) % 3 != 0).astype(x.dtype)
    return (x, mask), {"mode": "avg"}


_aliases = define(
    masked_pool,
    _masked_pool,
    _masked_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    differentiable=("x", "mask"),
    example=_example,
)
masked_pool1d = _aliases["masked_pool1d"]
masked_pool2d = _aliases["masked_pool2d"]
masked_pool3d = _aliases["masked_pool3d"]
