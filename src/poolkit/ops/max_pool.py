"""Max pooling, N-d, with PyTorch's semantics and TensorFlow's index format on request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool, check_choice
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import Winners, compose_indices, max_passes, max_passes_backward
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = ["max_pool", "max_pool1d", "max_pool2d", "max_pool3d", "to_index_format"]

INDEX_FORMATS = ("torch", "tf")


def max_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    data_format: str = "channels_first",
    index_format: str = "torch",
    include_batch_in_index: bool = False,
) -> Any:
    """Max pooling over the trailing spatial axes.

    ``y[n, c, o] = max_{k} x[n, c, o * stride - pad_lo + k * dilation]`` over
    every tap ``k`` of the window that lies inside the input.

    Parameters
    ----------
    x : array_like, float16/32/64
        ``(N, C, *spatial)`` (or ``(N, *spatial, C)`` with
        ``data_format="channels_last"``); the ``*1d/2d/3d`` variants also take
        an unbatched ``(C, *spatial)``.
    kernel_size, stride, dilation : int or tuple
        PyTorch's meaning; ``stride=None`` means ``kernel_size``.
    padding : int, tuple, "same", "valid" or ((lo, hi), ...)
        See :func:`poolkit.geometry.window_spec`.
    ceil_mode : bool
        PyTorch's ceil rule (the last window must start inside the input or
        the left padding).
    return_indices : bool
        Also return the winner of each window.
    data_format : {"channels_first", "channels_last"}
    index_format : {"torch", "tf"}
        ``"torch"``: flat index within one ``(D, H, W)`` plane. ``"tf"``:
        ``tf.nn.max_pool_with_argmax``'s ``(plane_index * C + c)``, plus
        ``n * prod(spatial) * C`` when ``include_batch_in_index``.

    Returns
    -------
    y or (y, indices)

    Notes
    -----
    Padding is ``-inf``, never 0: an all-negative input stays negative at the
    borders. Ties go to the first maximum in row-major window order. A NaN in
    a window wins and propagates; the index points at the window's last NaN
    (PyTorch's CPU rule). A window with no tap inside the input (possible
    only with dilation) gives ``-inf`` and PyTorch's index of its first
    non-negative tap. The gradient goes wholly to the reported winner and
    accumulates where windows overlap.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import max_pool2d
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> max_pool2d(x, 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    >>> neg = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)   # padding is -inf, not 0
    >>> y, idx = max_pool2d(neg, 2, stride=2, padding=1, return_indices=True)
    >>> y[0, 0]
    array([[-1., -2.],
           [-4., -5.]])
    >>> idx[0, 0]
    array([[0, 1],
           [3, 4]])
    """
    return _max_pool(
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        return_indices,
        data_format=data_format,
        index_format=index_format,
        include_batch_in_index=include_batch_in_index,
    )[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    winners: Winners | None
    out_shape: tuple[int, ...]


def to_index_format(
    flat: np.ndarray, index_format: str, include_batch: bool, spatial: tuple[int, ...], op: str
) -> np.ndarray:
    """PyTorch per-plane indices (channels-first array) -> the requested format."""
    index_format = check_choice(op, "index_format", index_format, INDEX_FORMATS)
    include_batch = check_bool(op, "include_batch_in_index", include_batch)
    if index_format == "torch":
        if include_batch:
            from ..errors import PoolingConfigError

            raise PoolingConfigError(
                f"{op}: include_batch_in_index=True needs index_format='tf'; PyTorch indices are "
                f"always per (n, c) plane."
            )
        return flat
    n, c = flat.shape[:2]
    tail = (1,) * (flat.ndim - 2)
    out = flat * c + np.arange(c, dtype=np.int64).reshape((1, c, *tail))
    if include_batch:
        out = out + np.arange(n, dtype=np.int64).reshape((n, 1, *tail)) * (int(np.prod(spatial)) * c)
    return out


def _max_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    data_format: str = "channels_first",
    index_format: str = "torch",
    include_batch_in_index: bool = False,
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "max_pool",
) -> tuple[Any, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride, dilation)
    batch = prepare(x, op=op, nd=nd, data_format=data_format)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, dilation, ceil_mode, op=op)
    return_indices = check_bool(op, "return_indices", return_indices)
    check_choice(op, "index_format", index_format, INDEX_FORMATS)
    track = return_indices or need_ctx
    cur, winners = max_passes(batch.x, spec.axes, batch.empty, track, batch.channels_last)
    y = batch.to_user(cur)
    outputs: Any = y
    if return_indices:
        flat = compose_indices(winners, spec.axes, batch.spatial)
        flat = to_index_format(flat, index_format, include_batch_in_index, batch.spatial, op)
        outputs = (y, batch.to_user(flat, cast=False))
    ctx = _Ctx(batch, spec, winners, cur.shape) if need_ctx else None
    return outputs, ctx


def _max_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape)
    g = g.astype(np.float32 if batch.dtype == np.float16 else batch.dtype, copy=False)
    gx = max_passes_backward(g, ctx.winners, ctx.spec.axes, batch.empty, batch.channels_last)
    return {"x": batch.to_user(gx)}


_aliases = define(
    max_pool,
    _max_pool,
    _max_pool_backward,
    family="classic",
    backends=("numpy", "torch", "keras"),
    example=lambda x: ((x,), {"kernel_size": 2}),
)
max_pool1d = _aliases["max_pool1d"]
max_pool2d = _aliases["max_pool2d"]
max_pool3d = _aliases["max_pool3d"]
