"""Max unpooling: the partial inverse of max pooling, from its indices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_choice, int_tuple
from ..errors import PoolingInputError
from ..geometry import unpool_output_size
from ._api import define
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = ["max_unpool", "max_unpool1d", "max_unpool2d", "max_unpool3d"]


def max_unpool(
    x: Any,
    indices: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Any = None,
    *,
    data_format: str = "channels_first",
    index_format: str = "torch",
) -> np.ndarray:
    """Place each value at its index in a zero output (SegNet / DeconvNet unpooling).

    Parameters
    ----------
    x, indices : array_like
        The values and indices returned by ``max_pool(..., return_indices=True)``.
    kernel_size, stride, padding
        The pooling's settings; they give the default output size
        ``(In - 1) * stride + kernel - 2 * padding``.
    output_size : tuple, optional
        The exact output size (spatial, or with the leading batch/channel
        axes), within ``default +- stride``.
    index_format : {"torch", "tf"}
        ``"tf"`` accepts ``tf.nn.max_pool_with_argmax`` indices, with or
        without the batch term.

    Notes
    -----
    Duplicate indices (overlapping pooling windows that chose the same
    winner) are resolved deterministically: the value that comes last in
    the input's row-major order is written, and only it receives gradient.
    PyTorch's result there depends on how its threads split the work
    (pytorch#78249) and its backward gives every duplicate the gradient
    (pytorch#80204).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import max_pool2d, max_unpool2d
    >>> x = np.array([[[[1.0, 2], [3, 4]]]])
    >>> y, idx = max_pool2d(x, 2, return_indices=True)
    >>> max_unpool2d(y, idx, 2)
    array([[[[0., 0.],
             [0., 4.]]]])
    """
    return _max_unpool(
        x,
        indices,
        kernel_size,
        stride,
        padding,
        output_size,
        data_format=data_format,
        index_format=index_format,
    )[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    src: np.ndarray  # flat positions in x (channels-first order) that were written
    dst: np.ndarray  # their flat positions in the output (channels-first order)
    out_shape: tuple[int, ...]
    in_shape: tuple[int, ...]


def _max_unpool(
    x: Any,
    indices: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Any = None,
    *,
    data_format: str = "channels_first",
    index_format: str = "torch",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "max_unpool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format)
    index_format = check_choice(op, "index_format", index_format, ("torch", "tf"))
    idx = np.asarray(indices)
    if not np.issubdtype(idx.dtype, np.integer):
        raise PoolingInputError(
            f"{op}: indices must be an integer array (from max_pool(..., return_indices=True)), "
            f"got dtype {idx.dtype}."
        )
    idx = batch.from_user(idx, "indices", batch.x.shape).astype(np.int64, copy=False)
    k = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    s = k if stride is None else int_tuple(op, "stride", stride, nd, 1)
    p = int_tuple(op, "padding", padding, nd, 0)
    out_sp = unpool_output_size(op, batch.spatial, k, s, p, output_size)
    n, c = batch.x.shape[:2]
    plane = int(np.prod(out_sp))
    if index_format == "tf":
        idx = (idx // c) % plane
    if idx.size and (idx.min() < 0 or idx.max() >= plane):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise PoolingInputError(
            f"{op}: index {bad} is outside the output plane of size {plane} (output size {out_sp}). "
            f"Pass the output_size the pooled input had."
        )
    base = (np.arange(n * c, dtype=np.int64) * plane).reshape(n, c, *([1] * nd))
    dst = (idx + base).ravel()
    vals = np.ascontiguousarray(batch.x).ravel()
    flat = np.zeros(n * c * plane, dtype=batch.x.dtype)
    owner = np.full(flat.shape, -1, dtype=np.int64)
    src = np.arange(dst.size, dtype=np.int64)
    owner[dst] = src
    if not np.array_equal(owner[dst], src):
        # Duplicates: make "the last one in row-major order wins" explicit
        # rather than relying on NumPy's order of fancy assignment.
        order = np.argsort(dst, kind="stable")
        sd = dst[order]
        last = np.ones(sd.size, dtype=bool)
        last[:-1] = sd[1:] != sd[:-1]
        src = order[last]
        dst = dst[src]
    flat[dst] = vals[src]
    y = flat.reshape((n, c, *out_sp))
    ctx = _Ctx(batch, src, dst, y.shape, batch.x.shape) if need_ctx else None
    return batch.to_user(y), ctx


def _max_unpool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = np.ascontiguousarray(check_grad(batch, grad_output, ctx.out_shape)).ravel()
    gx = np.zeros(int(np.prod(ctx.in_shape)), dtype=g.dtype)
    gx[ctx.src] = g[ctx.dst]
    return {"x": batch.to_user(gx.reshape(ctx.in_shape))}


def _example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    from .max_pool import max_pool

    y, idx = max_pool(x, 2, return_indices=True)
    return (y, idx), {"kernel_size": 2, "output_size": x.shape[2:]}


_aliases = define(
    max_unpool,
    _max_unpool,
    _max_unpool_backward,
    family="classic",
    backends=("numpy", "torch", "keras"),
    example=_example,
)
max_unpool1d = _aliases["max_unpool1d"]
max_unpool2d = _aliases["max_unpool2d"]
max_unpool3d = _aliases["max_unpool3d"]
