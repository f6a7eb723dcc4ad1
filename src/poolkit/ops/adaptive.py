"""Adaptive and global max/average pooling, N-d.

Bin ``i`` of an axis covers ``[floor(i * In / Out), ceil((i + 1) * In / Out))``
(PyTorch and Keras 3). Bins overlap and vary in size when ``In % Out != 0``
and ``Out > In`` is allowed. When ``In % Out == 0`` the bins are a plain
sliding window and take the strided path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool
from ..geometry import AxisWindow, adaptive_output_size, adaptive_window
from ._api import define
from ._engine import (
    GatherAxis,
    adaptive_axis,
    compose_indices,
    max_passes,
    max_passes_backward,
    sum_passes,
    sum_passes_backward,
)
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = [
    "adaptive_max_pool",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "adaptive_avg_pool",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "global_max_pool",
    "global_avg_pool",
]


def adaptive_max_pool(
    x: Any, output_size: Any, return_indices: bool = False, *, data_format: str = "channels_first"
) -> Any:
    """Adaptive max pooling to a fixed ``output_size``.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``).
    output_size : int or tuple
        Per axis; ``None`` keeps that axis. Larger than the input is allowed.
    return_indices : bool
        Also return per-plane flat indices (PyTorch's format).

    Notes
    -----
    Same tie and NaN rules as :func:`poolkit.ops.max_pool`.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import adaptive_max_pool2d
    >>> x = np.arange(25.0).reshape(1, 1, 5, 5)
    >>> y, idx = adaptive_max_pool2d(x, 3, return_indices=True)
    >>> y[0, 0]
    array([[ 6.,  8.,  9.],
           [16., 18., 19.],
           [21., 23., 24.]])
    >>> bool((idx[0, 0] == y[0, 0]).all())
    True
    """
    return _adaptive_max_pool(x, output_size, return_indices, data_format=data_format)[0]


def adaptive_avg_pool(x: Any, output_size: Any, *, data_format: str = "channels_first") -> np.ndarray:
    """Adaptive average pooling to a fixed ``output_size``.

    Each output is the mean of its bin (bins may overlap and differ in size).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import adaptive_avg_pool1d
    >>> adaptive_avg_pool1d(np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]]), 3)
    array([[[1.5, 3. , 4.5]]])
    """
    return _adaptive_avg_pool(x, output_size, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    axes: tuple[AxisWindow | GatherAxis, ...]
    winners: Any  # Winners, or the per-plane flat winners for "global-max"
    divisors: tuple[Any, ...]
    out_shape: tuple[int, ...]
    kind: str  # "max" | "avg" | "global-max" | "global-avg"


def _plan(batch: Batch, output_size: Any, op: str) -> tuple[AxisWindow | GatherAxis, ...]:
    out = adaptive_output_size(op, batch.spatial, output_size)
    full = batch.x.ndim
    axes = []
    for j, (n, o) in enumerate(zip(batch.spatial, out)):
        regular = adaptive_window(n, o)
        axes.append(regular if regular is not None else adaptive_axis(n, o, full, 2 + j))
    return tuple(axes)


def _planes(a: np.ndarray, channels_last: bool) -> np.ndarray:
    """A channels-first view as ``(N, C, S)``, or ``(N, S, C)`` for channels-last memory (no transpose)."""
    n, c = a.shape[:2]
    if channels_last:
        return np.moveaxis(a, 1, -1).reshape(n, -1, c)
    return a.reshape(n, c, -1)


def _adaptive_max_pool(
    x: Any,
    output_size: Any,
    return_indices: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "adaptive_max_pool",
) -> tuple[Any, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, output_size)
    batch = prepare(x, op=op, nd=nd, data_format=data_format)
    return_indices = check_bool(op, "return_indices", return_indices)
    axes = _plan(batch, output_size, op)
    track = return_indices or need_ctx
    out_shape = (*batch.x.shape[:2], *(ax.out for ax in axes))
    flat = None
    if all(ax.out == 1 for ax in axes) and not (track and batch.channels_last):
        # Whole planes: one reduction (NumPy's argmax keeps the first maximum).
        xp = _planes(batch.x, batch.channels_last)
        axis = 1 if batch.channels_last else 2
        y = batch.empty(out_shape)
        np.max(xp, axis=axis, out=_planes(y, batch.channels_last).reshape(xp.shape[0], -1))
        if track:
            flat = np.argmax(xp, axis=2).reshape(out_shape)
            if np.isnan(y).any():  # PyTorch reports the last NaN
                last = xp.shape[2] - 1 - np.argmax(np.isnan(xp)[..., ::-1], axis=2)
                flat = np.where(np.isnan(y), last.reshape(out_shape), flat)
        kind, winners = "global-max", flat
    else:
        y, winners = max_passes(batch.x, axes, batch.empty, track, batch.channels_last)
        if return_indices:
            flat = compose_indices(winners, axes, batch.spatial)
        kind = "max"
    outputs: Any = batch.to_user(y)
    if return_indices:
        outputs = (outputs, batch.to_user(flat.astype(np.int64, copy=False), cast=False))
    ctx = _Ctx(batch, axes, winners, (), out_shape, kind) if need_ctx else None
    return outputs, ctx


def _adaptive_avg_pool(
    x: Any,
    output_size: Any,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "adaptive_avg_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, output_size)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    axes = _plan(batch, output_size, op)
    out_shape = (*batch.x.shape[:2], *(ax.out for ax in axes))
    if all(ax.out == 1 for ax in axes):
        xp = _planes(batch.x, batch.channels_last)
        y = batch.empty(out_shape)
        yv = _planes(y, batch.channels_last).reshape(xp.shape[0], -1)
        np.einsum("nsc->nc" if batch.channels_last else "ncs->nc", xp, out=yv)
        np.divide(yv, yv.dtype.type(xp.shape[1 if batch.channels_last else 2]), out=yv)
        ctx = _Ctx(batch, axes, (), (), out_shape, "global-avg") if need_ctx else None
        return batch.to_user(y), ctx
    divisors: list[Any] = []
    for j, ax in enumerate(axes):
        if isinstance(ax, GatherAxis):
            shape = [1] * batch.x.ndim
            shape[2 + j] = ax.out
            divisors.append(ax.lengths.astype(batch.x.dtype).reshape(shape))
        else:
            divisors.append(batch.x.dtype.type(ax.kernel))
    y = sum_passes(batch.x, axes, batch.empty, divisors, batch.channels_last)
    ctx = _Ctx(batch, axes, (), tuple(divisors), out_shape, "avg") if need_ctx else None
    return batch.to_user(y), ctx


def _adaptive_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape)
    g = g.astype(np.float32 if batch.dtype == np.float16 else batch.dtype, copy=False)
    cl = batch.channels_last
    if ctx.kind == "max":
        gx = max_passes_backward(g, ctx.winners, ctx.axes, batch.empty, cl)
    elif ctx.kind == "avg":
        gx = sum_passes_backward(g, ctx.axes, batch.empty, ctx.divisors, cl)
    else:
        gx = batch.empty(batch.x.shape, g.dtype)
        gp = _planes(gx, cl)
        n, c = batch.x.shape[:2]
        gv = g.reshape(n, c)
        if ctx.kind == "global-avg":
            share = gv / gv.dtype.type(gp.shape[1 if cl else 2])
            gp[...] = share[:, None, :] if cl else share[:, :, None]
        else:
            gp[...] = 0
            flat = ctx.winners.reshape(n, c)
            if cl:
                gp[np.arange(n)[:, None], flat, np.arange(c)[None, :]] = gv
            else:
                gp[np.arange(n)[:, None], np.arange(c)[None, :], flat] = gv
    return {"x": batch.to_user(gx)}


# --------------------------------------------------------------------------- global


def global_max_pool(x: Any, keepdims: bool = False, *, data_format: str = "channels_first") -> np.ndarray:
    """Max over all spatial axes: ``(N, C, *spatial) -> (N, C)`` (or keep size-1 axes).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import global_max_pool
    >>> global_max_pool(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[3., 7.]])
    """
    return _global_pool(x, keepdims, data_format=data_format, kind="max")[0]


def global_avg_pool(x: Any, keepdims: bool = False, *, data_format: str = "channels_first") -> np.ndarray:
    """Mean over all spatial axes: ``(N, C, *spatial) -> (N, C)`` (or keep size-1 axes).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import global_avg_pool
    >>> global_avg_pool(np.arange(8.0).reshape(1, 2, 4), keepdims=True)
    array([[[1.5],
            [5.5]]])
    """
    return _global_pool(x, keepdims, data_format=data_format, kind="avg")[0]


@dataclass(frozen=True)
class _GlobalCtx:
    inner: _Ctx
    keep_shape: tuple[int, ...]
    keepdims: bool


def _global_pool(
    x: Any,
    keepdims: bool = False,
    *,
    data_format: str = "channels_first",
    kind: str,
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str | None = None,
) -> tuple[np.ndarray, _GlobalCtx | None]:
    op = op or f"global_{kind}_pool"
    keepdims = check_bool(op, "keepdims", keepdims)
    nd = infer_ndim(op, x, ndim, variants=False)
    impl = _adaptive_max_pool if kind == "max" else _adaptive_avg_pool
    y, inner = impl(x, 1, data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op)
    keep_shape = y.shape
    if not keepdims:
        y = (
            y.reshape(y.shape[:1] + y.shape[-1:])
            if data_format == "channels_last"
            else y.reshape(y.shape[:2])
        )
    ctx = _GlobalCtx(inner, keep_shape, keepdims) if need_ctx else None
    return y, ctx


def _global_backward(ctx: _GlobalCtx, grad_output: Any) -> dict[str, np.ndarray]:
    g = np.asarray(grad_output)
    if not ctx.keepdims:
        if g.size != int(np.prod(ctx.keep_shape)):
            from ..errors import PoolingInputError

            raise PoolingInputError(
                f"{ctx.inner.batch.op}: grad_output must have the output's shape, got {g.shape}."
            )
        g = g.reshape(ctx.keep_shape)
    return _adaptive_backward(ctx.inner, g)


def _global_max(x: Any, keepdims: bool = False, *, data_format: str = "channels_first", **kw: Any) -> Any:
    return _global_pool(x, keepdims, data_format=data_format, kind="max", **kw)


def _global_avg(x: Any, keepdims: bool = False, *, data_format: str = "channels_first", **kw: Any) -> Any:
    return _global_pool(x, keepdims, data_format=data_format, kind="avg", **kw)


def _example_adaptive(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (x,), {"output_size": 3}


def _example_global(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (x,), {}


_max_aliases = define(
    adaptive_max_pool,
    _adaptive_max_pool,
    _adaptive_backward,
    family="adaptive",
    backends=("numpy", "torch", "keras"),
    example=_example_adaptive,
)
_avg_aliases = define(
    adaptive_avg_pool,
    _adaptive_avg_pool,
    _adaptive_backward,
    family="adaptive",
    backends=("numpy", "torch", "keras"),
    example=_example_adaptive,
)
define(
    global_max_pool,
    _global_max,
    _global_backward,
    family="global",
    backends=("numpy", "torch", "keras"),
    ndims=(),
    example=_example_global,
)
define(
    global_avg_pool,
    _global_avg,
    _global_backward,
    family="global",
    backends=("numpy", "torch", "keras"),
    ndims=(),
    example=_example_global,
)
adaptive_max_pool1d = _max_aliases["adaptive_max_pool1d"]
adaptive_max_pool2d = _max_aliases["adaptive_max_pool2d"]
adaptive_max_pool3d = _max_aliases["adaptive_max_pool3d"]
adaptive_avg_pool1d = _avg_aliases["adaptive_avg_pool1d"]
adaptive_avg_pool2d = _avg_aliases["adaptive_avg_pool2d"]
adaptive_avg_pool3d = _avg_aliases["adaptive_avg_pool3d"]
