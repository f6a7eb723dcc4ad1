"""Adaptive, global and fractional pooling and max unpooling in torch.

Native kernels, except under ONNX export (which cannot take adaptive pooling
whose sizes do not divide the input, nor fractional pooling) and where
:func:`poolkit.torch._core.portable` rules them out (their CUDA backward has
no deterministic version): there adaptive pooling runs bin by bin on static
slices and fractional pooling as gathers, with PyTorch's winner rule and
index format (:func:`poolkit.torch._taps.first_max`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..._validate import check_bool, check_choice, int_tuple
from ...errors import PoolingInputError
from ...geometry import (
    adaptive_bins,
    adaptive_output_size,
    adaptive_window,
    fractional_output_size,
    unpool_output_size,
)
from .._core import aliases, as_generator, nd_of, portable, prepare, upcast
from .._taps import first_max

__all__ = [
    "adaptive_max_pool",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "adaptive_avg_pool",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "global_max_pool",
    "global_avg_pool",
    "fractional_max_pool",
    "fractional_max_pool1d",
    "fractional_max_pool2d",
    "fractional_max_pool3d",
    "max_unpool",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
]

_AMAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
_AAVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _exporting() -> bool:
    """Whether an ONNX export is tracing us (its exporter cannot take non-divisible adaptive pools)."""
    return bool(torch.onnx.is_in_onnx_export())


Reduce = Callable[[tuple[torch.Tensor, ...], int], tuple[torch.Tensor, ...]]


def _bins_reduce(
    ts: tuple[torch.Tensor, ...], out: tuple[int, ...], reduce: Reduce
) -> tuple[torch.Tensor, ...]:
    """``reduce(pieces, dim)`` (keeping ``dim``) over each adaptive bin of ``ts``, axis by axis.

    A regular tiling (every bin ``k`` long, stride ``k``) is one reshape; other sizes take one
    ``narrow`` per bin. Static shapes, so it exports anywhere; the backward of the slices, reshapes
    and reductions used here is deterministic on every device.
    """
    for a, o in enumerate(out):
        axis = 2 + a
        size = int(ts[0].shape[axis])
        regular = adaptive_window(size, o)
        if regular is not None and regular.kernel == regular.stride:
            tiles = tuple(t.reshape(*t.shape[:axis], o, regular.kernel, *t.shape[axis + 1 :]) for t in ts)
            ts = tuple(r.squeeze(axis + 1) for r in reduce(tiles, axis + 1))
            continue
        starts, stops = adaptive_bins(size, o)
        parts = [
            reduce(tuple(t.narrow(axis, s, e - s) for t in ts), axis)
            for s, e in zip(starts.tolist(), stops.tolist())
        ]
        ts = tuple(torch.cat(list(col), dim=axis) for col in zip(*parts))
    return ts


def _mean(pieces: tuple[torch.Tensor, ...], dim: int) -> tuple[torch.Tensor, ...]:
    return (pieces[0].mean(dim=dim, keepdim=True),)


def _first_max(pieces: tuple[torch.Tensor, ...], dim: int) -> tuple[torch.Tensor, ...]:
    """The winner of each piece along ``dim``: ``(value, position)`` pairs, picked by :func:`first_max`."""
    i = first_max(pieces[0], dim)
    return tuple(t.gather(dim, i) for t in pieces)


def _positions(x: torch.Tensor) -> torch.Tensor:
    """Each element's flat index in its ``(n, c)`` plane (PyTorch's index format), shaped like ``x``."""
    spatial = x.shape[2:]
    return (
        torch.arange(math.prod(spatial), device=x.device).reshape(1, 1, *spatial).expand(x.shape).contiguous()
    )


def _gather_winners(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The values of ``x`` at the flat plane positions ``pos``: the gradient goes to each winner alone."""
    return x.flatten(2).gather(2, pos.flatten(2)).reshape(pos.shape)


def _bins_max(x: torch.Tensor, out: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive max pooling on static slices, values and indices as PyTorch's kernels give them.

    Each bin's winner (the last NaN, else the first maximum in row-major order) is found axis by
    axis, which picks the same element as the kernels' row-major scan; ties never split.
    """
    _, pos = _bins_reduce((x.detach(), _positions(x)), out, _first_max)
    return _gather_winners(x, pos), pos


def adaptive_max_pool(
    x: torch.Tensor, output_size: Any, return_indices: bool = False, *, data_format: str = "channels_first"
) -> Any:
    """Adaptive max pooling (see :func:`poolkit.ops.adaptive_max_pool`).

    Native kernels in eager mode; under ONNX export a bin-by-bin form that
    exports for sizes that do not divide the input (pytorch#42653, #64806),
    which is also the portable path (same values, indices and gradients).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import adaptive_max_pool2d
    >>> adaptive_max_pool2d(torch.arange(25.0).reshape(1, 1, 5, 5), 3)
    tensor([[[[ 6.,  8.,  9.],
              [16., 18., 19.],
              [21., 23., 24.]]]])
    """
    return _adaptive_max_pool(x, output_size, return_indices, data_format=data_format)


def _adaptive_max_pool(
    x: torch.Tensor,
    output_size: Any,
    return_indices: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "adaptive_max_pool",
) -> Any:
    nd = nd_of(op, x, ndim, output_size)
    p = prepare(x, op=op, nd=nd, data_format=data_format)
    out = adaptive_output_size(op, p.spatial, output_size)
    return_indices = check_bool(op, "return_indices", return_indices)
    if portable(p.x) or (_exporting() and not return_indices):
        y, idx = _bins_max(p.x, out)
    else:
        y, idx = _AMAX[nd](p.x, out, True)
    return (p.to_user(y), p.to_user(idx)) if return_indices else p.to_user(y)


def adaptive_avg_pool(
    x: torch.Tensor, output_size: Any, *, data_format: str = "channels_first"
) -> torch.Tensor:
    """Adaptive average pooling (see :func:`poolkit.ops.adaptive_avg_pool`).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import adaptive_avg_pool1d
    >>> adaptive_avg_pool1d(torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]]), 3)
    tensor([[[1.5000, 3.0000, 4.5000]]])
    """
    return _adaptive_avg_pool(x, output_size, data_format=data_format)


def _adaptive_avg_pool(
    x: torch.Tensor,
    output_size: Any,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "adaptive_avg_pool",
) -> torch.Tensor:
    nd = nd_of(op, x, ndim, output_size)
    p = prepare(x, op=op, nd=nd, data_format=data_format)
    out = adaptive_output_size(op, p.spatial, output_size)
    xc = upcast(p.x, cpu_only=True)
    y = _bins_reduce((xc,), out, _mean)[0] if _exporting() or portable(xc) else _AAVG[nd](xc, out)
    return p.to_user(y.to(p.dtype))


def global_max_pool(
    x: torch.Tensor, keepdims: bool = False, *, data_format: str = "channels_first"
) -> torch.Tensor:
    """Max over all spatial axes: ``(N, C, *spatial) -> (N, C)``; the gradient goes to the first maximum."""
    return _global(x, keepdims, data_format=data_format, kind="max")


def global_avg_pool(
    x: torch.Tensor, keepdims: bool = False, *, data_format: str = "channels_first"
) -> torch.Tensor:
    """Mean over all spatial axes: ``(N, C, *spatial) -> (N, C)``."""
    return _global(x, keepdims, data_format=data_format, kind="avg")


def _global(
    x: torch.Tensor,
    keepdims: bool = False,
    *,
    data_format: str = "channels_first",
    kind: str,
    ndim: int | None = None,
    op: str | None = None,
) -> torch.Tensor:
    op = op or f"global_{kind}_pool"
    keepdims = check_bool(op, "keepdims", keepdims)
    nd = nd_of(op, x, ndim)
    p = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    flat = p.x.flatten(2)
    if kind == "avg":
        y = upcast(flat, cpu_only=True).mean(dim=2).to(p.dtype)
    else:  # adaptive max to 1: PyTorch's first-maximum rule (amax would split ties)
        y = (_bins_max(flat, (1,))[0] if portable(flat) else F.adaptive_max_pool1d(flat, 1)).squeeze(2)
    if keepdims:
        y = y.reshape(*y.shape, *([1] * nd))
        return p.to_user(y)
    return y


# --------------------------------------------------------------------------- fractional


def fractional_max_pool(
    x: torch.Tensor,
    kernel_size: Any,
    output_size: Any = None,
    output_ratio: Any = None,
    return_indices: bool = False,
    *,
    samples: torch.Tensor | None = None,
    rng: Any = None,
    data_format: str = "channels_first",
) -> Any:
    """Fractional max pooling (see :func:`poolkit.ops.fractional_max_pool`).

    ``samples`` is PyTorch's ``_random_samples`` (``(N, C, ndim)`` in [0, 1));
    otherwise they are drawn from ``rng`` (None: torch's global generator, an
    int seed, or a ``torch.Generator``).
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
    )


def _fractional_max_pool(
    x: torch.Tensor,
    kernel_size: Any,
    output_size: Any = None,
    output_ratio: Any = None,
    return_indices: bool = False,
    *,
    samples: torch.Tensor | None = None,
    rng: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "fractional_max_pool",
) -> Any:
    nd = nd_of(op, x, ndim, kernel_size)
    p = prepare(x, op=op, nd=nd, data_format=data_format)
    return_indices = check_bool(op, "return_indices", return_indices)
    k = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    out = fractional_output_size(op, p.spatial, k, output_size, output_ratio)
    n, c = p.x.shape[:2]
    if samples is None:
        gen = as_generator(op, rng, p.x.device)
        u = torch.rand((n, c, nd), generator=gen, device=p.x.device, dtype=p.x.dtype)
    else:
        u = torch.as_tensor(samples, device=p.x.device, dtype=p.x.dtype)
        if not p.batched and u.dim() == 2:
            u = u.unsqueeze(0)
        if tuple(u.shape) != (n, c, nd):
            raise PoolingInputError(
                f"{op}: samples must have shape (N, C, {nd}) = {(n, c, nd)}, got {tuple(u.shape)}."
            )
    if portable(p.x) or (_exporting() and not return_indices):  # ONNX has no fractional pooling
        y, idx = _fractional_gather(p.x, k, out, u)
    else:
        xin = p.x
        if nd == 1:  # PyTorch has 2-D and 3-D kernels: a 1-D pool is a 2-D pool over a size-1 height
            xin = xin.unsqueeze(2)
            k, out = (1, *k), (1, *out)
            u = torch.cat([u, torch.zeros_like(u)], dim=2)  # sample 0 drives the width in 2-D
        fn = F.fractional_max_pool2d if xin.dim() == 4 else F.fractional_max_pool3d
        y, idx = fn(xin, k, output_size=out, return_indices=True, _random_samples=u)
        if nd == 1:
            y, idx = y.squeeze(2), idx.squeeze(2)
    if return_indices:
        return p.to_user(y), p.to_user(idx)
    return p.to_user(y)


def _fractional_starts(size: int, out: int, kernel: int, u: torch.Tensor) -> torch.Tensor:
    """:func:`poolkit.geometry.fractional_starts` in torch ops, ``u`` of shape (N, C) -> (N, C, out)."""
    last = torch.full((*u.shape, 1), size - kernel, dtype=torch.int64, device=u.device)
    if out == 1:
        return last
    alpha = torch.tensor((size - kernel) / (out - 1), dtype=u.dtype, device=u.device)
    i = torch.arange(out - 1, dtype=u.dtype, device=u.device)
    first = ((i + u.unsqueeze(-1)) * alpha).to(torch.int64) - (u.unsqueeze(-1) * alpha).to(torch.int64)
    return torch.cat([first, last], dim=-1)


def _fractional_gather(
    x: torch.Tensor, k: tuple[int, ...], out: tuple[int, ...], u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractional max pooling as gathers (exportable, deterministic backward): values and indices as
    PyTorch's kernels give them.

    Axis by axis, the ``k`` taps of every window are gathered and the winner picked by
    :func:`first_max` (the last NaN, else the first maximum), carrying its plane position.
    """
    nd = len(k)
    v, pos = x.detach(), _positions(x)
    for j in range(nd):
        axis = 2 + j
        sample = nd - 1 - j if nd == 2 else j  # PyTorch's order of _random_samples
        starts = _fractional_starts(int(v.shape[axis]), out[j], k[j], u[:, :, sample])
        shape = [v.shape[0], v.shape[1]] + [1] * nd
        shape[axis] = out[j]
        full = list(v.shape)
        full[axis] = out[j]
        at = [(starts.reshape(shape) + t).expand(full) for t in range(k[j])]
        v, pos = _first_max(
            (
                torch.stack([v.gather(axis, i) for i in at], -1),
                torch.stack([pos.gather(axis, i) for i in at], -1),
            ),
            -1,
        )
        v, pos = v.squeeze(-1), pos.squeeze(-1)
    return _gather_winners(x, pos), pos


# --------------------------------------------------------------------------- unpool


def max_unpool(
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Any = None,
    *,
    data_format: str = "channels_first",
    index_format: str = "torch",
) -> torch.Tensor:
    """Max unpooling (see :func:`poolkit.ops.max_unpool`).

    Deterministic on every device: where indices repeat, the value that
    comes last in row-major order is written and only it gets gradient
    (``torch.nn.functional.max_unpool2d`` is nondeterministic there and its
    backward wrong, pytorch#78249, #80204).
    """
    return _max_unpool(
        x,
        indices,
        kernel_size,
        stride,
        padding,
        output_size,
        data_format=data_format,
        index_format=index_format,
    )


def _max_unpool(
    x: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Any = None,
    *,
    data_format: str = "channels_first",
    index_format: str = "torch",
    ndim: int | None = None,
    op: str = "max_unpool",
) -> torch.Tensor:
    nd = nd_of(op, x, ndim, kernel_size, stride)
    p = prepare(x, op=op, nd=nd, data_format=data_format)
    index_format = check_choice(op, "index_format", index_format, ("torch", "tf"))
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex():
        raise PoolingInputError(
            f"{op}: indices must be an integer tensor (from max_pool(..., return_indices=True)), got "
            f"{getattr(indices, 'dtype', type(indices).__name__)}."
        )
    idx = p.from_user(indices).to(torch.int64)
    if tuple(idx.shape) != tuple(p.x.shape):
        raise PoolingInputError(f"{op}: indices must have the shape of x, got {tuple(indices.shape)}.")
    k = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    s = k if stride is None else int_tuple(op, "stride", stride, nd, 1)
    pad = int_tuple(op, "padding", padding, nd, 0)
    out_sp = unpool_output_size(op, p.spatial, k, s, pad, output_size)
    n, c = p.x.shape[:2]
    plane = math.prod(out_sp)
    if index_format == "tf":
        idx = torch.remainder(torch.div(idx, c, rounding_mode="floor"), plane)
    flat_idx = idx.reshape(n, c, -1)
    vals = p.x.reshape(n, c, -1)
    # Last occurrence in row-major order wins: scatter_reduce(amax) of positions is order-free.
    pos = torch.arange(flat_idx.shape[2], device=x.device).expand_as(flat_idx)
    owner = torch.full((n, c, plane), -1, dtype=torch.int64, device=x.device)
    owner = owner.scatter_reduce(2, flat_idx, pos, reduce="amax", include_self=True)
    winner = torch.gather(owner, 2, flat_idx) == pos
    kept = torch.where(winner, vals, torch.zeros_like(vals))
    target = torch.where(winner, flat_idx, torch.full_like(flat_idx, plane))  # losers go to a spare slot
    y = torch.zeros((n, c, plane + 1), dtype=p.x.dtype, device=x.device).scatter(2, target, kept)
    return p.to_user(y[:, :, :plane].reshape(n, c, *out_sp))


_a = aliases(adaptive_max_pool, _adaptive_max_pool, (1, 2, 3))
adaptive_max_pool1d, adaptive_max_pool2d, adaptive_max_pool3d = (
    _a[f"adaptive_max_pool{i}d"] for i in (1, 2, 3)
)
_a = aliases(adaptive_avg_pool, _adaptive_avg_pool, (1, 2, 3))
adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d = (
    _a[f"adaptive_avg_pool{i}d"] for i in (1, 2, 3)
)
_a = aliases(fractional_max_pool, _fractional_max_pool, (1, 2, 3))
fractional_max_pool1d, fractional_max_pool2d, fractional_max_pool3d = (
    _a[f"fractional_max_pool{i}d"] for i in (1, 2, 3)
)
_a = aliases(max_unpool, _max_unpool, (1, 2, 3))
max_unpool1d, max_unpool2d, max_unpool3d = (_a[f"max_unpool{i}d"] for i in (1, 2, 3))
