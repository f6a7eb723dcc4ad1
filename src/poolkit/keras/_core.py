"""Shared plumbing for the Keras 3 backend, in ``keras.ops`` only (TensorFlow, JAX, torch).

Windows are read as strided slices of a padded input (one per kernel
offset), in the input's own layout: no transposes and no kernel-volume
copies. Geometry is :mod:`poolkit.geometry`, computed from static shapes:
spatial sizes must be known when a layer is built.

Max-type reductions keep PyTorch's winner rule on every backend (the first
maximum in row-major window order; a NaN wins, the last one): the running
maximum is ``where(greater(v, best) | isnan(v), v, best)``, so the gradient
flows to exactly one winner. ``keras.ops.maximum``'s own gradient splits
ties on JAX and torch and does not, on TensorFlow.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from .._validate import check_choice
from ..errors import PoolingInputError
from ..geometry import WindowSpec
from ..ops._input import DATA_FORMATS, check_rank, float_dtype_error

__all__ = [
    "Layout",
    "layout_of",
    "data_format_of",
    "pad_windows",
    "MaxAxis",
    "window_axes",
    "separable_max",
    "window_sum",
    "divisor",
    "batch_size",
    "index_dtype",
    "public",
    "scalar",
]


def public(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Hide the ``ndim`` and ``op`` arguments the ``*1d/2d/3d`` aliases pass from the public signature."""
    sig = inspect.signature(fn)
    fn.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for p in sig.parameters.values() if p.name not in ("ndim", "op")]
    )
    return fn


def scalar(value: float, like: Any) -> Any:
    """``value`` as a tensor of ``like``'s dtype (Keras' torch backend makes Python floats float32)."""
    return ops.convert_to_tensor(value, dtype=like.dtype)


def data_format_of(op: str, data_format: str | None) -> str:
    """``None`` means ``keras.config.image_data_format()`` (Keras' default, usually channels_last)."""
    if data_format is None:
        data_format = keras.config.image_data_format()
    return check_choice(op, "data_format", data_format, DATA_FORMATS)


@dataclass(frozen=True)
class Layout:
    """Where the spatial and channel axes of a batched input are."""

    nd: int
    channels_last: bool

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        return tuple(range(1, 1 + self.nd)) if self.channels_last else tuple(range(2, 2 + self.nd))

    @property
    def channel_axis(self) -> int:
        return 1 + self.nd if self.channels_last else 1

    def spatial(self, shape: Sequence[Any]) -> tuple[int, ...]:
        return tuple(shape[a] for a in self.spatial_axes)

    def index(self, spatial_slices: Sequence[slice]) -> tuple[slice, ...]:
        """A full index selecting ``spatial_slices`` on the spatial axes."""
        idx = [slice(None)] * (self.nd + 2)
        for a, sl in zip(self.spatial_axes, spatial_slices):
            idx[a] = sl
        return tuple(idx)

    def shape(self, n: Any, c: Any, spatial: Sequence[int]) -> tuple[Any, ...]:
        return (n, *spatial, c) if self.channels_last else (n, c, *spatial)


def layout_of(op: str, shape: Sequence[Any], nd: int, data_format: str, dtype: Any = None) -> Layout:
    """Check a batched input's rank (and dtype) and return its layout; spatial sizes must be known."""
    channels_last = data_format == "channels_last"
    check_rank(op, shape, nd, channels_last, allow_unbatched=False, what="tensor")
    layout = Layout(nd, channels_last)
    if dtype is not None and not keras.backend.is_float_dtype(dtype):
        raise float_dtype_error(op, str(dtype), "x", 'astype("float32")')
    spatial = layout.spatial(shape)
    if any(s is None for s in spatial):
        raise PoolingInputError(
            f"{op}: spatial sizes must be known when the layer is built, got input shape {tuple(shape)}. Give the "
            f"model a fixed input size (e.g. keras.Input((H, W, C)))."
        )
    return layout


def pad_windows(x: Any, layout: Layout, spec: WindowSpec, value: float) -> Any:
    """Pad explicit padding and the ceil-mode overhang with ``value`` (``-inf`` for max, 0 for sums)."""
    widths = [[0, 0] for _ in range(layout.nd + 2)]
    for a, ax in zip(layout.spatial_axes, spec.axes):
        widths[a] = [ax.pad_lo, ax.pad_hi + ax.overhang]
    if not any(lo or hi for lo, hi in widths):
        return x
    return ops.pad(x, widths, constant_values=value)


@dataclass(frozen=True)
class MaxAxis:
    """How one spatial axis of a max-type reduction reads its windows.

    ``pick(t, k)`` is view ``k`` of a tensor along this axis (a strided
    slice, or a gather); ``coord(k)`` the input coordinate each window's
    view ``k`` reads (broadcastable against the view); ``init`` the
    coordinate PyTorch reports when no view beats ``-inf`` (``None``: the
    first view's). ``views=None`` reduces the whole axis at once (global).
    """

    axis: int
    size: int
    views: int | None
    pick: Callable[[Any, int], Any] | None = None
    coord: Callable[[int], Any] | None = None
    init: Any = None


def window_axes(layout: Layout, spec: WindowSpec) -> list[MaxAxis]:
    """The axes of a sliding window over an input padded by :func:`pad_windows`."""
    axes = []
    for j, ax in enumerate(spec.axes):
        a = layout.spatial_axes[j]
        shape = [1] * (layout.nd + 2)
        shape[a] = ax.out
        starts = ax.starts.reshape(shape)

        def pick(t: Any, k: int, a: int = a, ax: Any = ax) -> Any:
            sl = [slice(None)] * (layout.nd + 2)
            sl[a] = slice(k * ax.dilation, k * ax.dilation + (ax.out - 1) * ax.stride + 1, ax.stride)
            return t[tuple(sl)]

        def coord(k: int, starts: np.ndarray = starts, d: int = ax.dilation) -> np.ndarray:
            return (starts + k * d).astype(np.int32)

        init = (starts + ax.first_tap.reshape(shape) * ax.dilation).astype(np.int32)
        axes.append(MaxAxis(a, ax.size, ax.kernel, pick, coord, init))
    return axes


def separable_max(x: Any, axes: Sequence[MaxAxis], track: bool = False) -> tuple[Any, Any]:
    """Max over windows, one axis at a time (innermost first), with PyTorch's winner rule.

    The first maximum in row-major window order wins (reducing the inner
    axis first keeps that order); a NaN wins over numbers and the last NaN
    over earlier ones; a window where nothing beats ``-inf`` reports each
    axis' ``init``. ``where`` (not ``maximum``) carries the values, so the
    gradient reaches exactly the winner on every backend. Returns the
    maxima and, with ``track``, PyTorch's flat per-plane index (``index_dtype``).
    """
    cur, carried = x, []  # carried: winning coordinates of the axes reduced so far (inner ones)
    for ax in sorted(axes, key=lambda a: -a.axis):
        if ax.views is None:
            cur, carried = _reduce_axis(cur, carried, ax, track)
            continue
        best = pos = None
        kept: list[Any] = []
        for k in range(ax.views):
            v = ax.pick(cur, k)
            cs = [ax.pick(c, k) for c in carried]
            if best is None:
                best, kept = v, cs
                if track:
                    coord = ops.convert_to_tensor(ax.coord(k), dtype="int32")
                    if ax.init is None:
                        pos = ops.broadcast_to(coord, ops.shape(v))
                    else:
                        live = ops.logical_or(ops.greater(v, float("-inf")), ops.isnan(v))
                        pos = ops.where(live, coord, ops.convert_to_tensor(ax.init, dtype="int32"))
                continue
            take = ops.logical_or(ops.greater(v, best), ops.isnan(v))
            best = ops.where(take, v, best)
            if track:
                pos = ops.where(take, ops.convert_to_tensor(ax.coord(k), dtype="int32"), pos)
                kept = [ops.where(take, c, b) for c, b in zip(cs, kept)]
        cur = best
        carried = [*kept, pos] if track else []
    if not track:
        return cur, None
    # carried holds the coordinates innermost axis first; compose outermost first
    flat = None
    for ax, c in zip(sorted(axes, key=lambda a: a.axis), reversed(carried)):
        flat = c if flat is None else flat * ax.size + c
    return cur, ops.cast(flat, index_dtype())


def _reduce_axis(t: Any, carried: list[Any], ax: MaxAxis, track: bool) -> tuple[Any, list[Any]]:
    """A whole axis at once: the first maximum (the last NaN), picked with one gather."""
    shape = [1] * len(t.shape)
    shape[ax.axis] = ax.size
    iota = ops.convert_to_tensor(np.arange(ax.size, dtype=np.int32).reshape(shape))
    nan = ops.isnan(t)
    m = ops.max(ops.where(nan, float("-inf"), ops.stop_gradient(t)), axis=ax.axis, keepdims=True)
    first = ops.min(ops.where(ops.equal(t, m), iota, ax.size), axis=ax.axis, keepdims=True)
    last_nan = ops.max(ops.where(nan, iota, -1), axis=ax.axis, keepdims=True)
    idx = ops.where(ops.greater_equal(last_nan, 0), last_nan, first)
    picked = ops.take_along_axis(t, idx, axis=ax.axis)
    if not track:
        return picked, []
    return picked, [ops.take_along_axis(c, idx, axis=ax.axis) for c in carried] + [idx]


def window_sum(x: Any, layout: Layout, spec: WindowSpec) -> Any:
    """Sum of each window (padding and overhang contribute 0), one axis at a time."""
    cur = pad_windows(x, layout, spec, 0.0)
    for ax in window_axes(layout, spec):
        total = None
        for k in range(ax.views):
            v = ax.pick(cur, k)
            total = v if total is None else total + v
        cur = total
    return cur


def divisor(spec: WindowSpec, include_pad: bool, layout: Layout, dtype: Any) -> Any:
    """Each window's divisor (PyTorch's rule), broadcastable against the output."""
    d = spec.divisor(include_pad).clip(1, None).astype(np.float64)
    shape = (1, *d.shape, 1) if layout.channels_last else (1, 1, *d.shape)
    return ops.convert_to_tensor(d.reshape(shape), dtype=dtype)


def batch_size(x: Any) -> Any:
    """The batch size: an int when static, else a scalar tensor (TensorFlow graphs)."""
    n = x.shape[0]
    return ops.shape(x)[0] if n is None else n


@functools.cache
def index_dtype() -> str:
    """``int64`` (PyTorch's and TensorFlow's argmax type) where the backend has it, else ``int32``.

    JAX has no 64-bit integers unless ``jax_enable_x64`` is set.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.backend.standardize_dtype(ops.zeros((), dtype="int64").dtype)
