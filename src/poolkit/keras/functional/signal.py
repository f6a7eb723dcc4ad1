"""Blur, max-blur, spectral, wavelet and median pooling in ``keras.ops``: pooling as signal processing.

Semantics are the NumPy reference's (:mod:`poolkit.ops.blur`, ``spectral``,
``wavelet``, ``median``). The linear operators are written in ops whose
autodiff is their exact adjoint: blur is one weighted strided pass per axis
(padding copies samples with ``concatenate``, so the backward pass has no
scatter), spectral pooling is ``irfft(crop(rfft(x)))`` axis by axis, wavelet
pooling a pair sum per axis. Median pooling sorts the taps of a bounded
chunk of windows (no gradient through the sort) and gathers each window's
median from the input, so the gradient reaches exactly the tap the reference
names. float16 and bfloat16 are computed in float32 and returned in their
dtype (median pooling is exact: its output is a sample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from ..._validate import check_choice
from ...errors import PoolingInputError
from ...geometry import AxisWindow, WindowSpec, adaptive_output_size, window_spec
from ...ops.blur import _source, blur_plan
from ...ops.wavelet import WAVELETS
from .._core import Layout, batch_size, pad_windows, public, scalar, separable_max, window_axes, window_sum
from .smooth import compute_dtype, finish, prepare, tap_index

__all__ = ["blur_pool", "max_blur_pool", "spectral_pool", "wavelet_pool", "median_pool"]


def _axis_index(nd: int, axis: int, sl: slice) -> tuple[slice, ...]:
    idx = [slice(None)] * nd
    idx[axis] = sl
    return tuple(idx)


# --------------------------------------------------------------------------- blur


def _pad_axis(a: Any, axis: int, ax: AxisWindow, mode: str) -> Any:
    """``a`` padded along ``axis``: zeros, or copies of the samples the reference's reflection names."""
    lo, hi, n = ax.pad_lo, ax.pad_hi, ax.size
    if lo == 0 and hi == 0:
        return a
    nd = len(a.shape)
    if mode == "constant":
        widths = [[0, 0] for _ in range(nd)]
        widths[axis] = [lo, hi]
        return ops.pad(a, widths)

    def sample(q: int) -> Any:
        s = _source(q, n, mode)
        return a[_axis_index(nd, axis, slice(s, s + 1))]

    pieces = [sample(q) for q in range(-lo, 0)] + [a] + [sample(q) for q in range(n, n + hi)]
    return ops.concatenate(pieces, axis=axis)


def _blur(x: Any, layout: Layout, mode: str, spec: WindowSpec, weights: tuple[tuple[float, ...], ...]) -> Any:
    """The separable binomial blur: per axis, pad, then ``y[o] = sum_k w[k] a[o * stride + k]``."""
    nd = len(x.shape)
    for j in reversed(range(spec.ndim)):
        ax, axis = spec.axes[j], layout.spatial_axes[j]
        a = _pad_axis(x, axis, ax, mode)
        x = None
        for k, wk in enumerate(weights[j]):
            v = a[_axis_index(nd, axis, slice(k, k + (ax.out - 1) * ax.stride + 1, ax.stride))]
            v = v * scalar(wk, v)
            x = v if x is None else x + v
    return x


@public
def blur_pool(
    x: Any,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    padding: Any = "antialiased",
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "blur_pool",
) -> Any:
    """BlurPool: a binomial low-pass filter, depthwise, with a stride (Zhang, ICML 2019).

    See :func:`poolkit.ops.blur_pool` for the filter, the padding modes
    (antialiased-cnns' ``"reflect"`` by default, kornia's ``"constant"``)
    and the reflection on maps smaller than the padding (repeated, as
    ``numpy.pad``). One weighted strided pass per axis, no kernel-volume copy.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import blur_pool1d
    >>> x = ops.convert_to_tensor(np.array([[[1.0, 2, 3, 4, 5, 6, 7]]], "float32"))
    >>> ops.convert_to_numpy(blur_pool1d(x, data_format="channels_first"))
    array([[[1.5, 3. , 5. , 6.5]]], dtype=float32)
    """
    layout, spatial = prepare(op, x, ndim, data_format, filt_size, stride)
    mode, spec, weights = blur_plan(op, spatial, filt_size, stride, pad_mode, padding)
    return finish(_blur(compute_dtype(x), layout, mode, spec, weights), x)


@public
def max_blur_pool(
    x: Any,
    kernel_size: Any = 2,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    ceil_mode: bool = False,
    padding: Any = "antialiased",
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "max_blur_pool",
) -> Any:
    """MaxBlurPool: max pooling with stride 1, then :func:`blur_pool` (Zhang, ICML 2019).

    ``kernel_size`` is the max-pooling window (antialiased-cnns'
    ``MaxPool2d(kernel_size, stride=1)``, kornia's ``max_pool_size``),
    ``filt_size`` and ``stride`` the blur's. See :func:`poolkit.ops.max_blur_pool`;
    the max pooling sends each gradient to its window's first maximum (a NaN wins).

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import max_blur_pool2d
    >>> x = ops.convert_to_tensor(np.eye(5, dtype="float32")[None, None])
    >>> ops.convert_to_numpy(max_blur_pool2d(x, 2, 3, pad_mode="constant", data_format="channels_first"))
    array([[[[0.5625, 0.3125],
             [0.3125, 0.875 ]]]], dtype=float32)
    """
    layout, spatial = prepare(op, x, ndim, data_format, kernel_size, filt_size, stride)
    max_spec = window_spec(spatial, kernel_size, 1, 0, 1, ceil_mode, op=op)
    mode, spec, weights = blur_plan(op, max_spec.output_size, filt_size, stride, pad_mode, padding)
    xp = pad_windows(compute_dtype(x), layout, max_spec, float("-inf"))
    m = separable_max(xp, window_axes(layout, max_spec))[0]
    return finish(_blur(m, layout, mode, spec, weights), x)


# --------------------------------------------------------------------------- spectral


def _resize_axis(a: Any, axis: int, m: int) -> Any:
    """``irfft_m(crop(rfft_n(a)))`` along ``axis``: the ``m // 2 + 1`` lowest non-negative frequencies.

    ``irfft`` reads only the real part of an even ``m``'s Nyquist coefficient,
    the average of ``X[+m/2]`` and ``X[-m/2]``; its autodiff is the adjoint,
    spectral zero-padding with that coefficient split (checked on every backend).
    """
    t = ops.moveaxis(a, axis, -1)
    re, im = ops.rfft(t)
    keep = m // 2 + 1
    t = ops.irfft((re[..., :keep], im[..., :keep]), fft_length=m)
    return ops.moveaxis(t, -1, axis)


def spectral_sizes(op: str, spatial: Sequence[int], output_size: Any) -> tuple[int, ...]:
    """The output size, each axis between 1 and the input's (``None`` keeps an axis)."""
    sizes = adaptive_output_size(op, spatial, output_size)
    for axis, (n, m) in enumerate(zip(spatial, sizes)):
        if m > n:
            raise PoolingInputError(
                f"{op}: output_size {sizes} is larger than the input {tuple(spatial)} on spatial axis "
                f"{axis} ({m} > {n}); spectral pooling only drops frequencies. Use output_size <= "
                f"the input size on every axis (None keeps an axis)."
            )
    return sizes


@public
def spectral_pool(
    x: Any,
    output_size: Any,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "spectral_pool",
) -> Any:
    """Spectral pooling: keep the centred low frequencies of the DFT (Rippel, Snoek, Adams, NeurIPS 2015).

    See :func:`poolkit.ops.spectral_pool` for the crop, the Nyquist rule (an
    even output's Nyquist coefficient is the average of ``+-m/2``, so the
    result is real) and the ``m/n`` scale (a constant stays the same
    constant). Each pooled axis is ``keras.ops.irfft(rfft(x)[:m // 2 + 1], m)``
    on that axis moved last; ``m == n`` leaves an axis untouched.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import spectral_pool1d
    >>> t = np.arange(8.0, dtype="float32")
    >>> x = ops.convert_to_tensor(np.cos(np.pi * t / 2)[None, None])
    >>> np.round(ops.convert_to_numpy(spectral_pool1d(x, 4, data_format="channels_first")), 6)
    array([[[ 0.5, -0.5,  0.5, -0.5]]], dtype=float32)
    """
    layout, spatial = prepare(op, x, ndim, data_format, output_size)
    sizes = spectral_sizes(op, spatial, output_size)
    y = compute_dtype(x)
    axes = [j for j in reversed(range(layout.nd)) if spatial[j] != sizes[j]]
    if not axes:
        return x  # the identity, exactly
    if x.shape[0] == 0:  # an empty batch has nothing to transform (some FFTs refuse it)
        return ops.zeros(layout.shape(0, x.shape[layout.channel_axis], sizes), dtype=x.dtype)
    for j in axes:
        y = _resize_axis(y, layout.spatial_axes[j], sizes[j])
    scale = math.prod(m / n for n, m in zip(spatial, sizes))
    return finish(y * scalar(scale, y), x)


# --------------------------------------------------------------------------- wavelet


@public
def wavelet_pool(
    x: Any,
    *,
    wavelet: str = "haar",
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "wavelet_pool",
) -> Any:
    """Wavelet pooling: the second-level Haar reconstruction at half resolution (Williams & Li, ICLR 2018).

    See :func:`poolkit.ops.wavelet_pool`: per axis ``(x[2o] + x[2o + 1]) / sqrt(2)``
    (``2^(d/2) * avg_pool(x, 2)``); an odd axis repeats its last sample
    (PyWavelets' ``"symmetric"`` mode), giving ``ceil(n / 2)`` outputs.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import wavelet_pool2d
    >>> x = ops.convert_to_tensor(np.arange(16.0, dtype="float32").reshape(1, 1, 4, 4))
    >>> ops.convert_to_numpy(wavelet_pool2d(x, data_format="channels_first")).astype(float).round(4).tolist()
    [[[[5.0, 9.0], [21.0, 25.0]]]]
    """
    check_choice(op, "wavelet", wavelet, WAVELETS)
    layout, spatial = prepare(op, x, ndim, data_format)
    window_spec(spatial, 2, 2, 0, 1, True, op=op)  # the reference's geometry and its input checks
    y = compute_dtype(x)
    nd = len(y.shape)
    for axis, n in zip(layout.spatial_axes, spatial):
        if n % 2:  # half-sample symmetric extension: the last sample once more
            y = ops.concatenate([y, y[_axis_index(nd, axis, slice(n - 1, n))]], axis=axis)
        even = y[_axis_index(nd, axis, slice(0, None, 2))]
        odd = y[_axis_index(nd, axis, slice(1, None, 2))]
        y = (even + odd) / scalar(math.sqrt(2.0), y)
    return finish(y, x)


# --------------------------------------------------------------------------- median

# Stacked taps of one chunk of windows: at most about this many bytes (per sample when the
# batch size is not static). Only the forward pass sorts; nothing of it is kept for the gradient.
_STACK_BYTES = 16 << 20


def _median_values(xs: Any, layout: Layout, spec: WindowSpec, taps: list[tuple[slice, ...]]) -> Any:
    """Each window's median (rank ``(c - 1) // 2`` of its ``c`` taps), sorting chunks of output rows."""
    xp = pad_windows(xs, layout, spec, float("inf"))  # missing taps sort last
    views = [xp[i] for i in taps]
    k = len(taps)
    counts = spec.divisor(False)
    rank = (counts - 1) // 2
    out = spec.output_size
    n = xs.shape[0] if isinstance(xs.shape[0], int) else 1
    c = xs.shape[layout.channel_axis]
    row_bytes = max(
        1, n * c * math.prod(out[1:]) * k * np.dtype(keras.backend.standardize_dtype(xs.dtype)).itemsize
    )
    step = max(1, _STACK_BYTES // row_bytes)
    axis = layout.spatial_axes[0]
    nd = len(xs.shape)
    meds = []
    for r0 in range(0, out[0], step):
        r1 = min(r0 + step, out[0])
        rows = _axis_index(nd, axis, slice(r0, r1))
        srt = ops.sort(ops.stack([v[rows] for v in views], axis=-1), axis=-1)
        ranks = rank[r0:r1]
        shape = (1, *ranks.shape, 1) if layout.channels_last else (1, 1, *ranks.shape)
        med = None
        for q in np.unique(ranks).tolist():  # a few distinct ranks: border windows have fewer taps
            pick = srt[..., q]
            med = (
                pick
                if med is None
                else ops.where(ops.convert_to_tensor(ranks.reshape(shape) == q), pick, med)
            )
        meds.append(med)
    return meds[0] if len(meds) == 1 else ops.concatenate(meds, axis=axis)


@public
def median_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "median_pool",
) -> Any:
    """Median pooling: the lower median of each window's taps inside the input.

    See :func:`poolkit.ops.median_pool`: with ``c`` taps inside the input
    the ``(c - 1) // 2``-th smallest (``torch.median``'s rule); padding and
    overhang are not taps. The gradient goes to the first tap (row-major
    window order) holding the median; a window holding a NaN gives NaN and
    its gradient goes to its first NaN.

    Memory: the taps of a chunk of output rows are stacked and sorted, at
    most about 16 MiB per chunk (per sample when the batch size is not
    static), under ``stop_gradient``; the median is then gathered from the
    input by one index per window, all the backward pass keeps.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import median_pool1d
    >>> x = ops.convert_to_tensor(np.array([[[3.0, 1.0, 2.0, 9.0, 4.0, 0.0]]], "float32"))
    >>> ops.convert_to_numpy(median_pool1d(x, 3, data_format="channels_first"))
    array([[[2., 4.]]], dtype=float32)
    """
    layout, spatial = prepare(op, x, ndim, data_format, kernel_size, stride)
    spec = window_spec(spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    xc = compute_dtype(x)
    xs = ops.stop_gradient(xc)
    nan = ops.isnan(xs)
    taps = tap_index(layout, spec)
    med = _median_values(ops.where(nan, float("inf"), xs), layout, spec, taps)
    nan_win = ops.greater(window_sum(ops.cast(nan, xs.dtype), layout, spec), 0)
    med = ops.where(nan_win, float("nan"), med)
    # The median's tap: the first (row-major) tap inside the input holding it (or, with NaN, a NaN).
    padded = [ax.size + ax.pad_lo + ax.pad_hi + ax.overhang for ax in spec.axes]
    xp = pad_windows(xs, layout, spec, 0.0)
    inside = np.zeros(padded, dtype=bool)
    inside[tuple(slice(ax.pad_lo, ax.pad_lo + ax.size) for ax in spec.axes)] = True
    inside = inside.reshape((1, *padded, 1) if layout.channels_last else (1, 1, *padded))
    flat = np.arange(math.prod(padded), dtype=np.int32).reshape(inside.shape)
    first = None
    for idx in reversed(taps):  # the last tap first, each overwriting where it holds the median
        v = xp[idx]
        hit = ops.logical_or(ops.equal(v, med), ops.logical_and(ops.isnan(v), nan_win))
        hit = ops.logical_and(hit, ops.convert_to_tensor(inside[idx]))
        pos = ops.convert_to_tensor(flat[idx])
        first = ops.where(hit, pos, ops.zeros_like(pos) if first is None else first)
    # Gather each window's median from the padded input: the gradient reaches exactly that tap.
    xg = pad_windows(xc, layout, spec, 0.0)
    n, c = batch_size(x), x.shape[layout.channel_axis]
    p, o = math.prod(padded), math.prod(spec.output_size)
    if layout.channels_last:
        y = ops.take_along_axis(ops.reshape(xg, (n, p, c)), ops.reshape(first, (n, o, c)), axis=1)
    else:
        y = ops.take_along_axis(ops.reshape(xg, (n, c, p)), ops.reshape(first, (n, c, o)), axis=2)
    return finish(ops.reshape(y, layout.shape(n, c, spec.output_size)), x)
