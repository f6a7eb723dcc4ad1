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
    max_pass,
    max_pass_backward,
    sum_pass,
    sum_pass_backward,
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
    args: tuple[Any, ...]
    divisors: tuple[Any, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    kind: str


def _plan(batch: Batch, output_size: Any, op: str) -> tuple[AxisWindow | GatherAxis, ...]:
    out = adaptive_output_size(op, batch.spatial, output_size)
    full = batch.x.ndim
    axes = []
    for j, (n, o) in enumerate(zip(batch.spatial, out)):
        regular = adaptive_window(n, o)
        axes.append(regular if regular is not None else adaptive_axis(n, o, full, 2 + j))
    return tuple(axes)


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
    cur = batch.x
    args: list[Any] = [None] * nd
    in_shapes: list[Any] = [None] * nd
    for j in reversed(range(nd)):
        in_shapes[j] = cur.shape
        cur, args[j] = max_pass(cur, 2 + j, axes[j], batch.empty, track)
    y = batch.to_user(cur)
    outputs: Any = y
    if return_indices:
        outputs = (y, batch.to_user(compose_indices(args, axes, batch.spatial), cast=False))
    ctx = _Ctx(batch, axes, tuple(args), (), tuple(in_shapes), cur.shape, "max") if need_ctx else None
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
    cur = batch.x
    divisors: list[Any] = [None] * nd
    in_shapes: list[Any] = [None] * nd
    for j in reversed(range(nd)):
        in_shapes[j] = cur.shape
        ax = axes[j]
        cur = sum_pass(cur, 2 + j, ax, batch.empty)
        if isinstance(ax, GatherAxis):
            shape = [1] * cur.ndim
            shape[2 + j] = ax.out
            divisors[j] = ax.lengths.astype(cur.dtype).reshape(shape)
        else:
            divisors[j] = cur.dtype.type(ax.kernel)
        np.divide(cur, divisors[j], out=cur)
    ctx = _Ctx(batch, axes, (), tuple(divisors), tuple(in_shapes), cur.shape, "avg") if need_ctx else None
    return batch.to_user(cur), ctx


def _adaptive_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape)
    g = g.astype(np.float32 if batch.dtype == np.float16 else batch.dtype, copy=True)
    for j, ax in enumerate(ctx.axes):
        if ctx.kind == "max":
            g = max_pass_backward(g, ctx.args[j], 2 + j, ax, ctx.in_shapes[j], batch.empty)
        else:
            g = sum_pass_backward(g / ctx.divisors[j], 2 + j, ax, ctx.in_shapes[j], batch.empty)
    return {"x": batch.to_user(g)}


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


_max_aliases = define(adaptive_max_pool, _adaptive_max_pool, _adaptive_backward, family="adaptive")
_avg_aliases = define(adaptive_avg_pool, _adaptive_avg_pool, _adaptive_backward, family="adaptive")
define(global_max_pool, _global_max, _global_backward, family="global", ndims=())
define(global_avg_pool, _global_avg, _global_backward, family="global", ndims=())
adaptive_max_pool1d = _max_aliases["adaptive_max_pool1d"]
adaptive_max_pool2d = _max_aliases["adaptive_max_pool2d"]
adaptive_max_pool3d = _max_aliases["adaptive_max_pool3d"]
adaptive_avg_pool1d = _avg_aliases["adaptive_avg_pool1d"]
adaptive_avg_pool2d = _avg_aliases["adaptive_avg_pool2d"]
adaptive_avg_pool3d = _avg_aliases["adaptive_avg_pool3d"]
