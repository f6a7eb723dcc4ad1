"""Blur, max-blur, spectral, wavelet and median pooling in torch: pooling as signal processing.

Semantics are the NumPy reference's (:mod:`poolkit.ops.blur`, ``spectral``,
``wavelet``, ``median``). The linear operators (blur, spectral, wavelet)
are written in differentiable torch ops whose autograd is their exact
adjoint (and double backward is free); median pooling is a custom
``torch.autograd.Function`` that saves only the position of each window's
median. float16 and bfloat16 inputs are computed in float32 (median pooling:
in their own dtype, exactly) and returned in the input dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from ..._validate import check_choice
from ...errors import PoolingInputError
from ...geometry import AxisWindow, WindowSpec, adaptive_output_size, window_spec
from ...ops.blur import _source, blur_plan
from ...ops.wavelet import WAVELETS
from .._core import (
    aliases,
    all_finite,
    cpu_fast_path,
    divisor,
    generic_grads,
    host_empty,
    host_zeros,
    in_graph,
    nd_of,
    needs_grad,
    pad_pairs,
    pad_to_windows,
    portable,
    prepare,
    upcast,
    windowed,
)
from .._taps import batch_chunks, inside_mask, tap_select_adjoint, tap_views
from .classic import _avg_pool, _max_pool

__all__ = [
    "blur_pool",
    "blur_pool1d",
    "blur_pool2d",
    "blur_pool3d",
    "max_blur_pool",
    "max_blur_pool1d",
    "max_blur_pool2d",
    "max_blur_pool3d",
    "spectral_pool",
    "spectral_pool1d",
    "spectral_pool2d",
    "spectral_pool3d",
    "wavelet_pool",
    "wavelet_pool1d",
    "wavelet_pool2d",
    "wavelet_pool3d",
    "median_pool",
    "median_pool1d",
    "median_pool2d",
    "median_pool3d",
]


# --------------------------------------------------------------------------- blur


def _pad_axis(a: torch.Tensor, axis: int, ax: AxisWindow, mode: str) -> torch.Tensor:
    """``a`` padded along ``axis``: zeros, or copies of the samples ``_source`` names (no scatter in backward)."""
    lo, hi, n = ax.pad_lo, ax.pad_hi, ax.size
    if lo == 0 and hi == 0:
        return a
    if mode == "constant":
        pads = [0, 0] * (a.dim() - 1 - axis) + [lo, hi]
        return torch.nn.functional.pad(a, pads)
    pieces = [a.narrow(axis, _source(q, n, mode), 1) for q in range(-lo, 0)]
    pieces.append(a)
    pieces += [a.narrow(axis, _source(q, n, mode), 1) for q in range(n, n + hi)]
    return torch.cat(pieces, dim=axis)


def _weighted_pass(a: torch.Tensor, axis: int, ax: AxisWindow, w: tuple[float, ...]) -> torch.Tensor:
    """``y[o] = sum_k w[k] a[o * stride + k]`` along ``axis`` of an already padded ``a``."""
    y = None
    for k, wk in enumerate(w):
        v = _strided(a, axis, k, ax.out, ax.stride)
        y = v * wk if y is None else y + v * wk
    assert y is not None
    return y


_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}


def _blur(
    x: torch.Tensor, mode: str, spec: WindowSpec, weights: tuple[tuple[float, ...], ...]
) -> torch.Tensor:
    """The blur: :class:`_SeparableBlur` on eager CPU calls, else :func:`_blur_conv`."""
    if cpu_fast_path(x) and x.dtype in (torch.float32, torch.float64):
        return _SeparableBlur.apply(x, mode, spec, weights)
    return _blur_conv(x, mode, spec, weights)


def _blur_conv(
    x: torch.Tensor, mode: str, spec: WindowSpec, weights: tuple[tuple[float, ...], ...]
) -> torch.Tensor:
    """Pad every axis, then one depthwise strided convolution with the filter (outer product).

    The convolution is the fastest formulation on accelerators (as antialiased-cnns' own) and its
    backward is deterministic; the separable passes are kept for empty shapes. Reflection and
    replication use PyTorch's padding (one copy) except on portable calls, whose CUDA backward
    would need atomics: those copy the samples with ``cat``.
    """
    nd, c = spec.ndim, x.shape[1]
    pads = [p for ax in reversed(spec.axes) for p in (ax.pad_lo, ax.pad_hi)]
    native = mode in ("reflect", "replicate") and any(pads) and not portable(x)
    if native and mode == "reflect":  # PyTorch reflects at most size - 1 (NumPy's rule repeats)
        native = all(max(ax.pad_lo, ax.pad_hi) < ax.size for ax in spec.axes)
    if native:  # one copy; its CUDA backward (atomics) is avoided on portable calls
        x = torch.nn.functional.pad(x, pads, mode=mode)
    else:
        for j in range(nd):
            x = _pad_axis(x, 2 + j, spec.axes[j], mode)
    if c == 0 or x.shape[0] == 0:
        for j in reversed(range(nd)):
            x = _weighted_pass(x, 2 + j, spec.axes[j], weights[j])
        return x
    kernel = torch.ones((), dtype=x.dtype, device=x.device)
    for w in weights:
        kernel = kernel[..., None] * torch.tensor(w, dtype=x.dtype, device=x.device)
    kernel = kernel.expand(c, 1, *kernel.shape).contiguous()
    y = _CONV[nd](x, kernel, stride=spec.stride, groups=c)
    for j, ax in enumerate(spec.axes):
        if y.shape[2 + j] != ax.out:
            y = y.narrow(2 + j, 0, ax.out)
    return y


def _axis_taps(ax: AxisWindow, mode: str) -> list[tuple[int, int, int, list[tuple[int, int]]]]:
    """For each filter tap along one axis: ``(o_lo, o_hi, i_lo, border)`` as
    :attr:`~poolkit.geometry.AxisWindow.taps` (outputs ``[o_lo, o_hi)`` read input ``i_lo + (o - o_lo)
    stride``), and ``border``: the ``(output, source sample)`` pairs of the outputs whose tap falls in
    the padding (none for zero padding)."""
    out = []
    for k, (o_lo, o_hi, i_lo) in enumerate(ax.taps):
        border = []
        if mode != "constant":
            for o in [*range(0, min(o_lo, ax.out)), *range(o_hi, ax.out)]:
                i = o * ax.stride + k - ax.pad_lo
                if -ax.pad_lo <= i < ax.size + ax.pad_hi:
                    border.append((o, _source(i, ax.size, mode)))
        out.append((o_lo, o_hi, i_lo, border))
    return out


def _blur_axis(a: torch.Tensor, axis: int, ax: AxisWindow, w: tuple[float, ...], mode: str) -> torch.Tensor:
    """One separable blur pass along ``axis``, padding read in place (no padded copy)."""
    shape = list(a.shape)
    shape[axis] = ax.out
    y = host_zeros(shape, a.dtype)
    for wk, (o_lo, o_hi, i_lo, border) in zip(w, _axis_taps(ax, mode)):
        if o_hi > o_lo:
            y.narrow(axis, o_lo, o_hi - o_lo).add_(_strided(a, axis, i_lo, o_hi - o_lo, ax.stride), alpha=wk)
        for o, i in border:
            y.select(axis, o).add_(a.select(axis, i), alpha=wk)
    return y


def _blur_axis_adjoint(
    g: torch.Tensor, axis: int, ax: AxisWindow, w: tuple[float, ...], mode: str
) -> torch.Tensor:
    shape = list(g.shape)
    shape[axis] = ax.size
    ga = host_zeros(shape, g.dtype)
    for wk, (o_lo, o_hi, i_lo, border) in zip(w, _axis_taps(ax, mode)):
        if o_hi > o_lo:
            _strided(ga, axis, i_lo, o_hi - o_lo, ax.stride).add_(g.narrow(axis, o_lo, o_hi - o_lo), alpha=wk)
        for o, i in border:
            ga.select(axis, i).add_(g.select(axis, o), alpha=wk)
    return ga


def _strided(a: torch.Tensor, axis: int, start: int, n: int, stride: int) -> torch.Tensor:
    """``a``'s samples ``start, start + stride, ...`` (``n`` of them) along ``axis``: a view."""
    v = a.narrow(axis, start, (n - 1) * stride + 1)
    if stride == 1:
        return v
    idx: list[Any] = [slice(None)] * a.dim()
    idx[axis] = slice(None, None, stride)
    return v[tuple(idx)]


class _SeparableBlur(torch.autograd.Function):
    """The blur on eager CPU calls: one pass per axis (outermost first, so the passes that stride
    through memory run on the smaller, already reduced arrays), padding read in place, and the
    passes' adjoints in reverse. The depthwise convolution reads a padded copy and runs its
    backward through oneDNN, several times slower here."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, mode: str, spec: WindowSpec, weights: tuple[tuple[float, ...], ...]
    ) -> torch.Tensor:
        ctx.args, ctx.shape = (mode, spec, weights), x.shape
        for j, ax in enumerate(spec.axes):
            x = _blur_axis(x, 2 + j, ax, weights[j], mode)
        return x

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        mode, spec, weights = ctx.args
        if torch.is_grad_enabled():  # double backward: the generic blur's adjoint (linear: any point)
            d = torch.zeros(ctx.shape, dtype=g.dtype, requires_grad=True)
            (gx,) = torch.autograd.grad(_blur_conv(d, mode, spec, weights), d, g, create_graph=True)
            return gx, None, None, None
        for j in reversed(range(spec.ndim)):
            g = _blur_axis_adjoint(g, 2 + j, spec.axes[j], weights[j], mode)
        return g, None, None, None


def blur_pool(
    x: torch.Tensor,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    padding: Any = "antialiased",
    data_format: str = "channels_first",
) -> torch.Tensor:
    """BlurPool: a binomial low-pass filter, depthwise, with a stride (Zhang, ICML 2019).

    See :func:`poolkit.ops.blur_pool` for the filter, the padding modes
    (antialiased-cnns' ``"reflect"`` by default, kornia's ``"constant"``)
    and the reflection rule on maps smaller than the padding (repeated, as
    ``numpy.pad``; PyTorch's reflection raises there). The filter is
    separable: one weighted pass per axis over strided views, no
    kernel-volume copy; padding copies samples with ``cat``, so the backward
    pass has no scatter and is deterministic.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import blur_pool1d
    >>> blur_pool1d(torch.tensor([[[1.0, 2, 3, 4, 5, 6, 7]]]))
    tensor([[[1.5000, 3.0000, 5.0000, 6.5000]]])
    """
    return _blur_pool(x, filt_size, stride, pad_mode, padding=padding, data_format=data_format)


def _blur_pool(
    x: torch.Tensor,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    padding: Any = "antialiased",
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "blur_pool",
) -> torch.Tensor:
    nd = nd_of(op, x, ndim, filt_size, stride)
    pr = prepare(x, op=op, nd=nd, data_format=data_format)
    mode, spec, weights = blur_plan(op, pr.spatial, filt_size, stride, pad_mode, padding)
    return pr.to_user(_blur(upcast(pr.x), mode, spec, weights).to(pr.dtype))


def max_blur_pool(
    x: torch.Tensor,
    kernel_size: Any = 2,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    ceil_mode: bool = False,
    padding: Any = "antialiased",
    data_format: str = "channels_first",
) -> torch.Tensor:
    """MaxBlurPool: max pooling with stride 1, then :func:`blur_pool` (Zhang, ICML 2019).

    ``kernel_size`` is the max-pooling window (antialiased-cnns'
    ``MaxPool2d(kernel_size, stride=1)``, kornia's ``max_pool_size``),
    ``filt_size`` and ``stride`` the blur's (kornia's ``kernel_size`` and
    ``stride``). See :func:`poolkit.ops.max_blur_pool`; the max pooling is
    PyTorch's (gradient to each window's first maximum, NaN wins).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import max_blur_pool2d
    >>> max_blur_pool2d(torch.eye(5)[None, None], 2, 3, pad_mode="constant")  # kornia's doc example
    tensor([[[[0.5625, 0.3125],
              [0.3125, 0.8750]]]])
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
    )


def _stride_one_stages(x: torch.Tensor, kernel: tuple[int, ...]) -> list[torch.Tensor]:
    """``x`` and its stride-1 maximum over each axis in turn, innermost first (stage ``i + 1`` is
    stage ``i`` maxed along its axis; an axis of kernel 1 repeats the stage)."""
    stages = [x]
    for j in reversed(range(len(kernel))):
        a, axis, k = stages[-1], 2 + j, kernel[j]
        if k == 1:
            stages.append(a)
            continue
        n = a.shape[axis] - k + 1
        shape = list(a.shape)
        shape[axis] = n
        m = torch.maximum(a.narrow(axis, 0, n), a.narrow(axis, 1, n), out=host_empty(shape, a.dtype))
        for t in range(2, k):
            torch.maximum(m, a.narrow(axis, t, n), out=m)
        stages.append(m)
    return stages


class _StrideOneMax(torch.autograd.Function):
    """Max pooling with stride 1 (no padding or dilation) on eager CPU calls: ``torch.maximum`` over
    shifted views, one axis at a time from the innermost, which keeps PyTorch's winner (the first
    maximum in row-major order: the first row holding the maximum, and its first). PyTorch's
    kernel writes an input-sized output plus int64 indices and runs several times slower here.

    The backward finds the winners again by equality, axis by axis from the outermost, giving
    each window's gradient to its first equal tap, a batch chunk at a time
    (:func:`~poolkit.torch._taps.batch_chunks`): each chunk's stages are computed again from the
    input (nothing but the input is saved) and its gradient passes through chunk-sized buffers
    into the input's. Non-finite inputs (NaN wins in PyTorch's kernel) and double backward take
    autograd through PyTorch's max pooling.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
        y = _stride_one_stages(x, kernel)[-1]
        ctx.kernel, ctx.finite = kernel, all_finite(y)
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        (x,) = ctx.saved_tensors
        kernel = ctx.kernel
        if torch.is_grad_enabled() or not ctx.finite:
            with torch.enable_grad():
                xg = x.detach().requires_grad_() if not torch.is_grad_enabled() else x
                y = _max_pool(xg, kernel, 1, 0, 1, False, ndim=len(kernel))
            return generic_grads(y, (xg,), (True,), g)[0], None
        axes = [j for j in range(len(kernel)) if kernel[j] > 1]  # outermost first: the forward reversed
        if not axes:
            return g, None
        gx = host_empty(x.shape, g.dtype)
        for b in batch_chunks(tuple(x.shape)):
            stages, gb = _stride_one_stages(x[b], kernel), g[b]
            for j in axes:
                a, m, axis, k = stages[-2 - j], stages[-1 - j], 2 + j, kernel[j]
                n = m.shape[axis]
                # 0/1 hits as floats: a product (a bool mask would cost a branch misprediction each)
                hit, rest = host_empty(m.shape, g.dtype), host_empty(m.shape, g.dtype)
                ga = gx[b] if j == axes[-1] else host_empty(a.shape, a.dtype)
                ga.narrow(axis, n, k - 1).zero_()
                for t in range(k - 1):
                    c = torch.mul(gb, torch.eq(a.narrow(axis, t, n), m, out=hit), out=hit)
                    if t == 0:
                        ga.narrow(axis, 0, n).copy_(c)
                    else:
                        ga.narrow(axis, t, n).add_(c)
                    gb = torch.sub(gb, c, out=rest)  # the share no earlier tap has taken
                ga.narrow(axis, k - 1, n).add_(gb)  # what is left: the last tap is the maximum
                gb = ga
        return gx, None


def _max_blur_pool(
    x: torch.Tensor,
    kernel_size: Any = 2,
    filt_size: Any = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
    *,
    ceil_mode: bool = False,
    padding: Any = "antialiased",
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "max_blur_pool",
) -> torch.Tensor:
    nd = nd_of(op, x, ndim, kernel_size, filt_size, stride)
    pr = prepare(x, op=op, nd=nd, data_format=data_format)
    xc = upcast(pr.x)
    if cpu_fast_path(xc) and xc.dtype in (torch.float32, torch.float64):
        spec = window_spec(pr.spatial, kernel_size, 1, 0, 1, ceil_mode, op=op)
        m = _StrideOneMax.apply(xc, spec.kernel_size)
    else:
        m = _max_pool(pr.x, kernel_size, 1, 0, 1, ceil_mode, ndim=nd, op=op)
    mode, spec, weights = blur_plan(
        op, tuple(int(n) for n in m.shape[2:]), filt_size, stride, pad_mode, padding
    )
    return pr.to_user(_blur(upcast(m), mode, spec, weights).to(pr.dtype))


# --------------------------------------------------------------------------- spectral


def _resize_axis(a: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """``irfft_m(crop(rfft_n(a)))`` along ``axis``: the ``m // 2 + 1`` lowest non-negative frequencies kept.

    ``irfft`` reads only the real part of an even ``m``'s Nyquist coefficient,
    the average of ``X[+m/2]`` and ``X[-m/2]``; autograd through the pair is
    the adjoint, spectral zero-padding with that coefficient split.
    """
    spec = torch.fft.rfft(a, dim=axis).narrow(axis, 0, m // 2 + 1)
    return torch.fft.irfft(spec, n=m, dim=axis)


_MATRIX_MAX = 512  # longest axis resized by a matrix product (O(n m) per line against the FFT's O(n log n))


@functools.lru_cache(maxsize=64)
def _resize_matrix(n: int, m: int, scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``R`` (n x m) with ``a @ R == scale * _resize_axis(a, -1, m)``: the FFT route applied to the
    identity in float64, so both routes compute the same linear map."""
    eye = torch.eye(n, dtype=torch.float64)
    return (_resize_axis(eye, 1, m) * scale).to(dtype=dtype, device=device)


def _resize_by_matrices(
    y: torch.Tensor, sizes: tuple[int, ...], axes: list[int], scale: float
) -> torch.Tensor:
    """Every pooled axis as one matrix product (two or three GEMMs in all; the ``m/n`` scale folded
    into the first matrix). Linear in ``y``: autograd's backward and double backward are GEMMs too."""
    for i, j in enumerate(axes):
        d = 2 + j
        r = _resize_matrix(int(y.shape[d]), sizes[j], scale if i == 0 else 1.0, y.dtype, y.device)
        if d == y.dim() - 1:
            y = y @ r
        else:  # contract axis d: R^T (m x n) times each (n x rest) slab
            rest = y.shape[d + 1 :]
            flat = y.reshape(*y.shape[:d], y.shape[d], math.prod(rest))
            y = (r.t() @ flat).reshape(*y.shape[:d], sizes[j], *rest)
    return y


def spectral_pool(x: torch.Tensor, output_size: Any, *, data_format: str = "channels_first") -> torch.Tensor:
    """Spectral pooling: keep the centred low frequencies of the DFT (Rippel, Snoek, Adams, NeurIPS 2015).

    See :func:`poolkit.ops.spectral_pool` for the crop, the Nyquist rule
    (an even output's Nyquist coefficient is the average of ``+-m/2``, so
    the result is real) and the ``m/n`` scale (a constant stays the same
    constant).

    Each pooled axis is ``torch.fft.irfft(rfft(x)[:m // 2 + 1], n=m)``;
    autograd through the pair is the exact adjoint (the gradient's spectrum
    zero-padded), and double backward is free (the operator is linear).
    A NaN or inf in a line along a pooled axis makes the whole output line
    non-finite.

    Examples
    --------
    >>> import math, torch
    >>> from poolkit.torch.functional import spectral_pool1d
    >>> t = torch.arange(8.0, dtype=torch.float64)
    >>> spectral_pool1d(torch.cos(2 * math.pi * t / 8)[None, None], 4).round(decimals=12) + 0.0
    tensor([[[ 1.,  0., -1.,  0.]]], dtype=torch.float64)
    """
    return _spectral_pool(x, output_size, data_format=data_format)


def _spectral_pool(
    x: torch.Tensor,
    output_size: Any,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "spectral_pool",
) -> torch.Tensor:
    nd = nd_of(op, x, ndim, output_size)
    pr = prepare(x, op=op, nd=nd, data_format=data_format)
    sizes = adaptive_output_size(op, pr.spatial, output_size)
    for axis, (n, m) in enumerate(zip(pr.spatial, sizes)):
        if m > n:
            raise PoolingInputError(
                f"{op}: output_size {sizes} is larger than the input {pr.spatial} on spatial axis "
                f"{axis} ({m} > {n}); spectral pooling only drops frequencies. Use output_size <= "
                f"the input size on every axis (None keeps an axis)."
            )
    y = upcast(pr.x)
    axes = [j for j in reversed(range(nd)) if pr.spatial[j] != sizes[j]]  # m == n: the identity, exactly
    scale = 1.0
    for n, m in zip(pr.spatial, sizes):
        scale *= m / n
    if axes and y.numel() and not in_graph() and max(pr.spatial[j] for j in axes) <= _MATRIX_MAX:
        # feature-map sizes: GEMMs beat the FFT pair several times over (compiled and exported
        # graphs keep the FFT route, which builds no constant)
        return pr.to_user(_resize_by_matrices(y.contiguous(), sizes, axes, scale).to(pr.dtype))
    for j in axes:
        # an empty batch has nothing to transform (and MKL's FFT refuses it): keep the shape only
        y = y.narrow(2 + j, 0, sizes[j]) if y.numel() == 0 else _resize_axis(y, 2 + j, sizes[j])
    if axes:
        y = y * scale
    return pr.to_user(y.to(pr.dtype))


# --------------------------------------------------------------------------- wavelet


def wavelet_pool(
    x: torch.Tensor, *, wavelet: str = "haar", data_format: str = "channels_first"
) -> torch.Tensor:
    """Wavelet pooling: the second-level Haar reconstruction at half resolution (Williams & Li, ICLR 2018).

    See :func:`poolkit.ops.wavelet_pool`: with a perfect-reconstruction
    wavelet the paper's two-level route returns the first-level
    approximation, ``(x[2o] + x[2o + 1]) / sqrt(2)`` per axis, so the
    operator is ``2^(d/2) * avg_pool(x, 2)``; an odd axis is extended by
    repeating its last sample (PyWavelets' ``"symmetric"`` mode), giving
    ``ceil(n / 2)`` outputs. The gradient is the exact adjoint.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import wavelet_pool2d
    >>> wavelet_pool2d(torch.arange(16.0).reshape(1, 1, 4, 4))
    tensor([[[[ 5.,  9.],
              [21., 25.]]]])
    """
    return _wavelet_pool(x, wavelet=wavelet, data_format=data_format)


def _wavelet_pool(
    x: torch.Tensor,
    *,
    wavelet: str = "haar",
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "wavelet_pool",
) -> torch.Tensor:
    check_choice(op, "wavelet", wavelet, WAVELETS)
    nd = nd_of(op, x, ndim)
    pr = prepare(x, op=op, nd=nd, data_format=data_format)
    window_spec(pr.spatial, 2, 2, 0, 1, True, op=op)  # the reference's geometry and its input checks
    y = upcast(pr.x)
    for j, n in enumerate(pr.spatial):
        if n % 2:  # half-sample symmetric extension: the last sample once more
            y = torch.cat([y, y.narrow(2 + j, n - 1, 1)], dim=2 + j)
    y = _avg_pool(y, 2, 2, ndim=nd, op=op) * (2.0 ** (nd / 2))
    return pr.to_user(y.to(pr.dtype))


# --------------------------------------------------------------------------- median

# Stacked taps of one chunk of windows: at most about this many bytes.
_STACK_BYTES = 16 << 20


def _median_rows(
    views: list[torch.Tensor],
    valid: list[torch.Tensor] | None,
    rank: torch.Tensor | None,
    r0: int,
    r1: int,
    need_arg: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Medians (and the first tap holding each) of output rows ``[r0, r1)`` of the first spatial axis."""
    stack = torch.stack([v[:, :, r0:r1] for v in views], dim=-1)
    srt = stack.sort(dim=-1).values  # missing taps are +inf; NaN sorts after +inf
    if rank is None:
        med = srt[..., (len(views) - 1) // 2]
    else:
        rk = rank[:, :, r0:r1].unsqueeze(-1).expand(*srt.shape[:-1], 1)
        med = srt.gather(-1, rk).squeeze(-1)
    last = srt[..., -1]
    med = torch.where(torch.isnan(last), last, med)  # a window holding a NaN gives NaN
    if not need_arg:
        return med, None
    eq = (stack == med.unsqueeze(-1)) | (torch.isnan(stack) & torch.isnan(med).unsqueeze(-1))
    if valid is not None:
        eq = eq & torch.stack([v[:, :, r0:r1] for v in valid], dim=-1)
    return med, eq.to(torch.uint8).argmax(dim=-1)  # argmax: the first tap in row-major window order


@functools.lru_cache(maxsize=32)
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort on ``n`` inputs: comparator pairs ``(i, j)``, ``i < j``, each
    leaving the smaller value at ``i``. Built for the next power of two; comparators reaching past
    ``n`` are dropped (those inputs would be ``+inf``: such comparators change nothing)."""
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


class _NetworkBuffers:
    """Reused buffers of one chunk of windows per tap, for :func:`_median_rows_network`: the taps, the
    sorting network's working copies, and one spare (fresh memory costs more than the comparisons)."""

    def __init__(self, like: torch.Tensor, kernel: int) -> None:
        self.taps = [torch.empty_like(like, memory_format=torch.contiguous_format) for _ in range(kernel)]
        self.work = [torch.empty_like(t) for t in self.taps]
        self.spare = torch.empty_like(self.taps[0])

    def rows(self, dim: int, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        cut = lambda t: t.narrow(dim, 0, n)  # noqa: E731
        return [cut(t) for t in self.taps], [cut(t) for t in self.work], cut(self.spare)


def _median_rows_network(
    views: list[torch.Tensor],
    valid: list[torch.Tensor] | None,
    rank: torch.Tensor | None,
    ranks: list[int],
    dim: int,
    r0: int,
    r1: int,
    need_arg: bool,
    bufs: _NetworkBuffers,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`_median_rows` with a sorting network of elementwise ``minimum``/``maximum`` over
    contiguous copies of the taps (torch's sort is slow on rows of a few values). NaN propagates
    through every comparator to every output, so a window holding one gives NaN, as by sorting.
    The chunk is ``[r0, r1)`` along ``dim`` (the batch, or the first output axis); ``valid`` and
    ``rank`` are per window position, so they are cut along spatial ``dim`` only."""

    def cut(t: torch.Tensor) -> torch.Tensor:
        return t.narrow(dim, r0, r1 - r0) if t.shape[dim] > 1 else t

    taps, srt, spare = bufs.rows(dim, r1 - r0)
    for t, v in enumerate(views):
        srt[t].copy_(taps[t].copy_(cut(v)))
    for i, j in _sorting_network(len(taps)):
        lo = torch.minimum(srt[i], srt[j], out=spare)
        torch.maximum(srt[i], srt[j], out=srt[j])
        spare, srt[i] = srt[i], lo
    med = srt[(len(taps) - 1) // 2] if rank is None else srt[ranks[0]]
    if rank is not None:  # border windows: rank (c - 1) // 2 of their c taps
        rk = cut(rank)
        for r in ranks[1:]:
            med = torch.where(rk == r, srt[r], med)
    med = med.clone()
    if not need_arg:
        return med, None
    nan = torch.isnan(med)
    any_nan = bool(nan.any())
    # padded taps are +inf: they can equal the median only where it is +inf
    masked = valid is not None and bool(torch.isposinf(med).any())
    arg = torch.zeros(med.shape, dtype=torch.uint8 if len(taps) <= 256 else torch.int32, device=med.device)
    for t in reversed(range(len(taps))):  # the first tap in row-major order holding the median
        eq = taps[t] == med
        if any_nan:
            eq |= torch.isnan(taps[t]) & nan
        if masked:
            assert valid is not None
            eq &= cut(valid[t])
        # arg = t where eq: multiply by the mask's complement, then add (no masked fill: far slower)
        arg.mul_(~eq).add_(eq.to(arg.dtype), alpha=t)
    return med, arg


def _median_forward(
    x: torch.Tensor, spec: WindowSpec, need_arg: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    views = tap_views(pad_to_windows(x, spec, float("inf")), spec)
    kernel = len(views)
    valid = rank = None
    if any(pad_pairs(spec)):  # border windows have fewer taps: rank (c - 1) // 2 of their c taps
        valid = tap_views(
            inside_mask(spec, torch.empty((), dtype=torch.bool, device=x.device), True, False), spec
        )
        rank = (divisor(spec, False, torch.empty((), dtype=torch.int64, device=x.device)) - 1) // 2
    out = spec.output_size
    per_row = int(x.shape[0]) * int(x.shape[1]) * math.prod(out[1:]) * kernel * x.element_size()
    step = max(1, _STACK_BYTES // max(per_row, 1))
    if cpu_fast_path(x):  # elementwise networks beat sorting on the CPU
        # chunks of whole planes where the batch allows (long contiguous rows for the copies)
        per_item = per_row // max(int(x.shape[0]), 1) * out[0]
        dim, size = (0, int(x.shape[0])) if per_item <= _STACK_BYTES and x.shape[0] > 1 else (2, out[0])
        step = max(1, _STACK_BYTES // max(per_item if dim == 0 else per_row, 1))
        bufs = _NetworkBuffers(views[0].narrow(dim, 0, min(step, size)), kernel)
        ranks: list[int] = [] if rank is None else rank.unique().tolist()  # the few distinct ranks
        chunks = [
            _median_rows_network(views, valid, rank, ranks, dim, r0, min(r0 + step, size), need_arg, bufs)
            for r0 in range(0, size, step)
        ]
    else:
        dim = 2
        chunks = [
            _median_rows(views, valid, rank, r0, min(r0 + step, out[0]), need_arg)
            for r0 in range(0, out[0], step)
        ]
    ys = [y for y, _ in chunks]
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=dim)
    if not need_arg:
        return y, None
    args = [a.to(torch.uint8 if kernel <= 256 else torch.int32) for _, a in chunks if a is not None]
    return y, args[0] if len(args) == 1 else torch.cat(args, dim=dim)


def _median_grad(g: torch.Tensor, arg: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    return tap_select_adjoint(g, arg, spec)


class _MedianFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
        y, arg = _median_forward(x, spec, True)
        ctx.spec = spec
        ctx.save_for_backward(arg)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        (arg,) = ctx.saved_tensors
        return _median_grad(g, arg, ctx.spec), None


def median_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Median pooling: the lower median of each window's taps inside the input.

    See :func:`poolkit.ops.median_pool`: with ``c`` taps inside the input the
    ``(c - 1) // 2``-th smallest (``torch.median``'s rule); padding and
    overhang are not taps. The gradient goes to the first tap (row-major
    window order) holding the median; a window holding a NaN gives NaN and
    its gradient goes to its first NaN.

    The taps of a chunk of windows are stacked (at most about 16 MiB at a
    time) and sorted; the input is never copied ``kernel_size`` times. The
    backward pass saves one small integer per output (the median's tap) and
    sums the gradient back with strided slice-adds (deterministic). There is
    no second derivative (the double backward is the linear map of the
    gradient, and 0 for ``x``).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import median_pool1d
    >>> median_pool1d(torch.tensor([[[3.0, 1.0, 2.0, 9.0, 4.0, 0.0]]]), 3)
    tensor([[[2., 4.]]])
    """
    return _median_pool(x, kernel_size, stride, padding, ceil_mode, data_format=data_format)


def _median_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "median_pool",
) -> torch.Tensor:
    pr, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format)
    if needs_grad(pr.x):
        y = _MedianFunction.apply(pr.x, spec)
    else:
        y = _median_forward(pr.x, spec, False)[0]
    return pr.to_user(y)


_a = aliases(blur_pool, _blur_pool, (1, 2, 3))
blur_pool1d, blur_pool2d, blur_pool3d = (_a[f"blur_pool{i}d"] for i in (1, 2, 3))
_a = aliases(max_blur_pool, _max_blur_pool, (1, 2, 3))
max_blur_pool1d, max_blur_pool2d, max_blur_pool3d = (_a[f"max_blur_pool{i}d"] for i in (1, 2, 3))
_a = aliases(spectral_pool, _spectral_pool, (1, 2, 3))
spectral_pool1d, spectral_pool2d, spectral_pool3d = (_a[f"spectral_pool{i}d"] for i in (1, 2, 3))
_a = aliases(wavelet_pool, _wavelet_pool, (1, 2, 3))
wavelet_pool1d, wavelet_pool2d, wavelet_pool3d = (_a[f"wavelet_pool{i}d"] for i in (1, 2, 3))
_a = aliases(median_pool, _median_pool, (1, 2, 3))
median_pool1d, median_pool2d, median_pool3d = (_a[f"median_pool{i}d"] for i in (1, 2, 3))
