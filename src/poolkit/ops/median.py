"""Median pooling: the (lower) median of each window's taps inside the input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import WindowSpec, window_spec
from ._api import define
from ._axes import arg_dtype
from ._engine import blockwise
from ._input import Batch, check_grad, infer_ndim, prepare
from ._taps import TapND, at_taps, tap_counts, taps_nd

__all__ = ["median_pool", "median_pool1d", "median_pool2d", "median_pool3d"]

# Stacked taps of one chunk of windows: at most this many bytes (about a cache's worth).
_STACK_BYTES = 1024 * 1024


def median_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Median pooling: ``y = median of the window's taps inside the input``.

    With ``c`` taps inside the input, ``y`` is the ``(c - 1) // 2``-th
    smallest (0-based): the median for odd ``c`` and the lower of the two
    middle values for even ``c``, as ``torch.median`` (which does not
    average them). timm's ``MedianPool2d`` is
    ``x.unfold(...).median(-1)`` after its own padding.

    Gradient: each window's gradient goes wholly to the tap that holds its
    median; where several taps hold that value, to the first of them in
    row-major window order.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64;
        float16 is computed in float32 (exactly: the median is a sample).
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool` (``stride=None`` means
        ``kernel_size``).

    Notes
    -----
    Padding and ceil-mode overhang are not taps: border windows take the
    median of fewer samples (timm's ``MedianPool2d`` instead pads by
    reflection and takes the median of ``kernel_size`` samples everywhere).

    A window holding a NaN gives NaN and passes its gradient to its first
    NaN (``torch.median``'s rule). ``+-inf`` are ordinary values.

    The taps of a chunk of windows are stacked, at most about 1 MiB at a
    time, and partially sorted (``numpy.partition``); the whole input is
    never copied ``kernel_size`` times.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.median import median_pool1d, median_pool2d
    >>> median_pool1d(np.array([[[3.0, 1.0, 2.0, 9.0, 4.0, 0.0]]]), 3)
    array([[[2., 4.]]])
    >>> median_pool1d(np.array([[[4.0, 1.0, 3.0, 2.0]]]), 4)   # even count: the lower middle value
    array([[[2.]]])
    >>> median_pool2d(np.arange(9.0).reshape(1, 1, 3, 3), 3, stride=1, padding=1)
    array([[[[1., 2., 2.],
             [3., 4., 4.],
             [4., 5., 5.]]]])
    """
    return _median_pool(x, kernel_size, stride, padding, ceil_mode, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    arg: np.ndarray  # row-major window offset of each window's median tap
    out_shape: tuple[int, ...]


def _rows(t: TapND, r0: int, r1: int) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Tap ``t`` restricted to output rows ``[r0, r1)`` of the first spatial axis.

    Returns (slices into the chunk's outputs, matching strided input slices),
    or None when the tap serves no output of the chunk.
    """
    o, i = t.o[0], t.i[0]
    a, b = max(o.start, r0), min(o.stop, r1)
    if a >= b:
        return None
    s = i.step or 1
    start = i.start + (a - o.start) * s
    return (slice(a - r0, b - r0), *t.o[1:]), (slice(start, start + (b - 1 - a) * s + 1, s), *t.i[1:])


def _median_block(
    xb: np.ndarray,
    yb: np.ndarray,
    argb: np.ndarray | None,
    taps: tuple[TapND, ...],
    kernel: int,
    counts: np.ndarray,
) -> None:
    """Medians (and median taps) of one block of (batch, channel) planes, chunk by chunk of rows."""
    lead = xb.shape[:2]
    out_sp = yb.shape[2:]
    row = int(np.prod(lead)) * int(np.prod(out_sp[1:])) * kernel * xb.itemsize
    per = max(1, _STACK_BYTES // max(row, 1))
    r = (kernel - 1) // 2
    nan_block = bool(np.isnan(xb).any())
    for r0 in range(0, out_sp[0], per):
        r1 = min(r0 + per, out_sp[0])
        cnt = counts[r0:r1]
        short = np.flatnonzero(cnt < kernel)  # border windows: padding or overhang taps
        shape = (*lead, r1 - r0, *out_sp[1:], kernel)
        # Missing taps are +inf, so a window with c taps has its median at rank (c - 1) // 2.
        stack = np.full(shape, np.inf, xb.dtype) if short.size else np.empty(shape, xb.dtype)
        pieces = []
        for t in taps:
            sl = _rows(t, r0, r1)
            if sl is None:
                continue
            pieces.append((t.flat, at_taps(sl[0]), at_taps(sl[1])))
            stack[(*at_taps(sl[0]), t.flat)] = xb[at_taps(sl[1])]
        stack.partition(r, axis=-1)
        ych = yb[:, :, r0:r1]
        np.copyto(ych, stack[..., r])
        if short.size:
            flat = stack.reshape(int(np.prod(lead)), -1, kernel)
            sub = flat[:, short]  # (planes, border windows, kernel): a small copy
            ranks = (cnt.reshape(-1)[short] - 1) // 2
            sub.partition(np.unique(ranks), axis=-1)
            vals = np.take_along_axis(sub, ranks.reshape(1, -1, 1), axis=-1)[..., 0]
            coords = np.unravel_index(short, cnt.shape)
            ych[(slice(None), slice(None), *coords)] = vals.reshape(*lead, -1)
        if nan_block:  # rare: a window holding a NaN gives NaN
            ych[np.isnan(stack).any(axis=-1)] = np.nan
        del stack
        if argb is None:
            continue
        ach = argb[:, :, r0:r1]
        ach[...] = 0
        # Last tap first, each overwriting where it equals the median: the first such tap wins.
        for k, o, i in reversed(pieces):
            xs, ms = xb[i], ych[o]
            eq = np.equal(xs, ms)
            if nan_block:
                eq |= np.isnan(xs) & np.isnan(ms)
            a = ach[o]
            d = np.subtract(a, a.dtype.type(k))
            d *= eq
            a -= d


def _median_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "median_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    out_shape = (*batch.x.shape[:2], *spec.output_size)
    kernel = int(np.prod(spec.kernel_size))
    taps = taps_nd(spec.axes)
    counts = tap_counts(spec.axes)
    y = batch.empty(out_shape)
    arg = batch.empty(out_shape, arg_dtype(kernel)) if need_ctx else None

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        _median_block(ins[0], outs[0], outs[1], taps, kernel, counts)

    blockwise(block, [batch.x], [y, arg], channels_last=batch.channels_last)
    ctx = _Ctx(batch, spec, arg, out_shape) if need_ctx else None
    return batch.to_user(y), ctx


def _median_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    gx = batch.empty(batch.x.shape, fill=0)
    taps = taps_nd(ctx.spec.axes)

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        gb, ab = ins
        gxb = outs[0]
        for t in taps:
            o = at_taps(t.o)
            w = np.multiply(gb[o], np.equal(ab[o], t.flat))
            dst = gxb[at_taps(t.i)]
            np.add(dst, w, out=dst)

    blockwise(block, [g, ctx.arg], [gx], channels_last=batch.channels_last)
    return {"x": batch.to_user(gx)}


_aliases = define(
    median_pool,
    _median_pool,
    _median_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    ndims=(1, 2, 3),
    example=lambda x: ((x,), {"kernel_size": 3, "stride": 2, "padding": 1}),
)
median_pool1d = _aliases["median_pool1d"]
median_pool2d = _aliases["median_pool2d"]
median_pool3d = _aliases["median_pool3d"]
