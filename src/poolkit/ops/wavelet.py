"""Wavelet pooling (Williams & Li, ICLR 2018): reconstruct at half resolution from a Haar decomposition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_choice
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import sum_passes, sum_passes_backward
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = ["wavelet_pool", "wavelet_pool1d", "wavelet_pool2d", "wavelet_pool3d"]

WAVELETS = ("haar",)


def wavelet_pool(x: Any, *, wavelet: str = "haar", data_format: str = "channels_first") -> np.ndarray:
    """Wavelet pooling: the half-resolution reconstruction from a second-level Haar decomposition.

    The paper's steps, per ``(n, c)`` map: a first-level fast wavelet
    transform (FWT) gives the approximation ``LL1`` and the details ``LH1,
    HL1, HH1``; the details are discarded and ``LL1`` is decomposed again
    into ``LL2, LH2, HL2, HH2``; the inverse FWT of these second-level
    subbands is the output, half the input size on every axis. With a
    perfect-reconstruction wavelet that inverse returns ``LL1`` exactly, so
    the operator computes ``LL1`` directly: along each spatial axis, with
    the orthonormal Haar filters ``[1, 1] / sqrt(2)``,

    ``y[o] = (x[2o] + x[2o + 1]) / sqrt(2)``,

    i.e. ``y = 2^(d/2) * avg_pool(x, 2)`` on ``d`` even-sized axes.

    Gradient: the exact adjoint, ``dx[2o] = dx[2o + 1] = g[o] / sqrt(2)``
    per axis (the inverse FWT of the gradient placed in the approximation
    band, the detail bands zero).

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64;
        float16 is computed in float32.
    wavelet : {"haar"}
        The paper's wavelet (the only one implemented).

    Notes
    -----
    Scale: the paper's orthonormal FWT, so a constant ``c`` becomes
    ``2^(d/2) c`` (``2c`` in 2-D); divide by that factor for a
    mean-preserving pool (which is then ``avg_pool(x, 2)``).

    Odd sizes: the axis is extended by one sample by half-sample symmetric
    extension (the last sample repeated, PyWavelets' ``"symmetric"`` mode),
    so the output has ``ceil(n / 2)`` samples and the last one is
    ``sqrt(2) * x[n - 1]``. The second level then sees ``ceil(n / 2)``
    samples and extends them the same way; its reconstruction, cropped to
    ``ceil(n / 2)``, is still ``LL1``.

    NaN and inf stay inside their 2x2 (2^d) block; a block holding both
    ``+inf`` and ``-inf`` gives NaN (no NumPy warning).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.wavelet import wavelet_pool1d, wavelet_pool2d
    >>> wavelet_pool2d(np.arange(16.0).reshape(1, 1, 4, 4))
    array([[[[ 5.,  9.],
             [21., 25.]]]])
    >>> wavelet_pool1d(np.array([[[1.0, 3.0, 2.0]]])) * np.sqrt(2)   # odd: last sample repeated
    array([[[4., 4.]]])
    """
    return _wavelet_pool(x, wavelet=wavelet, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    divisors: tuple[Any, ...]
    out_shape: tuple[int, ...]


def _divisors(spec: WindowSpec, nd_full: int, dtype: np.dtype) -> tuple[Any, ...]:
    """Per axis: sum the pair and divide by sqrt(2); a lone last sample counts twice (divide by 1/sqrt(2))."""
    r2 = np.sqrt(2.0)
    out = []
    for j, ax in enumerate(spec.axes):
        if ax.size % 2 == 0:
            out.append(dtype.type(r2))
            continue
        d = np.full(ax.out, r2)
        d[-1] = 1.0 / r2
        shape = [1] * nd_full
        shape[2 + j] = ax.out
        out.append(d.astype(dtype).reshape(shape))
    return tuple(out)


def _wavelet_pool(
    x: Any,
    *,
    wavelet: str = "haar",
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "wavelet_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    check_choice(op, "wavelet", wavelet, WAVELETS)
    nd = infer_ndim(op, x, ndim)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    # Pairs (2o, 2o + 1); ceil mode keeps the lone last sample of an odd axis.
    spec = window_spec(batch.spatial, 2, 2, 0, 1, True, op=op)
    divisors = _divisors(spec, batch.x.ndim, batch.x.dtype)
    with np.errstate(invalid="ignore"):  # +inf + -inf in one block: NaN, as documented
        y = sum_passes(batch.x, spec.axes, batch.empty, divisors, batch.channels_last)
    ctx = _Ctx(batch, spec, divisors, y.shape) if need_ctx else None
    return batch.to_user(y), ctx


def _wavelet_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    gx = sum_passes_backward(g, ctx.spec.axes, batch.empty, ctx.divisors, batch.channels_last)
    return {"x": batch.to_user(gx)}


_aliases = define(
    wavelet_pool,
    _wavelet_pool,
    _wavelet_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    ndims=(1, 2, 3),
    example=lambda x: ((x,), {}),
)
wavelet_pool1d = _aliases["wavelet_pool1d"]
wavelet_pool2d = _aliases["wavelet_pool2d"]
wavelet_pool3d = _aliases["wavelet_pool3d"]
