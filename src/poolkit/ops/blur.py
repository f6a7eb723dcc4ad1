"""Anti-aliased pooling (Zhang, ICML 2019): binomial blur with a stride, and max-blur pooling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_choice, int_tuple
from ..errors import PoolingConfigError
from ..geometry import AxisWindow, WindowSpec, window_spec
from ._api import define
from ._axes import Alloc, at, out_shape, plan
from ._engine import Winners, blockwise, max_passes, max_passes_backward
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = [
    "blur_pool",
    "blur_pool1d",
    "blur_pool2d",
    "blur_pool3d",
    "max_blur_pool",
    "max_blur_pool1d",
    "max_blur_pool2d",
    "max_blur_pool3d",
    "binomial_filter",
]

PAD_MODES = ("reflect", "constant", "replicate")
MAX_FILT = 7


def blur_pool(
    x: Any,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    padding: Any = "antialiased",
    data_format: str = "channels_first",
) -> np.ndarray:
    """BlurPool: a binomial low-pass filter applied depthwise with a stride (Zhang, ICML 2019).

    ``y[n, c, o] = sum_k w[k] * pad(x)[n, c, o * stride + k]`` with
    ``w = b_1 (x) b_2 (x) ...`` the outer product of the rows of Pascal's
    triangle of length ``filt_size``, each normalised to sum 1
    (``b[k] = C(f - 1, k) / 2^(f - 1)``; ``f = 3`` gives ``[1, 2, 1] / 4``).
    The filter is separable, so it runs as one weighted pass per axis
    (no kernel-volume copy); a filter of size 1 is plain sub-sampling
    ``x[..., ::stride]``.

    Gradient: the adjoint, ``dx = pad^T(sum_k w[k] * scatter_k(g))``: the
    gradient of a padded sample goes back to the input sample it copies.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64;
        float16 is computed in float32.
    filt_size : int or tuple
        Binomial filter size per axis, 1 to 7 (antialiased-cnns' range).
    stride : int or tuple
        Sub-sampling factor (2: antialiased-cnns, timm and kornia's default).
    pad_mode : {"reflect", "constant", "replicate"}
        ``"reflect"``: antialiased-cnns and timm (the sample at the border is
        not repeated); ``"constant"``: zeros, kornia and timm's ``"blurpc"``;
        ``"replicate"``: the border sample repeated.
    padding : "antialiased", None, int, tuple or "same"/"valid"
        ``"antialiased"`` (default; ``None`` is the same):
        antialiased-cnns' ``[(f - 1) // 2, ceil((f - 1) / 2)]`` on each axis,
        asymmetric for even sizes, so the output has ``ceil(size / stride)``
        samples. An int ``p`` pads ``p`` on both sides: kornia's
        ``BlurPool2D`` is ``padding=(f - 1) // 2, pad_mode="constant"`` (it
        differs from antialiased-cnns for even ``f``: one sample less on the
        right). Per-axis ints, ``(lo, hi)`` pairs, ``"same"`` and ``"valid"``
        follow :func:`poolkit.geometry.window_spec`.

    Notes
    -----
    Reflection on small maps: ``"reflect"`` is whole-sample reflection
    repeated as often as the padding needs (``numpy.pad(mode="reflect")``,
    periodic with period ``2 * (size - 1)``), and a size-1 axis is
    replicated. It equals antialiased-cnns and PyTorch's reflection wherever
    those are defined (padding < size); they raise on 2x2 maps with
    ``filt_size >= 5`` and on 1x1 maps (antialiased-cnns#47).

    NaN and inf propagate to every output whose window (padding included)
    holds them; a window with both ``+inf`` and ``-inf`` gives NaN, without a
    NumPy warning.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.blur import blur_pool1d, blur_pool2d
    >>> blur_pool1d(np.array([[[1.0, 2, 3, 4, 5, 6, 7]]]))   # reflect: 2, [1, 2, 3], ...
    array([[[1.5, 3. , 5. , 6.5]]])
    >>> blur_pool2d(np.eye(5)[None, None], 3, pad_mode="constant")   # kornia's doc example
    array([[[[0.3125, 0.0625, 0.    ],
             [0.0625, 0.375 , 0.0625],
             [0.    , 0.0625, 0.3125]]]])
    """
    return _blur_pool(x, filt_size, stride, pad_mode, padding=padding, data_format=data_format)[0]


def max_blur_pool(
    x: Any,
    kernel_size: Any = 2,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    ceil_mode: bool = False,
    padding: Any = "antialiased",
    data_format: str = "channels_first",
) -> np.ndarray:
    """MaxBlurPool: max pooling with stride 1, then :func:`blur_pool` (Zhang, ICML 2019).

    ``y = blur_pool(max_pool(x, kernel_size, stride=1), filt_size, stride,
    pad_mode)``: antialiased-cnns' ``MaxPool2d(kernel_size, stride=1)`` +
    ``BlurPool``, and kornia's ``MaxBlurPool2D`` (``max_pool_size`` is
    ``kernel_size`` here). The max pooling has no padding; ``ceil_mode`` is
    passed to it as kornia does (with stride 1 it changes nothing).

    Gradient: the blur's adjoint, then each value to its window's first
    maximum (max pooling's rule).

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    kernel_size : int or tuple
        Max-pooling window (stride 1).
    filt_size, stride, pad_mode, padding
        As :func:`blur_pool`, applied to the max-pooled map.
    ceil_mode : bool
        Passed to the max pooling (no effect at stride 1).

    Notes
    -----
    NaN rules are max pooling's (a NaN wins its windows) followed by the
    blur's.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.blur import max_blur_pool2d
    >>> max_blur_pool2d(np.eye(5)[None, None], 2, 3, pad_mode="constant")   # kornia's doc example
    array([[[[0.5625, 0.3125],
             [0.3125, 0.875 ]]]])
    """
    return _max_blur_pool(
        x,
        kernel_size,
        filt_size,
        stride,
        pad_mode,
        ceil_mode=ceil_mode,
        padding=padding,
        data_format=data_format,
    )[0]


def binomial_filter(filt_size: int) -> np.ndarray:
    """Row ``filt_size`` of Pascal's triangle, normalised to sum 1 (float64).

    Examples
    --------
    >>> binomial_filter(4)
    array([0.125, 0.375, 0.375, 0.125])
    """
    f = int(filt_size)
    return np.array([math.comb(f - 1, k) for k in range(f)], dtype=np.float64) / 2.0 ** (f - 1)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Blur:
    """One blur: its windows on the unpadded map and, for copied padding, on the padded one."""

    spec: WindowSpec
    padded: WindowSpec | None  # windows on the padded copy (None for zero padding)
    mode: str
    weights: tuple[np.ndarray, ...]
    channels_last: bool

    @property
    def order(self) -> tuple[int, ...]:
        nd = self.spec.ndim  # the engine's sum-pass order: outer axes first on channels-last data
        return tuple(range(nd)) if self.channels_last else tuple(reversed(range(nd)))


def blur_plan(
    op: str, spatial: Sequence[int], filt_size: Any, stride: Any, pad_mode: Any, padding: Any
) -> tuple[str, WindowSpec, tuple[tuple[float, ...], ...]]:
    """The checks and geometry of :func:`blur_pool` for every backend: pad mode, windows, binomial weights."""
    nd = len(spatial)
    mode = check_choice(op, "pad_mode", pad_mode, PAD_MODES)
    filt = int_tuple(op, "filt_size", filt_size, nd, 1)
    for f in filt:
        if f > MAX_FILT:
            raise PoolingConfigError(
                f"{op}: filt_size must be between 1 and {MAX_FILT} (the binomial filters of "
                f"antialiased-cnns), got {f}. Pass filt_size=3, 5 or 7."
            )
    if isinstance(padding, str) and padding not in ("antialiased", "same", "valid"):
        raise PoolingConfigError(
            f"{op}: padding must be 'antialiased' (or None), an int, one int or (lo, hi) pair per "
            f"axis, 'same' or 'valid', got {padding!r}."
        )
    if padding is None or padding == "antialiased":
        padding = tuple(((f - 1) // 2, f // 2) for f in filt)
    spec = window_spec(spatial, filt, stride, padding, 1, False, op=op)
    return mode, spec, tuple(tuple(float(v) for v in binomial_filter(f)) for f in filt)


def _plan_blur(
    op: str, spatial: Sequence[int], filt_size: Any, stride: Any, pad_mode: Any, padding: Any, batch: Batch
) -> _Blur:
    mode, spec, weights = blur_plan(op, spatial, filt_size, stride, pad_mode, padding)
    filt = spec.kernel_size
    padded = None
    if mode != "constant":
        sizes = [ax.size + ax.pad_lo + ax.pad_hi for ax in spec.axes]
        padded = window_spec(sizes, filt, spec.stride, 0, 1, False, op=op)
    dtype = batch.x.dtype
    return _Blur(spec, padded, mode, tuple(np.asarray(w, dtype) for w in weights), batch.channels_last)


def _source(m: int, n: int, mode: str) -> int:
    """Input sample that padded position ``m`` (input coordinates, outside ``[0, n)``) copies."""
    if mode == "replicate" or n == 1:
        return min(max(m, 0), n - 1)
    period = 2 * (n - 1)  # reflection repeated: numpy.pad(mode="reflect")
    r = m % period
    return r if r < n else period - r


# --------------------------------------------------------------------------- one axis


def _pad_axis(a: np.ndarray, axis: int, ax: AxisWindow, mode: str, alloc: Alloc) -> np.ndarray:
    """A copy of ``a`` padded along ``axis`` by ``ax``'s padding (reflect or replicate)."""
    lo, hi, n = ax.pad_lo, ax.pad_hi, ax.size
    if lo == 0 and hi == 0:
        return a
    nd = a.ndim
    out = alloc(out_shape(a.shape, axis, n + lo + hi), a.dtype)
    np.copyto(out[at(nd, axis, slice(lo, lo + n))], a)
    for p in (*range(lo), *range(lo + n, lo + n + hi)):
        s = _source(p - lo, n, mode)
        np.copyto(out[at(nd, axis, slice(p, p + 1))], a[at(nd, axis, slice(s, s + 1))])
    return out


def _unpad_axis(
    gp: np.ndarray, axis: int, ax: AxisWindow, mode: str, alloc: Alloc, out: np.ndarray | None
) -> np.ndarray:
    """Adjoint of :func:`_pad_axis`: each padded sample's gradient back to the sample it copies."""
    lo, hi, n = ax.pad_lo, ax.pad_hi, ax.size
    nd = gp.ndim
    gx = alloc(out_shape(gp.shape, axis, n), gp.dtype) if out is None else out
    np.copyto(gx, gp[at(nd, axis, slice(lo, lo + n))])
    for p in (*range(lo), *range(lo + n, lo + n + hi)):
        s = _source(p - lo, n, mode)
        dst = gx[at(nd, axis, slice(s, s + 1))]
        np.add(dst, gp[at(nd, axis, slice(p, p + 1))], out=dst)
    return gx


def _weighted_pass(
    x: np.ndarray, axis: int, ax: AxisWindow, w: np.ndarray, alloc: Alloc, out: np.ndarray | None
) -> np.ndarray:
    """``y[o] = sum_k w[k] x[o * stride - pad_lo + k]`` along one axis (padding contributes 0)."""
    nd = x.ndim
    shape = out_shape(x.shape, axis, ax.out)
    y = alloc(shape, x.dtype) if out is None else out
    p = plan(ax)
    head = p.taps[0]  # every window holds a tap: the geometry's padding is at most half the filter
    np.multiply(x[at(nd, axis, head.i)], w[head.k], out=y[at(nd, axis, head.o)])
    for sl in p.uncovered:
        y[at(nd, axis, sl)] = 0
    buf = None
    for t in p.taps[1:]:
        o = at(nd, axis, t.o)
        buf = alloc(shape, x.dtype) if buf is None else buf
        tmp = np.multiply(x[at(nd, axis, t.i)], w[t.k], out=buf[o])
        np.add(y[o], tmp, out=y[o])
    return y


def _weighted_pass_backward(
    g: np.ndarray, axis: int, ax: AxisWindow, w: np.ndarray, alloc: Alloc, out: np.ndarray | None
) -> np.ndarray:
    """Adjoint of :func:`_weighted_pass`."""
    nd = g.ndim
    gx = alloc(out_shape(g.shape, axis, ax.size), g.dtype) if out is None else out
    gx[...] = 0
    buf = None
    for t in plan(ax).taps:
        o = at(nd, axis, t.o)
        buf = alloc(g.shape, g.dtype) if buf is None else buf
        tmp = np.multiply(g[o], w[t.k], out=buf[o])
        dst = gx[at(nd, axis, t.i)]
        np.add(dst, tmp, out=dst)
    return gx


# --------------------------------------------------------------------------- whole blur


def _blur_forward(x: np.ndarray, b: _Blur, alloc: Alloc) -> np.ndarray:
    """Blur a channels-first ``x`` block by block; padded copies are block-sized."""
    y = alloc((*x.shape[:2], *b.spec.output_size), x.dtype)
    order = b.order

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        cur = ins[0]
        for p, j in enumerate(order):
            out = outs[0] if p == len(order) - 1 else None
            if b.padded is None:
                cur = _weighted_pass(cur, 2 + j, b.spec.axes[j], b.weights[j], alloc, out)
            else:
                src = _pad_axis(cur, 2 + j, b.spec.axes[j], b.mode, alloc)
                cur = _weighted_pass(src, 2 + j, b.padded.axes[j], b.weights[j], alloc, out)

    with np.errstate(invalid="ignore"):  # +inf and -inf in one window: NaN, as documented
        blockwise(block, [x], [y], channels_last=b.channels_last)
    return y


def _blur_backward(g: np.ndarray, b: _Blur, alloc: Alloc) -> np.ndarray:
    gx = alloc((*g.shape[:2], *b.spec.input_size), g.dtype)
    order = tuple(reversed(b.order))

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        cur = ins[0]
        for p, j in enumerate(order):
            out = outs[0] if p == len(order) - 1 else None
            if b.padded is None:
                cur = _weighted_pass_backward(cur, 2 + j, b.spec.axes[j], b.weights[j], alloc, out)
            else:
                gp = _weighted_pass_backward(cur, 2 + j, b.padded.axes[j], b.weights[j], alloc, None)
                cur = _unpad_axis(gp, 2 + j, b.spec.axes[j], b.mode, alloc, out)

    with np.errstate(invalid="ignore"):
        blockwise(block, [g], [gx], channels_last=b.channels_last)
    return gx


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    blur: _Blur
    out_shape: tuple[int, ...]
    max_spec: WindowSpec | None = None
    winners: Winners | None = None


def _blur_pool(
    x: Any,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    padding: Any = "antialiased",
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "blur_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, filt_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    b = _plan_blur(op, batch.spatial, filt_size, stride, pad_mode, padding, batch)
    y = _blur_forward(batch.x, b, batch.empty)
    ctx = _Ctx(batch, b, y.shape) if need_ctx else None
    return batch.to_user(y), ctx


def _blur_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    gx = _blur_backward(g, ctx.blur, batch.empty)
    if ctx.winners is not None:
        gx = max_passes_backward(gx, ctx.winners, ctx.max_spec.axes, batch.empty, batch.channels_last)
    return {"x": batch.to_user(gx)}


def _max_blur_pool(
    x: Any,
    kernel_size: Any = 2,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    ceil_mode: bool = False,
    padding: Any = "antialiased",
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "max_blur_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, filt_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    max_spec = window_spec(batch.spatial, kernel_size, 1, 0, 1, ceil_mode, op=op)
    m, winners = max_passes(batch.x, max_spec.axes, batch.empty, need_ctx, batch.channels_last)
    b = _plan_blur(op, m.shape[2:], filt_size, stride, pad_mode, padding, batch)
    y = _blur_forward(m, b, batch.empty)
    del m
    ctx = _Ctx(batch, b, y.shape, max_spec, winners) if need_ctx else None
    return batch.to_user(y), ctx


_blur_aliases = define(
    blur_pool,
    _blur_pool,
    _blur_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    ndims=(1, 2, 3),
    example=lambda x: ((x,), {"filt_size": 3, "stride": 2}),
)
blur_pool1d = _blur_aliases["blur_pool1d"]
blur_pool2d = _blur_aliases["blur_pool2d"]
blur_pool3d = _blur_aliases["blur_pool3d"]

_max_blur_aliases = define(
    max_blur_pool,
    _max_blur_pool,
    _blur_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    ndims=(1, 2, 3),
    example=lambda x: ((x,), {"kernel_size": 2, "filt_size": 3, "stride": 2}),
)
max_blur_pool1d = _max_blur_aliases["max_blur_pool1d"]
max_blur_pool2d = _max_blur_aliases["max_blur_pool2d"]
max_blur_pool3d = _max_blur_aliases["max_blur_pool3d"]
