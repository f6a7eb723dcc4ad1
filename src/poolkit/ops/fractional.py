"""Fractional max pooling (Graham 2014) with PyTorch's window rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool, int_tuple
from ..errors import PoolingConfigError, PoolingInputError
from ..geometry import fractional_output_size, fractional_starts
from ._api import define
from ._engine import GatherAxis, Winners, compose_indices, fractional_axis, max_passes, max_passes_backward
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = [
    "fractional_max_pool",
    "fractional_max_pool1d",
    "fractional_max_pool2d",
    "fractional_max_pool3d",
    "as_generator",
]


def as_generator(op: str, rng: Any) -> np.random.Generator:
    """``None`` (fresh entropy), an int seed, or a ``numpy.random.Generator``."""
    if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise PoolingConfigError(
        f"{op}: rng must be None, an int seed or a numpy.random.Generator, got {rng!r}. "
        f"Pass e.g. rng=np.random.default_rng(0)."
    )


def fractional_max_pool(
    x: Any,
    kernel_size: Any,
    output_size: Any = None,
    output_ratio: Any = None,
    return_indices: bool = False,
    *,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
) -> Any:
    """Fractional max pooling: windows of fixed size at pseudo-random starts.

    Along each axis, with ``alpha = (In - k) / (Out - 1)`` and one sample
    ``u`` in [0, 1) per (batch, channel, axis), window ``i`` starts at
    ``int((i + u) * alpha) - int(u * alpha)`` and the last at ``In - k``
    (PyTorch's rule, which differs from the paper's variable-size regions).

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``).
    kernel_size : int or tuple
    output_size, output_ratio
        Exactly one: the output size, or a ratio in (0, 1) giving
        ``int(In * ratio)``.
    return_indices : bool
    samples : array_like, optional
        PyTorch's ``_random_samples``: shape ``(N, C, ndim)`` in [0, 1), in
        PyTorch's axis order (for 2-D the first entry drives the *width*,
        the second the height; for 3-D they follow (T, H, W)). Given, the
        result equals PyTorch's exactly.
    rng : None, int or numpy.random.Generator
        Draws the samples when ``samples`` is not given.

    Notes
    -----
    Tie and NaN rules as :func:`poolkit.ops.max_pool`. Windows may overlap;
    gradients then accumulate.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import fractional_max_pool2d
    >>> x = np.arange(25.0).reshape(1, 1, 5, 5)
    >>> fractional_max_pool2d(x, 2, output_size=3, samples=np.zeros((1, 1, 2)))
    array([[[[ 6.,  7.,  9.],
             [11., 12., 14.],
             [21., 22., 24.]]]])
    """
    return _fractional_max_pool(
        x,
        kernel_size,
        output_size,
        output_ratio,
        return_indices,
        samples=samples,
        rng=rng,
        data_format=data_format,
    )[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    axes: tuple[GatherAxis, ...]
    winners: Winners | None
    out_shape: tuple[int, ...]


def _sample_axis(nd: int, j: int) -> int:
    """Which entry of PyTorch's ``_random_samples`` drives spatial axis ``j``."""
    return nd - 1 - j if nd == 2 else j


def _fractional_max_pool(
    x: Any,
    kernel_size: Any,
    output_size: Any = None,
    output_ratio: Any = None,
    return_indices: bool = False,
    *,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "fractional_max_pool",
) -> tuple[Any, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size)
    batch = prepare(x, op=op, nd=nd, data_format=data_format)
    return_indices = check_bool(op, "return_indices", return_indices)
    k = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    out = fractional_output_size(op, batch.spatial, k, output_size, output_ratio)
    n, c = batch.x.shape[:2]
    sdtype = np.float64 if batch.x.dtype == np.float64 else np.float32
    if samples is None:
        u = as_generator(op, rng).random((n, c, nd)).astype(sdtype)
    else:
        u = np.asarray(samples)
        if not batch.batched and u.shape == (c, nd):
            u = u[None]
        if u.shape != (n, c, nd):
            raise PoolingInputError(
                f"{op}: samples must have shape (N, C, {nd}) = {(n, c, nd)}, got {u.shape}."
            )
        if not np.issubdtype(u.dtype, np.floating) or not np.all((u >= 0) & (u < 1)):
            raise PoolingInputError(f"{op}: samples must be floats in [0, 1); got values outside it.")
        u = u.astype(sdtype)
    axes = []
    for j in range(nd):
        starts = fractional_starts(batch.spatial[j], out[j], k[j], u[:, :, _sample_axis(nd, j)])
        axes.append(fractional_axis(starts, k[j], batch.spatial[j], 2 + nd, 2 + j))
    cur, winners = max_passes(batch.x, axes, batch.empty, return_indices or need_ctx, batch.channels_last)
    y = batch.to_user(cur)
    outputs: Any = y
    if return_indices:
        outputs = (y, batch.to_user(compose_indices(winners, axes, batch.spatial), cast=False))
    ctx = _Ctx(batch, tuple(axes), winners, cur.shape) if need_ctx else None
    return outputs, ctx


def _fractional_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape)
    g = g.astype(np.float32 if batch.dtype == np.float16 else batch.dtype, copy=False)
    gx = max_passes_backward(g, ctx.winners, ctx.axes, batch.empty, batch.channels_last)
    return {"x": batch.to_user(gx)}


def _fixed_samples(x: Any) -> np.ndarray:
    """Deterministic samples for the registry example (every backend reproduces them)."""
    n, c, nd = x.shape[0], x.shape[1], np.ndim(x) - 2
    return ((np.arange(n * c * nd).reshape(n, c, nd) % 7) + 0.5) / 8


_aliases = define(
    fractional_max_pool,
    _fractional_max_pool,
    _fractional_backward,
    family="classic",
    backends=("numpy", "torch", "keras"),
    stochastic=True,
    example=lambda x: ((x,), {"kernel_size": 2, "output_ratio": 0.5, "samples": _fixed_samples(x)}),
)
fractional_max_pool1d = _aliases["fractional_max_pool1d"]
fractional_max_pool2d = _aliases["fractional_max_pool2d"]
fractional_max_pool3d = _aliases["fractional_max_pool3d"]
