"""Pyramid pooling: SPP-net's fixed-length pyramid, YOLO's SPP block and its SPPF cascade."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_choice, check_int
from ..errors import PoolingConfigError, PoolingInputError
from ._api import define
from ._input import infer_ndim, prepare
from .adaptive import _adaptive_avg_pool, _adaptive_backward, _adaptive_max_pool
from .avg_pool import _avg_pool, _avg_pool_backward
from .max_pool import _max_pool, _max_pool_backward

__all__ = [
    "spatial_pyramid_pool",
    "spatial_pyramid_pool1d",
    "spatial_pyramid_pool2d",
    "spatial_pyramid_pool3d",
    "spp",
    "spp1d",
    "spp2d",
    "spp3d",
    "sppf",
    "sppf1d",
    "sppf2d",
    "sppf3d",
]


def _levels(op: str, levels: Any) -> tuple[int, ...]:
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        levels = (levels,)
    if not isinstance(levels, Sequence) or isinstance(levels, str) or len(levels) == 0:
        raise PoolingConfigError(
            f"{op}: levels must be a non-empty sequence of ints such as (1, 2, 4), got {levels!r}."
        )
    return tuple(check_int(op, "levels", v, 1) for v in levels)


def spatial_pyramid_pool(
    x: Any,
    levels: Any = (1, 2, 4),
    mode: str = "max",
    *,
    bins: str = "adaptive",
    data_format: str = "channels_first",
) -> np.ndarray:
    """Spatial pyramid pooling (He et al., ECCV 2014): a fixed-length vector from any input size.

    Level ``n`` pools the input into ``n`` bins per spatial axis; the levels
    are flattened (channel, then bins in row-major order, as
    ``torch.flatten(pooled, 1)`` does) and concatenated:
    ``(N, C * sum(n ** ndim))``.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``).
    levels : sequence of int
        Bins per axis at each level; SPP-net uses (1, 2, 4) or (1, 2, 3, 6).
    mode : {"max", "avg"}
    bins : {"adaptive", "paper"}
        ``"adaptive"`` (default) uses adaptive pooling's bins
        ``[floor(i*a/n), ceil((i+1)*a/n))``: always ``n`` bins for any input
        size ``a >= 1``. ``"paper"`` uses the paper's window ``ceil(a/n)``
        and stride ``floor(a/n)``, which can give a different number of bins
        (``a=7, n=4``: window 2, stride 1, 6 bins), so the output length then
        depends on the input size; it needs ``a >= n``.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import spatial_pyramid_pool2d
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> spatial_pyramid_pool2d(x, (1, 2))
    array([[15.,  5.,  7., 13., 15.]])
    """
    return _spatial_pyramid_pool(x, levels, mode, bins=bins, data_format=data_format)[0]


@dataclass(frozen=True)
class _PyramidCtx:
    parts: tuple[tuple[Any, Any, tuple[int, ...]], ...]  # (backward, ctx, pooled shape) per level
    layout_cl: bool
    n: int


def _spatial_pyramid_pool(
    x: Any,
    levels: Any = (1, 2, 4),
    mode: str = "max",
    *,
    bins: str = "adaptive",
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "spatial_pyramid_pool",
) -> tuple[np.ndarray, _PyramidCtx | None]:
    levels = _levels(op, levels)
    mode = check_choice(op, "mode", mode, ("max", "avg"))
    bins = check_choice(op, "bins", bins, ("adaptive", "paper"))
    nd = infer_ndim(op, x, ndim)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    cl = batch.channels_last
    n = batch.x.shape[0]
    flat, parts = [], []
    for level in levels:
        if bins == "adaptive":
            impl, bwd = (
                (_adaptive_max_pool, _adaptive_backward)
                if mode == "max"
                else (_adaptive_avg_pool, _adaptive_backward)
            )
            y, ctx = impl(x, level, data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op)
        else:
            for axis, a in enumerate(batch.spatial):
                if a < level:
                    raise PoolingInputError(
                        f"{op}: bins='paper' needs at least {level} samples per axis for level {level}, got "
                        f"{a} on spatial axis {axis}. Use bins='adaptive' (any size works)."
                    )
            k = tuple(math.ceil(a / level) for a in batch.spatial)
            s = tuple(a // level for a in batch.spatial)
            if mode == "max":
                (y, ctx), bwd = (
                    _max_pool(x, k, s, data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op),
                    _max_pool_backward,
                )
            else:
                (y, ctx), bwd = (
                    _avg_pool(x, k, s, data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op),
                    _avg_pool_backward,
                )
        pooled = np.moveaxis(y, -1, 1) if cl else y  # channel, then bins in row-major order
        flat.append(pooled.reshape(n, -1))
        parts.append((bwd, ctx, y.shape))
    out = np.concatenate(flat, axis=1)
    ctx = _PyramidCtx(tuple(parts), cl, n) if need_ctx else None
    return out, ctx


def _spatial_pyramid_backward(ctx: _PyramidCtx, grad_output: Any) -> dict[str, np.ndarray]:
    g = np.asarray(grad_output)
    total = sum(int(np.prod(shape[1:])) for _, _, shape in ctx.parts)
    if g.shape != (ctx.n, total):
        raise PoolingInputError(
            f"spatial_pyramid_pool: grad_output must have shape {(ctx.n, total)}, got {g.shape}."
        )
    gx = None
    start = 0
    for bwd, c, shape in ctx.parts:
        size = int(np.prod(shape[1:]))
        piece = g[:, start : start + size]
        start += size
        if ctx.layout_cl:
            cf = (shape[0], shape[-1], *shape[1:-1])
            piece = np.moveaxis(piece.reshape(cf), 1, -1)
        else:
            piece = piece.reshape(shape)
        part = bwd(c, piece)["x"]
        if gx is None:
            gx = part
        else:
            gx += part  # in place: one input-sized array, not one per level
        del part
    return {"x": gx}


# --------------------------------------------------------------------------- SPP / SPPF


def spp(x: Any, kernel_sizes: Any = (5, 9, 13), *, data_format: str = "channels_first") -> np.ndarray:
    """YOLO's SPP block: ``concat[x, m_5(x), m_9(x), m_13(x)]`` along the channel axis.

    ``m_k`` is max pooling with kernel ``k``, stride 1 and ``"same"`` padding
    (``k // 2`` on each side for odd ``k``), so every branch keeps the
    spatial size; the output has ``C * (1 + len(kernel_sizes))`` channels.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import spp2d, sppf2d
    >>> x = np.random.default_rng(0).standard_normal((1, 2, 9, 9))
    >>> bool((spp2d(x) == sppf2d(x)).all())
    True
    """
    return _spp(x, kernel_sizes, data_format=data_format)[0]


def sppf(
    x: Any, kernel_size: int = 5, repeats: int = 3, *, data_format: str = "channels_first"
) -> np.ndarray:
    """YOLOv5's SPPF: ``concat[x, m(x), m(m(x)), m(m(m(x)))]`` with ``m`` = max pooling ``(k, 1, "same")``.

    Notes
    -----
    With ``-inf`` padding, stride 1 and odd ``k``, ``m_k`` applied ``r``
    times equals one ``m`` of kernel ``r(k-1)+1`` (a max of maxes over
    overlapping windows is the max over their union), so ``sppf(x, 5, 3)``
    equals ``spp(x, (5, 9, 13))`` exactly, ties included (yolov5#6723). The
    equivalence fails for average pooling: averaging twice weighs the
    centre more than a single larger average does (a test shows it).
    """
    return _sppf(x, kernel_size, repeats, data_format=data_format)[0]


@dataclass(frozen=True)
class _ConcatCtx:
    parts: tuple[Any, ...]  # max-pool contexts, branch order
    cascade: bool
    channels: int
    channel_axis: int


def _check_kernel(op: str, k: Any) -> int:
    k = check_int(op, "kernel_size", k, 1)
    if k % 2 == 0:
        raise PoolingConfigError(
            f"{op}: kernel_size must be odd so that stride-1 'same' pooling is centred, got {k}. Use e.g. {k + 1}."
        )
    return k


def _spp(
    x: Any,
    kernel_sizes: Any = (5, 9, 13),
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "spp",
) -> tuple[np.ndarray, _ConcatCtx | None]:
    if not isinstance(kernel_sizes, Sequence) or isinstance(kernel_sizes, str) or not kernel_sizes:
        raise PoolingConfigError(
            f"{op}: kernel_sizes must be a non-empty sequence of odd ints, got {kernel_sizes!r}."
        )
    ks = [_check_kernel(op, k) for k in kernel_sizes]
    nd = infer_ndim(op, x, ndim)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    axis = -1 if batch.channels_last else 1
    outs, ctxs = [batch.to_user(batch.x)], []
    for k in ks:
        y, c = _max_pool(x, k, 1, k // 2, data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op)
        outs.append(y)
        ctxs.append(c)
    out = np.concatenate(outs, axis=axis)
    ctx = _ConcatCtx(tuple(ctxs), False, batch.x.shape[1], axis) if need_ctx else None
    return out, ctx


def _sppf(
    x: Any,
    kernel_size: int = 5,
    repeats: int = 3,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "sppf",
) -> tuple[np.ndarray, _ConcatCtx | None]:
    k = _check_kernel(op, kernel_size)
    repeats = check_int(op, "repeats", repeats, 1)
    nd = infer_ndim(op, x, ndim)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    axis = -1 if batch.channels_last else 1
    outs, ctxs = [batch.to_user(batch.x)], []
    cur = outs[0]
    for _ in range(repeats):
        cur, c = _max_pool(cur, k, 1, k // 2, data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op)
        outs.append(cur)
        ctxs.append(c)
    out = np.concatenate(outs, axis=axis)
    ctx = _ConcatCtx(tuple(ctxs), True, batch.x.shape[1], axis) if need_ctx else None
    return out, ctx


def _concat_backward(ctx: _ConcatCtx, grad_output: Any) -> dict[str, np.ndarray]:
    g = np.asarray(grad_output)
    c = ctx.channels
    n_branch = len(ctx.parts) + 1
    if g.ndim < 2 or g.shape[ctx.channel_axis] != c * n_branch:
        raise PoolingInputError(
            f"{'sppf' if ctx.cascade else 'spp'}: grad_output must have {c * n_branch} channels, got shape {g.shape}."
        )
    pieces = np.split(g, n_branch, axis=ctx.channel_axis)
    if ctx.cascade:  # d/dx of m(m(...)): chain from the deepest branch back
        carry = None
        for piece, part in zip(reversed(pieces[1:]), reversed(ctx.parts)):
            total = piece if carry is None else piece + carry
            carry = _max_pool_backward(part, total)["x"]
        gx = pieces[0] + carry
    else:
        gx = pieces[0].copy()
        for piece, part in zip(pieces[1:], ctx.parts):
            gx = gx + _max_pool_backward(part, piece)["x"]
    return {"x": gx}


def _sppf_example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (x,), {}


_spp_aliases = define(
    spatial_pyramid_pool,
    _spatial_pyramid_pool,
    _spatial_pyramid_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    example=lambda x: ((x,), {"levels": (1, 2, 3)}),
)
spatial_pyramid_pool1d = _spp_aliases["spatial_pyramid_pool1d"]
spatial_pyramid_pool2d = _spp_aliases["spatial_pyramid_pool2d"]
spatial_pyramid_pool3d = _spp_aliases["spatial_pyramid_pool3d"]
_yolo_spp = define(
    spp,
    _spp,
    _concat_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    example=_sppf_example,
)
spp1d, spp2d, spp3d = _yolo_spp["spp1d"], _yolo_spp["spp2d"], _yolo_spp["spp3d"]
_yolo_sppf = define(
    sppf,
    _sppf,
    _concat_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    example=_sppf_example,
)
sppf1d, sppf2d, sppf3d = _yolo_sppf["sppf1d"], _yolo_sppf["sppf2d"], _yolo_sppf["sppf3d"]
