"""Spectral pooling (Rippel, Snoek, Adams, NeurIPS 2015): keep the low frequencies of the DFT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PoolingInputError
from ..geometry import adaptive_output_size
from ._api import define
from ._engine import blockwise
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = ["spectral_pool", "spectral_pool1d", "spectral_pool2d", "spectral_pool3d"]


def spectral_pool(x: Any, output_size: Any, *, data_format: str = "channels_first") -> np.ndarray:
    """Spectral pooling: ``y = IDFT(crop(DFT(x)))``, the centred low frequencies kept.

    Along a spatial axis of size ``n`` pooled to ``m <= n``, the output keeps
    the DFT coefficients of frequencies ``-floor(m/2) .. ceil(m/2) - 1``:

    ``y[t] = (1/n) * sum_{|k| < m/2} X[k] e^{2 pi i k t / m}
    + [m even] (1/n) * (X[m/2] + X[-m/2]) / 2 * (-1)^t``

    with ``X = DFT_n(x)``. The axes are pooled one after the other; the
    N-d operator is the N-d DFT, the crop of every axis and the N-d inverse
    DFT, since all three are separable.

    Gradient: the adjoint (spectral zero-padding), per axis
    ``dx = (1/n) * sum_{|k| < m/2} G[k] e^{2 pi i k t / n} + [m even]
    (1/n) * G[m/2] / 2 * (e^{i pi m t / n} + e^{-i pi m t / n})`` with
    ``G = DFT_m(g)``: the gradient's spectrum zero-padded to ``n``, its
    Nyquist coefficient split over ``+-m/2``.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64;
        float16 is computed in float32.
    output_size : int or tuple
        Output size per spatial axis, each ``1 <= m <= n``; ``None`` keeps an
        axis.

    Notes
    -----
    Scaling: the DC coefficient is kept, ``y = (m/n)``-scaled inverse of the
    cropped spectrum, so a constant map stays the same constant and ``y`` is
    the mean-preserving low-pass resampling of ``x`` (the paper does not fix
    a scale).

    Real output (the "corner cases" of the paper, which asks for a
    conjugate-symmetric spectrum without fixing the rule): when ``m`` is even, the
    output's Nyquist frequency ``m/2`` stands for both input frequencies
    ``+m/2`` and ``-m/2``; it receives their average (the real part of the
    cropped coefficient), so ``y`` is real, symmetric under flipping an axis
    and independent of which half of the spectrum a crop would keep. The
    input's own Nyquist coefficient (``n`` even, ``m < n``) is dropped.
    ``m == n`` on an axis leaves it untouched (the identity, exactly).

    Output larger than the input: refused with a ``PoolingInputError``;
    spectral zero-padding is the backward pass, not a pooling.

    The DFT mixes every sample along the pooled axes: a NaN or inf anywhere
    in a line along a pooled axis makes every output of that line
    non-finite, NaN or inf (which the transform decides); axes left at full
    size do not spread it. The operator is linear, so its gradient does not
    depend on ``x`` and stays finite. No NumPy warning is raised.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.spectral import spectral_pool1d
    >>> t = np.arange(8.0)
    >>> np.round(spectral_pool1d(np.cos(2 * np.pi * t / 8)[None, None], 4), 12) + 0.0
    array([[[ 1.,  0., -1.,  0.]]])
    >>> np.round(spectral_pool1d(np.cos(np.pi * t / 2)[None, None], 4), 12)   # output Nyquist: halved
    array([[[ 0.5, -0.5,  0.5, -0.5]]])
    >>> spectral_pool1d(np.full((1, 1, 5), 3.0), 2)   # the DC term is kept
    array([[[3., 3.]]])
    """
    return _spectral_pool(x, output_size, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    out_shape: tuple[int, ...]


def _resize_axis(a: np.ndarray, axis: int, m: int) -> np.ndarray:
    """``irfft_m(R(rfft_n(a)))`` along ``axis``, ``R`` cropping (m < n) or zero-padding (m > n).

    Cropping to an even ``m`` keeps the coefficient of ``+m/2``, whose real
    part (all ``irfft`` reads of a Nyquist coefficient) is the average of
    ``X[+m/2]`` and ``X[-m/2]``. Padding from an even ``n`` halves ``X[n/2]``,
    which ``irfft`` then counts at ``+n/2`` and at ``-n/2``: together the
    adjoint of the crop.
    """
    n = a.shape[axis]
    spec = np.fft.rfft(a, axis=axis)
    idx = [slice(None)] * a.ndim
    if m < n:
        idx[axis] = slice(0, m // 2 + 1)
        spec = spec[tuple(idx)]
    else:
        shape = list(spec.shape)
        shape[axis] = m // 2 + 1
        padded = np.zeros(shape, dtype=spec.dtype)
        idx[axis] = slice(0, n // 2 + 1)
        padded[tuple(idx)] = spec
        if n % 2 == 0:
            idx[axis] = slice(n // 2, n // 2 + 1)
            padded[tuple(idx)] *= 0.5
        spec = padded
    return np.fft.irfft(spec, n=m, axis=axis)


def _resample(
    x: np.ndarray, sizes: tuple[int, ...], scale: float, alloc: Any, channels_last: bool
) -> np.ndarray:
    """Every spatial axis of ``x`` resized to ``sizes`` in the Fourier domain, times ``scale``."""
    y = alloc((*x.shape[:2], *sizes), x.dtype)
    axes = [j for j in reversed(range(len(sizes))) if x.shape[2 + j] != sizes[j]]
    dtype = x.dtype

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        cur = ins[0]
        for j in axes:
            cur = _resize_axis(cur, 2 + j, sizes[j])
        if scale == 1.0:
            np.copyto(outs[0], cur, casting="same_kind")
        else:
            np.multiply(cur, dtype.type(scale), out=outs[0], casting="same_kind")

    with np.errstate(invalid="ignore"):  # inf inputs: inf * scale stays inf, NaN stays NaN
        blockwise(block, [x], [y], channels_last=channels_last)
    return y


def _spectral_pool(
    x: Any,
    output_size: Any,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "spectral_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, output_size)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    sizes = adaptive_output_size(op, batch.spatial, output_size)
    for axis, (n, m) in enumerate(zip(batch.spatial, sizes)):
        if m > n:
            raise PoolingInputError(
                f"{op}: output_size {sizes} is larger than the input {batch.spatial} on spatial axis "
                f"{axis} ({m} > {n}); spectral pooling only drops frequencies. Use output_size <= "
                f"the input size on every axis (None keeps an axis)."
            )
    scale = float(np.prod([m / n for n, m in zip(batch.spatial, sizes)]))
    y = _resample(batch.x, sizes, scale, batch.empty, batch.channels_last)
    ctx = _Ctx(batch, batch.spatial, sizes, y.shape) if need_ctx else None
    return batch.to_user(y), ctx


def _spectral_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    # The forward pass is (m/n) * irfft_m(crop(rfft_n x)) per axis; its adjoint is
    # irfft_n(pad(rfft_m g)): the 1/m of irfft_m and the m/n scale leave the 1/n of irfft_n.
    gx = _resample(g, ctx.in_size, 1.0, batch.empty, batch.channels_last)
    return {"x": batch.to_user(gx)}


def _example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (x,), {"output_size": tuple(max(1, n // 2) for n in np.shape(x)[2:])}


_aliases = define(
    spectral_pool,
    _spectral_pool,
    _spectral_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    ndims=(1, 2, 3),
    example=_example,
)
spectral_pool1d = _aliases["spectral_pool1d"]
spectral_pool2d = _aliases["spectral_pool2d"]
spectral_pool3d = _aliases["spectral_pool3d"]
