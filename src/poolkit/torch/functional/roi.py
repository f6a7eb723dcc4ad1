"""RoI max pooling and RoI Align in torch, as ``torchvision.ops.roi_pool`` and ``roi_align``.

Semantics are the NumPy reference's (:mod:`poolkit.ops.roi`); the shared
machinery (box formats, the separable linear map behind RoI Align, the
rules for unusable boxes) is described in :mod:`._regions`. RoI max
pooling is a 2-D sparse table: the maximum over every ``2**a x 2**b``
block and its row-major first position, each level one shifted
comparison of the previous; each bin is four overlapping blocks, ties to
the first pixel in row-major order. The tables take ``log2(H) log2(W)``
times the input, built for a slice of channels at a time; the bins cost
``O(K oh ow C)`` whatever the box sizes. Its backward sums the gradients of
the bins a pixel wins after a stable sort of the winners, with
``torch.segment_reduce`` (one fixed order per pixel): deterministic, and
differentiable again.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..._validate import check_bool, check_int
from .._core import compute_dtype
from ._regions import (
    FLT_MAX,
    _align_level,
    _as_rois,
    _feature_map,
    _locate,
    _quantised_bins,
    _to_user,
    alias2d,
)

__all__ = ["roi_pool", "roi_pool2d", "roi_align", "roi_align2d"]

# roi_pool's sparse tables are built for as many channels at a time as keep them under this many elements.
_TABLE_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------- RoI max


def _level(length: torch.Tensor, size: int) -> torch.Tensor:
    """``floor(log2(length))`` for lengths in ``[1, size]`` (0 for shorter), in integer ops."""
    lvl = torch.zeros_like(length)
    for t in range(1, size.bit_length()):
        lvl = lvl + (length >= (1 << t)).to(lvl.dtype)
    return lvl


def _first_max(
    v1: torch.Tensor, a1: torch.Tensor, v2: torch.Tensor, a2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger value and, on a tie, the smaller (row-major first) position."""
    first = (v1 > v2) | ((v1 == v2) & (a1 <= a2))
    return torch.where(first, v1, v2), torch.where(first, a1, a2)


def _roi_max(
    x: torch.Tensor, idx: torch.Tensor, ys: torch.Tensor, ye: torch.Tensor, xs: torch.Tensor, xe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin maxima ``(K, C, P, Q)`` and their winners (flat indices into ``x``, -1 for none).

    A 2-D sparse table: table ``(a, b)`` holds, for every ``2**a x 2**b``
    block inside the map, its maximum and row-major first position; a bin
    is four overlapping blocks. Doubling along ``W`` compares positions on
    ties; doubling along ``H`` need not (the upper block comes first). The
    tables are channels-last rows (a block is one contiguous gather), built
    for a slice of channels at a time so that they stay under
    ``_TABLE_ELEMENTS``.
    """
    n, c, h, w = x.shape
    k, p = ys.shape
    q = xs.shape[1]
    la, lb = h.bit_length() - 1, w.bit_length() - 1
    dev = x.device
    # Table t = a * (lb + 1) + b has shape (N, h - 2**a + 1, w - 2**b + 1, C), stored flat from offsets[t].
    sizes = [(h - (1 << a) + 1, w - (1 << b) + 1) for a in range(la + 1) for b in range(lb + 1)]
    offsets = [0]
    for th_, tw_ in sizes:
        offsets.append(offsets[-1] + n * th_ * tw_)
    t_off = torch.tensor(offsets[:-1], device=dev)
    t_h = torch.tensor([s_[0] for s_ in sizes], device=dev)
    t_w = torch.tensor([s_[1] for s_ in sizes], device=dev)
    ar, ac = _level((ye - ys).clamp(min=1), h), _level((xe - xs).clamp(min=1), w)
    full = (k, p, q)
    r1, r2 = ys[:, :, None].expand(full), (ye - torch.pow(2, ar))[:, :, None].expand(full)
    c1, c2 = xs[:, None, :].expand(full), (xe - torch.pow(2, ac))[:, None, :].expand(full)
    t = (ar[:, :, None] * (lb + 1) + ac[:, None, :])[..., None]  # (K, P, Q, 1)
    th, tw = t_h[t], t_w[t]
    rows = torch.minimum(torch.stack([r1, r1, r2, r2], dim=-1).clamp(min=0), th - 1)
    cols = torch.minimum(torch.stack([c1, c2, c1, c2], dim=-1).clamp(min=0), tw - 1)
    where = (t_off[t] + (idx[:, None, None, None] * th + rows) * tw + cols).reshape(-1)  # (K*P*Q*4,)
    neg = torch.tensor(-math.inf, dtype=x.dtype, device=dev)
    xv = torch.where(x > -FLT_MAX, x, neg).permute(0, 2, 3, 1)  # (N, H, W, C): NaN, <= -FLT_MAX never win
    pos0 = torch.arange(h * w, dtype=torch.int32, device=dev).reshape(1, h, w, 1)
    step = max(1, _TABLE_ELEMENTS // max(offsets[-1], 1))
    vals, args = [], []
    for c0 in range(0, c, step):
        cc = min(step, c - c0)
        base_v, base_a = [xv[..., c0 : c0 + cc].contiguous()], [pos0.expand(n, h, w, cc)]
        for b in range(1, lb + 1):  # along W: ties go to the row-major first position
            half, v, a = 1 << (b - 1), base_v[-1], base_a[-1]
            m = v.shape[2] - half
            vm, am = _first_max(v[:, :, :m], a[:, :, :m], v[:, :, half:], a[:, :, half:])
            base_v.append(vm)
            base_a.append(am)
        tv: list[Any] = [None] * len(sizes)
        ta: list[Any] = [None] * len(sizes)
        for b in range(lb + 1):
            v, a = base_v[b], base_a[b]
            tv[b], ta[b] = v, a
            for lvl in range(1, la + 1):  # along H: the upper block comes first in row-major order
                half = 1 << (lvl - 1)
                m = v.shape[1] - half
                up, lo = v[:, :m], v[:, half:]
                first = up >= lo
                v, a = torch.maximum(up, lo), torch.where(first, a[:, :m], a[:, half:])
                tv[lvl * (lb + 1) + b], ta[lvl * (lb + 1) + b] = v, a
        flat_v = torch.cat([z.reshape(-1, cc) for z in tv]).index_select(0, where).reshape(k, p, q, 4, cc)
        flat_a = torch.cat([z.reshape(-1, cc) for z in ta]).index_select(0, where).reshape(k, p, q, 4, cc)
        v01, a01 = _first_max(flat_v[..., 0, :], flat_a[..., 0, :], flat_v[..., 1, :], flat_a[..., 1, :])
        v23, a23 = _first_max(flat_v[..., 2, :], flat_a[..., 2, :], flat_v[..., 3, :], flat_a[..., 3, :])
        vm, am = _first_max(v01, a01, v23, a23)
        vals.append(vm)
        args.append(am)
    m2 = torch.cat(vals, dim=-1)  # (K, P, Q, C)
    a2 = torch.cat(args, dim=-1).to(torch.int64)
    live = ((ye > ys)[:, :, None] & (xe > xs)[:, None, :])[..., None]  # (K, P, Q, 1)
    won = live & (m2 > -math.inf)
    y = torch.where(live, torch.where(won, m2, torch.full_like(m2, -FLT_MAX)), torch.zeros_like(m2))
    chan = torch.arange(c, device=dev)
    win = torch.where(won, (idx[:, None, None, None] * c + chan) * (h * w) + a2, -1)
    return y.permute(0, 3, 1, 2), win.permute(0, 3, 1, 2)


def _sum_winners(g: torch.Tensor, win: torch.Tensor, numel: int) -> torch.Tensor:
    """``gx[p] = sum of g over the bins p wins``: a stable sort, then one segment sum per pixel."""
    keys = torch.where(win >= 0, win, numel).reshape(-1)
    skeys, order = torch.sort(keys, stable=True)
    vals = g.reshape(-1).index_select(0, order)
    starts = torch.searchsorted(skeys, torch.arange(numel + 1, device=g.device))
    lengths = torch.diff(starts, append=torch.full((1,), keys.numel(), device=g.device, dtype=starts.dtype))
    return torch.segment_reduce(vals, "sum", lengths=lengths, unsafe=True)[:numel]


class _RoIMax(torch.autograd.Function):
    """RoI max pooling; backward: :class:`_WinnerSum` (deterministic, differentiable again)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, idx: Any, ys: Any, ye: Any, xs: Any, xe: Any) -> torch.Tensor:
        y, win = _roi_max(x, idx, ys, ye, xs, xe)
        ctx.save_for_backward(win)
        ctx.x_shape = tuple(x.shape)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (win,) = ctx.saved_tensors
        return _WinnerSum.apply(g, win, ctx.x_shape), None, None, None, None, None


class _WinnerSum(torch.autograd.Function):
    """``gx = sum of g over the bins each pixel wins``; its adjoint is :class:`_WinnerGather`."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, win: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        ctx.save_for_backward(win)
        ctx.shape = shape
        return _sum_winners(g, win, math.prod(shape)).reshape(shape)

    @staticmethod
    def backward(ctx: Any, gg: torch.Tensor) -> tuple[Any, ...]:
        (win,) = ctx.saved_tensors
        return _WinnerGather.apply(gg, win, ctx.shape), None, None


class _WinnerGather(torch.autograd.Function):
    """``out[bin] = gx[winner of bin]`` (0 without a winner); its adjoint is :class:`_WinnerSum`."""

    @staticmethod
    def forward(ctx: Any, gx: torch.Tensor, win: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        ctx.save_for_backward(win)
        ctx.shape = shape
        picked = gx.reshape(-1).index_select(0, win.clamp(min=0).reshape(-1)).reshape(win.shape)
        return torch.where(win >= 0, picked, torch.zeros_like(picked))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (win,) = ctx.saved_tensors
        return _WinnerSum.apply(g, win, ctx.shape), None, None


# --------------------------------------------------------------------------- roi_pool / roi_align


def roi_pool(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """RoI max pooling (Girshick, "Fast R-CNN", 2015), as ``torchvision.ops.roi_pool``.

    See :func:`poolkit.ops.roi.roi_pool` for every rule (C's rounding of the
    box, bins of whole pixels clipped to the map, the running ``v > m`` from
    ``-FLT_MAX``: ties to the first pixel in row-major order, NaN never wins,
    a bin of only NaN or values ``<= -FLT_MAX`` gives ``-FLT_MAX``, an empty
    bin 0). ``boxes`` is a ``(K, 5)`` tensor or a list of ``(L, 4)`` tensors.

    The gradient goes to each bin's winning pixel; pixels that win several
    bins get the sum, formed deterministically (see the module docstring).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import roi_pool
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> roi_pool(x, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 2)
    tensor([[[[ 5.,  7.],
              [13., 15.]]]])
    """
    return _roi_pool(x, boxes, output_size, spatial_scale, data_format=data_format)


def _roi_pool(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "roi_pool",
) -> torch.Tensor:
    p, (oh, ow), scale = _feature_map(op, x, output_size, spatial_scale, data_format)
    n, c, h, w = p.x.shape
    ct = compute_dtype(p.dtype)
    rois, _ = _as_rois(op, boxes, n, p.x.device)
    idx, valid, xy = _locate(rois, n, scale, ct)
    ys, ye, xs, xe = _quantised_bins(xy, (oh, ow), (h, w), ct, whole_pixels=True)
    ye = torch.where(valid[:, None], ye, ys)  # an unusable box has empty bins
    y = _RoIMax.apply(p.x.to(ct), idx, ys, ye, xs, xe)
    return _to_user(y, p.channels_last, p.dtype)


def roi_align(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """RoI Align (He et al., "Mask R-CNN", 2017), as ``torchvision.ops.roi_align``.

    See :func:`poolkit.ops.roi.roi_align` for every rule (sample grid,
    bilinear edge rules, ``aligned``, the adaptive grid for
    ``sampling_ratio <= 0``, the divisor ``max(gh gw, 1)``, and where it
    deliberately differs from torchvision: zero-weight pixels are not read,
    an aligned box reversed along one axis outputs 0). ``boxes`` is a
    ``(K, 5)`` tensor or a list of ``(L, 4)`` tensors.

    Computed as two matrix products with per-row weights (module docstring);
    the backward is the transposed products: deterministic, no scatter.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import roi_align
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> roi_align(x, torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]]), 2, aligned=True)
    tensor([[[[0., 1.],
              [4., 5.]]]])
    """
    return _roi_align(x, boxes, output_size, spatial_scale, sampling_ratio, aligned, data_format=data_format)


def _roi_align(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "roi_align",
) -> torch.Tensor:
    p, out, scale = _feature_map(op, x, output_size, spatial_scale, data_format)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    aligned = check_bool(op, "aligned", aligned)
    n = p.x.shape[0]
    ct = compute_dtype(p.dtype)
    rois, _ = _as_rois(op, boxes, n, p.x.device)
    y = _align_level(p.x.to(ct), rois, scale, out, sampling_ratio, aligned, None)
    return _to_user(y, p.channels_last, p.dtype)


roi_pool2d = alias2d(roi_pool, _roi_pool)
roi_align2d = alias2d(roi_align, _roi_align)
