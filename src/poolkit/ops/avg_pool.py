"""Average pooling, N-d, with PyTorch's divisor rules (and dilation as an extension)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool, check_int
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import sum_passes, sum_passes_backward
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = ["avg_pool", "avg_pool1d", "avg_pool2d", "avg_pool3d"]


def avg_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    dilation: Any = 1,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Average pooling over the trailing spatial axes.

    ``y = (1 / divisor) * sum of the window's taps inside the input``.

    Parameters
    ----------
    x : array_like, float16/32/64
        ``(N, C, *spatial)`` or, with ``data_format="channels_last"``,
        ``(N, *spatial, C)``; float16 is accumulated in float32.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool`.
    count_include_pad : bool
        Whether explicit padding counts in the divisor (PyTorch's default
        True). TensorFlow's ``"SAME"`` average is ``padding="same",
        count_include_pad=False``.
    divisor_override : int, optional
        Divide every window by this number instead.
    dilation : int or tuple
        Extension (PyTorch's average pooling has none): taps spaced
        ``dilation`` apart.

    Notes
    -----
    The divisor is PyTorch's: with ``count_include_pad=True`` it counts the
    taps inside input + explicit padding but never the taps a ceil-mode
    window hangs past the padding (so ``[1, 2, 3, 4, 5]`` with ``k=2, s=2,
    ceil_mode=True`` gives ``[1.5, 3.5, 5.0]``); with ``False`` it counts the
    taps inside the input. A window with no tap inside the input gives 0.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import avg_pool1d, avg_pool2d
    >>> avg_pool1d(np.array([[[1.0, 2, 3, 4, 5]]]), 2, ceil_mode=True)
    array([[[1.5, 3.5, 5. ]]])
    >>> x = np.array([[[[1.0, 2], [3, 4]]]])
    >>> avg_pool2d(x, 2, stride=1, padding="same", count_include_pad=False)
    array([[[[2.5, 3. ],
             [3.5, 4. ]]]])
    """
    return _avg_pool(
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
        divisor_override,
        dilation=dilation,
        data_format=data_format,
    )[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    divisors: tuple[Any, ...]
    out_shape: tuple[int, ...]


def _axis_divisor(counts: np.ndarray, nd_full: int, axis: int, dtype: Any) -> Any:
    """Per-axis divisor: None (all 1), a scalar (all equal) or an array along ``axis``."""
    counts = np.maximum(counts, 1)  # an empty window sums to 0: 0 / 1 = 0, never 0 / 0
    if (counts == counts[0]).all():
        return None if counts[0] == 1 else dtype.type(counts[0])
    shape = [1] * nd_full
    shape[axis] = counts.size
    return counts.astype(dtype).reshape(shape)


def _avg_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    dilation: Any = 1,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "avg_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride, dilation)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, dilation, ceil_mode, op=op)
    include = check_bool(op, "count_include_pad", count_include_pad)
    dtype = batch.x.dtype
    if divisor_override is not None:
        override = check_int(op, "divisor_override", divisor_override, 1)
        divisors = [dtype.type(override)] + [None] * (nd - 1)  # applied after the last pass
    else:
        divisors = [
            _axis_divisor(ax.counts(include), batch.x.ndim, 2 + j, dtype) for j, ax in enumerate(spec.axes)
        ]
    y = sum_passes(batch.x, spec.axes, batch.empty, divisors, batch.channels_last)
    ctx = _Ctx(batch, spec, tuple(divisors), y.shape) if need_ctx else None
    return batch.to_user(y), ctx


def _avg_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    gx = sum_passes_backward(g, ctx.spec.axes, batch.empty, ctx.divisors, batch.channels_last)
    return {"x": batch.to_user(gx)}


_aliases = define(
    avg_pool,
    _avg_pool,
    _avg_pool_backward,
    family="classic",
    backends=("numpy", "torch", "keras"),
    example=lambda x: ((x,), {"kernel_size": 2}),
)
avg_pool1d = _aliases["avg_pool1d"]
avg_pool2d = _aliases["avg_pool2d"]
avg_pool3d = _aliases["avg_pool3d"]
