"""Max, average, Lp, adaptive, global pooling and max unpooling in ``keras.ops``.

Each function has the NumPy operator's signature (``kernel_size``,
``stride``, ... and ``data_format``, defaulting to Keras' image data
format) and its semantics: PyTorch's window rules, TensorFlow's "same".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from keras import ops, random

from ..._validate import check_bool, check_choice, check_int, check_real, int_tuple
from ...errors import PoolingConfigError, PoolingInputError
from ...geometry import (
    adaptive_bins,
    adaptive_output_size,
    fractional_output_size,
    unpool_output_size,
    window_spec,
)
from ...ops._input import infer_ndim
from .._core import (
    Layout,
    MaxAxis,
    batch_size,
    data_format_of,
    divisor,
    layout_of,
    pad_windows,
    public,
    scalar,
    separable_max,
    window_axes,
    window_sum,
)

__all__ = [
    "max_pool",
    "avg_pool",
    "lp_pool",
    "adaptive_max_pool",
    "adaptive_avg_pool",
    "global_max_pool",
    "global_avg_pool",
    "fractional_max_pool",
    "max_unpool",
]


def _setup(
    op: str, x: Any, nd: int | None, data_format: str | None, *hints: Any
) -> tuple[Layout, tuple[int, ...]]:
    data_format = data_format_of(op, data_format)
    nd = infer_ndim(op, _Shape(tuple(x.shape)), nd, *hints)
    layout = layout_of(op, tuple(x.shape), nd, data_format, getattr(x, "dtype", None))
    return layout, layout.spatial(tuple(x.shape))


class _Shape:
    def __init__(self, shape: tuple[Any, ...]) -> None:
        self.shape, self.ndim = shape, len(shape)


@public
def max_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    data_format: str | None = None,
    index_format: str = "torch",
    include_batch_in_index: bool = False,
    ndim: int | None = None,
    op: str = "max_pool",
) -> Any:
    """Max pooling with PyTorch's semantics (see :func:`poolkit.ops.max_pool`), in ``keras.ops``."""
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride, dilation)
    spec = window_spec(spatial, kernel_size, stride, padding, dilation, ceil_mode, op=op)
    return_indices = check_bool(op, "return_indices", return_indices)
    index_format = check_choice(op, "index_format", index_format, ("torch", "tf"))
    include_batch_in_index = check_bool(op, "include_batch_in_index", include_batch_in_index)
    if include_batch_in_index and index_format != "tf":
        raise PoolingConfigError(
            f"{op}: include_batch_in_index=True needs index_format='tf'; PyTorch indices are always per (n, c) plane."
        )
    xp = pad_windows(x, layout, spec, float("-inf"))
    y, idx = separable_max(xp, window_axes(layout, spec), track=return_indices)
    if not return_indices:
        return y
    if index_format == "tf":
        c = x.shape[layout.channel_axis]
        ch = np.arange(c).reshape(
            (1,) * (layout.nd + 1) + (c,) if layout.channels_last else (1, c) + (1,) * layout.nd
        )
        idx = idx * c + ops.convert_to_tensor(ch, dtype=idx.dtype)
        if include_batch_in_index:
            batch = ops.reshape(ops.arange(batch_size(x), dtype=idx.dtype), (-1,) + (1,) * (layout.nd + 1))
            idx = idx + batch * (math.prod(spatial) * c)
    return y, idx


@public
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
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "avg_pool",
) -> Any:
    """Average pooling with PyTorch's divisors (see :func:`poolkit.ops.avg_pool`), in ``keras.ops``."""
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride, dilation)
    spec = window_spec(spatial, kernel_size, stride, padding, dilation, ceil_mode, op=op)
    include = check_bool(op, "count_include_pad", count_include_pad)
    dtype = x.dtype
    xc = ops.cast(x, "float32") if str(dtype) in ("float16", "bfloat16") else x
    s = window_sum(xc, layout, spec)
    if divisor_override is not None:
        y = s / float(check_int(op, "divisor_override", divisor_override, 1))
    else:
        y = s / divisor(spec, include, layout, s.dtype)
    return ops.cast(y, dtype)


@public
def lp_pool(
    x: Any,
    norm_type: float,
    kernel_size: Any,
    stride: Any = None,
    ceil_mode: bool = False,
    *,
    padding: Any = 0,
    dilation: Any = 1,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "lp_pool",
) -> Any:
    """Lp pooling ``(sum |x|^p)^(1/p)`` (see :func:`poolkit.ops.lp_pool`): finite for negative inputs."""
    p = check_real(op, "norm_type", norm_type, low=0.0, low_inclusive=False, allow_inf=True)
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride, dilation)
    spec = window_spec(spatial, kernel_size, stride, padding, dilation, ceil_mode, op=op)
    if math.isinf(p):
        return separable_max(pad_windows(ops.abs(x), layout, spec, float("-inf")), window_axes(layout, spec))[
            0
        ]
    dtype = x.dtype
    xc = ops.cast(x, "float32") if str(dtype) in ("float16", "bfloat16") else x
    if p == 1.0:
        a = ops.abs(xc)
    elif p == 2.0:
        a = xc * xc
    else:  # |x|^p with a zero, not NaN, gradient at x = 0
        zero = ops.equal(xc, 0)
        safe = ops.where(zero, ops.ones_like(xc), xc)
        a = ops.where(zero, ops.zeros_like(xc), ops.power(ops.abs(safe), scalar(p, xc)))
    s = window_sum(a, layout, spec)
    if p == 1.0:
        return ops.cast(s, dtype)
    live = ops.greater(s, 0)
    y = ops.where(
        live, ops.power(ops.where(live, s, ops.ones_like(s)), scalar(1.0 / p, s)), ops.zeros_like(s)
    )
    return ops.cast(y, dtype)


# --------------------------------------------------------------------------- adaptive, global


def _bins(x: Any, layout: Layout, out: tuple[int, ...]) -> Any:
    """Adaptive average pooling bin by bin (static slices): no division by zero, no NaN, any sizes."""
    for j, o in enumerate(out):
        axis = layout.spatial_axes[j]
        size = x.shape[axis]
        starts, stops = adaptive_bins(size, o)
        parts = []
        for s, e in zip(starts.tolist(), stops.tolist()):
            idx = [slice(None)] * (layout.nd + 2)
            idx[axis] = slice(s, e)
            piece = x[tuple(idx)]
            parts.append(ops.sum(piece, axis=axis, keepdims=True) / (e - s))  # ops.mean is float32 on JAX
        x = ops.concatenate(parts, axis=axis)
    return x


@public
def adaptive_max_pool(
    x: Any,
    output_size: Any,
    return_indices: bool = False,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "adaptive_max_pool",
) -> Any:
    """Adaptive max pooling (see :func:`poolkit.ops.adaptive_max_pool`): bins ``[floor(i*In/Out), ceil((i+1)*In/Out))``.

    Built bin by bin from static slices, so it has neither the SIGFPE of
    Keras' TensorFlow ``AdaptiveMaxPooling2D(1)`` nor the NaN of its JAX
    backend when the output is at least the size of a non-square input.
    """
    layout, spatial = _setup(op, x, ndim, data_format, output_size)
    out = adaptive_output_size(op, spatial, output_size)
    return_indices = check_bool(op, "return_indices", return_indices)
    y, arg = _adaptive_max(x, layout, spatial, out, return_indices)
    return (y, arg) if return_indices else y


def _adaptive_max(
    x: Any, layout: Layout, spatial: tuple[int, ...], out: tuple[int, ...], track: bool
) -> tuple[Any, Any]:
    """Adaptive max, axis by axis: view ``k`` of every bin gathers ``min(start + k, stop - 1)``."""
    axes = []
    for j, (n, o) in enumerate(zip(spatial, out)):
        a = layout.spatial_axes[j]
        if o == 1:
            axes.append(MaxAxis(a, n, None))
            continue
        starts, stops = adaptive_bins(n, o)
        shape = [1] * (layout.nd + 2)
        shape[a] = o
        positions = [
            np.minimum(starts + k, stops - 1).astype(np.int32) for k in range(int((stops - starts).max()))
        ]

        def pick(t: Any, k: int, a: int = a, positions: list[np.ndarray] = positions) -> Any:
            return ops.take(t, ops.convert_to_tensor(positions[k]), axis=a)

        def coord(k: int, shape: list[int] = shape, positions: list[np.ndarray] = positions) -> np.ndarray:
            return positions[k].reshape(shape)

        axes.append(MaxAxis(a, n, len(positions), pick, coord))
    return separable_max(x, axes, track)


@public
def adaptive_avg_pool(
    x: Any,
    output_size: Any,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "adaptive_avg_pool",
) -> Any:
    """Adaptive average pooling (see :func:`poolkit.ops.adaptive_avg_pool`), bin by bin: never NaN."""
    layout, spatial = _setup(op, x, ndim, data_format, output_size)
    out = adaptive_output_size(op, spatial, output_size)
    dtype = x.dtype
    xc = ops.cast(x, "float32") if str(dtype) in ("float16", "bfloat16") else x
    return ops.cast(_bins(xc, layout, out), dtype)


def global_max_pool(x: Any, keepdims: bool = False, *, data_format: str | None = None) -> Any:
    """Max over all spatial axes (the gradient to the first maximum)."""
    return _global(x, keepdims, data_format, "max")


def global_avg_pool(x: Any, keepdims: bool = False, *, data_format: str | None = None) -> Any:
    """Mean over all spatial axes."""
    return _global(x, keepdims, data_format, "avg")


def _global(x: Any, keepdims: bool, data_format: str | None, kind: str) -> Any:
    op = f"global_{kind}_pool"
    keepdims = check_bool(op, "keepdims", keepdims)
    layout, spatial = _setup(op, x, None, data_format)
    if kind == "avg":
        dtype = x.dtype
        xc = ops.cast(x, "float32") if str(dtype) in ("float16", "bfloat16") else x
        total = ops.sum(xc, axis=layout.spatial_axes, keepdims=True)  # ops.mean is float32 on JAX
        y = ops.cast(total / math.prod(spatial), dtype)
    else:
        y = _adaptive_max(x, layout, spatial, (1,) * layout.nd, False)[0]
    if keepdims:
        return y
    return ops.squeeze(y, axis=layout.spatial_axes)


# --------------------------------------------------------------------------- fractional


@public
def fractional_max_pool(
    x: Any,
    kernel_size: Any,
    output_size: Any = None,
    output_ratio: Any = None,
    return_indices: bool = False,
    *,
    samples: Any = None,
    seed: Any = None,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "fractional_max_pool",
) -> Any:
    """Fractional max pooling with PyTorch's window starts (see :func:`poolkit.ops.fractional_max_pool`).

    ``samples`` is PyTorch's ``_random_samples`` (``(N, C, ndim)`` in [0, 1),
    for 2-D the first entry drives the width); without it they are drawn with
    ``keras.random.uniform(seed=seed)`` (an int or a ``keras.random.SeedGenerator``).
    """
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size)
    nd = layout.nd
    return_indices = check_bool(op, "return_indices", return_indices)
    k = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    out = fractional_output_size(op, spatial, k, output_size, output_ratio)
    n, c = batch_size(x), x.shape[layout.channel_axis]
    sdtype = "float64" if str(x.dtype) == "float64" else "float32"
    if samples is None:
        u = random.uniform((n, c, nd), dtype=sdtype, seed=seed)
    else:
        u = ops.cast(samples, sdtype)
        if len(u.shape) != 3 or u.shape[1:] != (c, nd):
            raise PoolingInputError(f"{op}: samples must have shape (N, C, {nd}), got {tuple(u.shape)}.")
    axes = []
    for j in range(nd):
        a = layout.spatial_axes[j]
        starts = _fractional_starts(spatial[j], out[j], k[j], u[:, :, nd - 1 - j if nd == 2 else j], sdtype)
        if layout.channels_last:
            starts = ops.moveaxis(starts, 1, -1)  # (N, out, C)
        shape = [1] * (nd + 2)
        shape[0], shape[layout.channel_axis], shape[a] = -1, c, out[j]
        starts = ops.reshape(starts, shape)

        def coord(kk: int, starts: Any = starts) -> Any:
            return starts + kk

        def pick(t: Any, kk: int, a: int = a, coord: Any = coord) -> Any:
            full = list(ops.shape(t))
            full[a] = ops.shape(coord(kk))[a]
            return ops.take_along_axis(t, ops.broadcast_to(coord(kk), full), axis=a)

        axes.append(MaxAxis(a, spatial[j], k[j], pick, coord))
    return separable_max(x, axes, return_indices) if return_indices else separable_max(x, axes)[0]


def _fractional_starts(size: int, out: int, kernel: int, u: Any, dtype: str) -> Any:
    """:func:`poolkit.geometry.fractional_starts` on a tensor of samples ``(N, C)``: ``(N, C, out)`` int32."""
    last = ops.full_like(ops.cast(u[:, :, None], "int32"), size - kernel)
    if out == 1:
        return last
    alpha = ops.cast(ops.convert_to_tensor(np.array((size - kernel) / (out - 1), dtype=dtype)), dtype)
    i = ops.convert_to_tensor(np.arange(out - 1, dtype=dtype))
    first = ops.cast(ops.floor((i + u[:, :, None]) * alpha), "int32")
    starts = first - ops.cast(ops.floor(u[:, :, None] * alpha), "int32")
    return ops.concatenate([starts, last], axis=-1)


# --------------------------------------------------------------------------- unpool


def _check_unpool_indices(op: str, idx: Any, plane: int, out_sp: tuple[int, ...]) -> None:
    """Out-of-range indices raise where values are concrete (eager); traced graphs drop them."""
    try:
        lo, hi = (int(ops.convert_to_numpy(f(idx))) for f in (ops.min, ops.max))
    except Exception:  # symbolic (tf.function, jax.jit): values unknown until run
        return
    if lo < 0 or hi >= plane:
        bad = hi if hi >= plane else lo
        raise PoolingInputError(
            f"{op}: index {bad} is outside the output plane of size {plane} (output size {out_sp}). Pass "
            f"the output_size the pooled input had (pooling drops a border that the windows do not cover)."
        )


@public
def max_unpool(
    x: Any,
    indices: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Any = None,
    *,
    data_format: str | None = None,
    index_format: str = "torch",
    ndim: int | None = None,
    op: str = "max_unpool",
) -> Any:
    """Max unpooling (see :func:`poolkit.ops.max_unpool`): the last of repeated indices wins, deterministically."""
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride)
    index_format = check_choice(op, "index_format", index_format, ("torch", "tf"))
    nd = layout.nd
    k = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    s = k if stride is None else int_tuple(op, "stride", stride, nd, 1)
    p = int_tuple(op, "padding", padding, nd, 0)
    out_sp = unpool_output_size(op, spatial, k, s, p, output_size)
    plane = math.prod(out_sp)
    if tuple(indices.shape) != tuple(x.shape):
        raise PoolingInputError(
            f"{op}: indices must have the shape of x {tuple(x.shape)}, got {tuple(indices.shape)}."
        )
    # Work channels-last flattened: (N, P, C) values and plane indices.
    xc = ops.moveaxis(x, 1, -1) if not layout.channels_last else x
    ic = ops.moveaxis(indices, 1, -1) if not layout.channels_last else indices
    n, c = batch_size(x), x.shape[layout.channel_axis]
    vals = ops.reshape(xc, (n, -1, c))
    idx = ops.cast(ops.reshape(ic, (n, -1, c)), "int32")
    if index_format == "tf":
        idx = (idx // c) % plane
    _check_unpool_indices(op, idx, plane, out_sp)
    count = math.prod(spatial)
    # Global slots: ((n * C + c) * plane + index); the last occurrence (largest item number) wins.
    base = (
        ops.arange(n, dtype="int32")[:, None, None] * c + ops.arange(c, dtype="int32")[None, None, :]
    ) * plane
    inside = ops.logical_and(ops.greater_equal(idx, 0), ops.less(idx, plane))
    total = n * c * plane
    slot = ops.reshape(ops.where(inside, base + idx, total), (-1,))  # out of range: the spare slot
    item = ops.reshape(
        ops.broadcast_to(ops.arange(count, dtype="int32")[None, :, None], (n, count, c)), (-1,)
    )
    owner = ops.segment_max(item, slot, num_segments=total + 1)
    winner = ops.equal(ops.take(owner, slot), item)
    kept = ops.where(winner, ops.reshape(vals, (-1,)), ops.zeros_like(ops.reshape(vals, (-1,))))
    target = ops.where(winner, slot, ops.full_like(slot, total))  # losers go to the spare slot
    flat = ops.scatter(ops.expand_dims(target, -1), kept, (total + 1,))[:total]
    y = ops.reshape(flat, (n, c, *out_sp))
    return ops.moveaxis(y, 1, -1) if layout.channels_last else y
