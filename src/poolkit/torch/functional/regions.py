"""Region pooling in torch: RoI pool and align, position-sensitive, multi-scale (FPN) and precise RoI pooling.

Semantics are the NumPy reference's (:mod:`poolkit.ops.roi`, ``ps_roi``,
``multiscale``, ``precise_roi``), which follow torchvision 0.29 rule for rule
except where those docstrings say otherwise. Everything runs on static shapes
(traceable by ``torch.compile(fullgraph=True)``, ``torch.export`` and the
ONNX exporter) and is deterministic on every device:

* **The linear operators** (``roi_align``, ``ps_roi_align``, ``ps_roi_pool``,
  ``multiscale_roi_align``, ``precise_roi_pool``) are separable: bin
  ``(k, ph, pw)`` weighs pixel ``(i, j)`` by ``Wy[k, ph, i] * Wx[k, pw, j]``
  (bilinear weights and torchvision's validity tests factor into ``y`` and
  ``x``). Each row weight is the sum over the bin's sample points computed
  directly per row: the points that can reach row ``i`` lie in
  ``[i - 2, i + 2]``, at most 14 of them for the adaptive grid (spacing
  ``> 1/2``), all of them for a fixed ``sampling_ratio``. The output is then
  two matrix products, ``(K*oh, N*H) @ (N*H, C*W)`` (the box's image picked
  by a one-hot factor) and a batched product over ``W``; their autograd
  backward is matrix products as well, so no gradient is ever scattered
  (torchvision's CUDA backward uses ``atomicAdd``). Cost:
  ``O(K oh N H C W)`` operations and a ``K*oh*C*W`` intermediate (the order
  of the two products is chosen to make it the smaller of that and
  ``K*ow*C*H``).
* **Non-finite inputs** follow the reference: a pixel whose weight in a bin
  is 0 is never read (``0 * inf`` would make it NaN), so a product with
  the finite part is completed by two counting products over the positive
  supports (number of non-finite values, sum of the signs of the
  infinities), which decide whether the bin is NaN or +-inf. This costs
  twice the main product again. The gradient for ``x`` is the transposed
  map everywhere, as in the reference.
* **roi_pool** is a maximum over rectangles of whole pixels: a 2-D sparse
  table (the maximum over every ``2**a x 2**b`` block and its row-major
  first position, each level one shifted comparison of the previous) answers
  each bin with four overlapping blocks, ties to the first pixel in
  row-major order. The tables take ``log2(H) log2(W)`` times the input,
  built for a slice of channels at a time; the bins cost ``O(K oh ow C)``
  whatever the box sizes. Its backward sums the gradients of the bins a
  pixel wins after a stable sort of the winners, with
  ``torch.segment_reduce`` (one fixed order per pixel): deterministic, and
  differentiable again.

Values of the boxes are not validated (that would need a device sync):
a box with a non-finite coordinate, a batch index that is not an integer in
``[0, N)``, or ``|coordinate * spatial_scale| >= 2**31`` reads nothing and
outputs 0 (the NumPy reference raises). Shapes and settings are checked as
in the reference.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..._validate import check_bool, check_int, check_real, is_int
from ...errors import PoolingInputError
from ...ops._boxes import pooled_size, spatial_scale_of
from .._core import Prepared, prepare

__all__ = [
    "roi_pool",
    "roi_pool2d",
    "roi_align",
    "roi_align2d",
    "ps_roi_pool",
    "ps_roi_pool2d",
    "ps_roi_align",
    "ps_roi_align2d",
    "multiscale_roi_align",
    "multiscale_roi_align2d",
    "precise_roi_pool",
    "precise_roi_pool2d",
]

FLT_MAX = float(torch.finfo(torch.float32).max)
COORD_LIMIT = 2.0**31
# Candidate sample points per row for the adaptive grid: the points within [i - 2.5, i + 2.5] (spacing > 1/2,
# 0.5 of slack for the compute dtype's rounding of far-away coordinates), plus one on each side.
_CANDIDATES = 14
_SLACK = 0.5
# roi_pool's sparse tables are built for as many channels at a time as keep them under this many elements.
_TABLE_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------- plumbing


def _wide(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is computed in float32 (as the reference, and torchvision's CPU kernels)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _feature_map(op: str, x: Any, data_format: str) -> Prepared:
    p = prepare(x, op=op, nd=2, data_format=data_format, allow_unbatched=False)
    h, w = p.spatial
    if h == 0 or w == 0:
        raise PoolingInputError(f"{op}: the feature map must have H, W >= 1, got {(h, w)}.")
    return p


def _tensor(value: Any, device: torch.device) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return t.to(device)


def _is_row(b: Any) -> bool:
    """A ``(batch_index, x1, y1, x2, y2)`` row (a list of those is a ``(K, 5)`` array)."""
    if isinstance(b, torch.Tensor):
        return b.dim() == 1 and b.shape[0] == 5
    return np.ndim(b) == 1 and len(b) == 5


def _as_rois(op: str, boxes: Any, n_images: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """torchvision's box formats as one ``(K, 5)`` floating tensor; whether a list was given.

    Shapes are checked; values are not (see the module docstring).
    """
    per_image = isinstance(boxes, (list, tuple)) and not (len(boxes) and _is_row(boxes[0]))
    if per_image:
        if len(boxes) > n_images:
            raise PoolingInputError(
                f"{op}: boxes is a list of {len(boxes)} per-image arrays but the input holds {n_images} images."
            )
        parts = [_tensor(b, device) for b in boxes]
        for i, b in enumerate(parts):
            if b.dim() != 2 or b.shape[1] != 4:
                raise PoolingInputError(
                    f"{op}: boxes[{i}] must have shape (L, 4) holding (x1, y1, x2, y2), got shape "
                    f"{tuple(b.shape)}."
                )
        if not parts:
            return torch.zeros((0, 5), dtype=_wide(device), device=device), True
        dt = functools.reduce(torch.promote_types, [b.dtype for b in parts])
        dt = dt if dt.is_floating_point else _wide(device)
        rois = torch.cat(
            [
                torch.cat([torch.full((b.shape[0], 1), float(i), dtype=dt, device=device), b.to(dt)], 1)
                for i, b in enumerate(parts)
            ]
        )
        return rois, True
    rois = _tensor(boxes, device)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise PoolingInputError(
            f"{op}: boxes must be a (K, 5) array of (batch_index, x1, y1, x2, y2) or a list of (L, 4) arrays, "
            f"got shape {tuple(rois.shape)}."
        )
    if not rois.is_floating_point():
        rois = rois.to(_wide(device))
    return rois, False


def _image_of(rois: torch.Tensor, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch index of every box (0 where invalid) and whether the box is usable."""
    col = rois[:, 0].detach()
    valid = (
        torch.isfinite(rois.detach()).all(dim=1) & (col == torch.floor(col)) & (col >= 0) & (col < n_images)
    )
    idx = torch.where(valid, col, torch.zeros_like(col)).to(torch.int64)
    return idx, valid


def _onehot(idx: torch.Tensor, valid: torch.Tensor, n_images: int, dtype: torch.dtype) -> torch.Tensor:
    """``(K, N)``: 1 at the box's image (a zero row for an unusable box)."""
    hit = (idx[:, None] == torch.arange(n_images, device=idx.device)[None, :]) & valid[:, None]
    return hit.to(dtype)


def _scaled(
    rois: torch.Tensor, scale: float, valid: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, 4)`` coordinates times ``spatial_scale`` in the compute dtype (0 for unusable boxes)."""
    xy = rois[:, 1:].detach().to(dtype) * scale
    valid = valid & (xy.abs() < COORD_LIMIT).all(dim=1)
    return torch.where(valid[:, None], xy, torch.zeros_like(xy)), valid


def _to_user(y: torch.Tensor, channels_last: bool, dtype: torch.dtype) -> torch.Tensor:
    """``(K, C, oh, ow)`` -> the user's layout and dtype."""
    y = y.to(dtype)
    return y.permute(0, 2, 3, 1) if channels_last else y


# --------------------------------------------------------------------------- autograd helpers


class _Replace(torch.autograd.Function):
    """``where(mask, value, y)`` whose gradient for ``y`` is the identity, replaced entries included."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, mask: torch.Tensor, value: Any) -> torch.Tensor:
        return torch.where(mask, value, y)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        return g, None, None


class _NanGrad(torch.autograd.Function):
    """Identity whose gradient is NaN for the boxes flagged ``bad`` (first axis)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bad)
        return w.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (bad,) = ctx.saved_tensors
        mask = bad.reshape(-1, *([1] * (g.dim() - 1)))
        return torch.where(mask, torch.full_like(g, math.nan), g), None


# --------------------------------------------------------------------------- separable linear map


def _contract(
    x: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor, onehot: torch.Tensor, ps: bool
) -> torch.Tensor:
    """``y[k, c, p, q] = sum_{i,j} wy[k, p, i] x[b_k, c', i, j] wx[k, q, j]`` as two matrix products.

    ``c' = c`` normally; position-sensitive (``ps``): ``c' = (c P + p) Q + q``.
    """
    n, c, h, w = x.shape
    k, p, _ = wy.shape
    q = wx.shape[1]
    if not ps:
        if p * w <= q * h:  # rows first: intermediate (K, P, C, W)
            a = (wy[:, :, None, :] * onehot[:, None, :, None]).reshape(k * p, n * h)
            t = (a @ x.permute(0, 2, 1, 3).reshape(n * h, c * w)).reshape(k, p * c, w)
            return (t @ wx.transpose(1, 2)).reshape(k, p, c, q).permute(0, 2, 1, 3)
        a = (wx[:, :, None, :] * onehot[:, None, :, None]).reshape(k * q, n * w)
        t = (a @ x.permute(0, 3, 1, 2).reshape(n * w, c * h)).reshape(k, q * c, h)
        return (t @ wy.transpose(1, 2)).reshape(k, q, c, p).permute(0, 2, 3, 1)
    cg = c // (p * q)
    a = (wy[:, :, None, :] * onehot[:, None, :, None]).permute(1, 0, 2, 3).reshape(p, k, n * h)
    xs = x.reshape(n, cg, p, q, h, w).permute(2, 0, 4, 1, 3, 5).reshape(p, n * h, cg * q * w)
    t = torch.bmm(a, xs).reshape(p, k, cg, q, w).permute(1, 3, 0, 2, 4).reshape(k * q, p * cg, w)
    return torch.bmm(t, wx.reshape(k * q, w, 1)).reshape(k, q, p, cg).permute(0, 3, 2, 1)


def _linear_regions(
    x: torch.Tensor,
    wy: torch.Tensor,
    wx: torch.Tensor,
    onehot: torch.Tensor,
    ps: bool = False,
    box_grad: bool = False,
) -> torch.Tensor:
    """:func:`_contract` with the reference's non-finite rule (see the module docstring).

    With ``box_grad``, boxes whose support holds a non-finite value get a NaN
    weight gradient (the reference's NaN box gradient).
    """
    p, q = wy.shape[1], wx.shape[1]
    c_out = x.shape[1] // (p * q) if ps else x.shape[1]
    fin = torch.isfinite(x)
    t = x.dtype
    ind = torch.cat([(~fin).to(t), torch.isposinf(x).to(t) - torch.isneginf(x).to(t)], dim=1)
    my, mx = (wy.detach() > 0).to(t), (wx.detach() > 0).to(t)
    cnt, sgn = _contract(ind, my, mx, onehot, ps).split(c_out, dim=1)
    if box_grad:
        bad = (cnt > 0).flatten(1).any(dim=1)
        wy, wx = _NanGrad.apply(wy, bad), _NanGrad.apply(wx, bad)
    y = _contract(_Replace.apply(x, ~fin, 0.0), wy, wx, onehot, ps)
    special = torch.where(sgn.abs() == cnt, torch.sign(sgn) * math.inf, math.nan)
    return _Replace.apply(y, cnt > 0, special.to(y.dtype))


# --------------------------------------------------------------------------- RoI Align weights


def _align_axis(
    a0: torch.Tensor, bin_: torch.Tensor, grid: torch.Tensor, size: int, pooled: int, fixed: int
) -> torch.Tensor:
    """``(K, pooled, size)``: the summed bilinear weights of every bin's sample points on every row.

    Sample ``j < grid`` of bin ``p`` is ``y = a0 + p bin + ((j + .5) bin) / grid`` in the compute
    dtype (torchvision's arithmetic); ``y < -1`` or ``y > size`` is skipped, ``y <= 0`` clamps to
    0, and ``floor(y) >= size - 1`` gives all its weight to row ``size - 1``.
    """
    t = a0.dtype
    dev = a0.device
    a = a0[:, None] + torch.arange(pooled, dtype=t, device=dev)[None, :] * bin_[:, None]  # (K, P)
    rows = torch.arange(size, device=dev)
    if fixed > 0:  # every sample is a candidate for every row: (1, 1, 1, G)
        j = torch.arange(fixed, device=dev).reshape(1, 1, 1, fixed)
        ok = torch.ones((), dtype=torch.bool, device=dev)
    else:  # the first sample that can reach row i, estimated in a wide dtype, then a fixed count
        wd = _wide(dev)
        step = bin_.to(wd) / grid.clamp(min=1).to(wd)
        first = (rows.to(wd)[None, None, :] - (2 + _SLACK) - a.to(wd)[:, :, None]) / step[:, None, None] - 0.5
        first = torch.nan_to_num(first, nan=0.0).clamp(-4.0, COORD_LIMIT * 4)
        j = (torch.floor(first).to(torch.int64) - 1)[..., None] + torch.arange(_CANDIDATES, device=dev)
        ok = (j >= 0) & (j < grid[:, None, None, None])
    half = (j.to(torch.float32) + 0.5).to(t)  # C's `iy + .5f`
    y = a[:, :, None, None] + half * bin_[:, None, None, None] / grid.to(t)[:, None, None, None]
    inside = ok & (y >= -1.0) & (y <= size)
    y = torch.where(y <= 0, torch.zeros_like(y), y)
    low = torch.floor(y)
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    ly = torch.where(edge, torch.zeros_like(y), y - low)
    r = rows.to(t).reshape(1, 1, size, 1)
    w = torch.where(inside & (low == r), 1 - ly, 0.0) + torch.where(inside & (low + 1 == r), ly, 0.0)
    return w.sum(dim=-1)


def _align_weights(
    xy: torch.Tensor,
    out: tuple[int, int],
    hw: tuple[int, int],
    sampling_ratio: int,
    offset: float,
    min_size: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoI Align's ``Wy (K, oh, H)``, ``Wx (K, ow, W)`` and per-box divisor ``max(gh gw, 1)``."""
    t = xy.dtype
    oh, ow = out
    start = xy - offset
    size = start[:, 2:] - start[:, :2]  # (roi_w, roi_h)
    if min_size:
        size = size.clamp(min=1.0)
    bins = size / torch.tensor([ow, oh], dtype=t, device=xy.device)
    if sampling_ratio > 0:
        grid = torch.full(size.shape, sampling_ratio, dtype=torch.int64, device=xy.device)
    else:  # ceil(roi_w / ow) in the compute dtype, as torchvision
        grid = torch.ceil(bins).clamp(-(2.0**33), 2.0**33).to(torch.int64)
    wy = _align_axis(start[:, 1], bins[:, 1], grid[:, 1], hw[0], oh, sampling_ratio)
    wx = _align_axis(start[:, 0], bins[:, 0], grid[:, 0], hw[1], ow, sampling_ratio)
    count = (grid[:, 0].to(t) * grid[:, 1].to(t)).clamp(min=1.0)
    return wy, wx, count


# --------------------------------------------------------------------------- quantized bins


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C's ``round`` (halves away from zero), as int64."""
    r = torch.trunc(v)
    return torch.where((v - r).abs() >= 0.5, r + torch.sign(v), r).to(torch.int64)


def _pool_bins(
    start: torch.Tensor, roi: torch.Tensor, pooled: int, top: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[floor(p b), ceil((p+1) b)) + start`` clipped to ``[0, top]`` with ``b = roi / pooled`` in ``dtype``."""
    bin_ = roi.to(dtype) / pooled
    edge = torch.arange(pooled + 1, dtype=dtype, device=roi.device)[None, :] * bin_[:, None]
    lo = (torch.floor(edge[:, :-1]).to(torch.int64) + start[:, None]).clamp(0, top)
    hi = (torch.ceil(edge[:, 1:]).to(torch.int64) + start[:, None]).clamp(0, top)
    return lo, hi


def _range_weights(lo: torch.Tensor, hi: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(K, P, size)``: 1 on ``[lo, hi)``."""
    r = torch.arange(size, device=lo.device)[None, None, :]
    return ((r >= lo[..., None]) & (r < hi[..., None])).to(dtype)


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
    p = _feature_map(op, x, data_format)
    oh, ow = pooled_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    n, c, h, w = p.x.shape
    ct = _compute_dtype(p.dtype)
    rois, _ = _as_rois(op, boxes, n, p.x.device)
    idx, valid = _image_of(rois, n)
    xy, valid = _scaled(rois, scale, valid, ct)
    qb = _round_half_away(xy)
    ys, ye = _pool_bins(qb[:, 1], (qb[:, 3] - qb[:, 1] + 1).clamp(min=1), oh, h, ct)
    xs, xe = _pool_bins(qb[:, 0], (qb[:, 2] - qb[:, 0] + 1).clamp(min=1), ow, w, ct)
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
    p = _feature_map(op, x, data_format)
    out = pooled_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    aligned = check_bool(op, "aligned", aligned)
    n = p.x.shape[0]
    ct = _compute_dtype(p.dtype)
    rois, _ = _as_rois(op, boxes, n, p.x.device)
    y = _align_level(p.x.to(ct), rois, scale, out, sampling_ratio, aligned, None)
    return _to_user(y, p.channels_last, p.dtype)


def _align_level(
    xc: torch.Tensor,
    rois: torch.Tensor,
    scale: float,
    out: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    keep: torch.Tensor | None,
    ps: bool = False,
) -> torch.Tensor:
    """RoI Align of every box on one map ``xc`` (compute dtype); boxes with ``keep`` False read nothing."""
    n, _, h, w = xc.shape
    idx, valid = _image_of(rois, n)
    xy, valid = _scaled(rois, scale, valid, xc.dtype)
    if keep is not None:
        valid = valid & keep
    wy, wx, count = _align_weights(xy, out, (h, w), sampling_ratio, 0.5 if aligned else 0.0, not aligned)
    y = _linear_regions(xc, wy, wx, _onehot(idx, valid, n, xc.dtype), ps=ps)
    return y / count[:, None, None, None]


# --------------------------------------------------------------------------- position-sensitive


def _groups(op: str, c: int, out: tuple[int, int]) -> int:
    groups = out[0] * out[1]
    if c % groups:
        raise PoolingInputError(
            f"{op}: the channel count C={c} must be a multiple of oh*ow = {groups} (output_size={out}): each "
            f"output channel reads one group of {groups} input channels. Use C = {(c // groups + 1) * groups} "
            f"channels or another output_size."
        )
    return groups


def ps_roi_pool(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Position-sensitive RoI pooling (Dai et al., "R-FCN", 2016), as ``torchvision.ops.ps_roi_pool``.

    Bin ``(ph, pw)`` of output channel ``c`` averages input channel
    ``(c oh + ph) ow + pw`` over its whole pixels; see
    :func:`poolkit.ops.ps_roi.ps_roi_pool` for the rules (bins clipped to
    ``[0, H - 1]`` as torchvision's forward). The gradient is the exact
    gradient of this forward, as in the reference (torchvision's backward
    clips to ``[0, H]`` instead and differs at the last row and column).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import ps_roi_pool
    >>> x = torch.arange(4 * 16.0).reshape(1, 4, 4, 4)
    >>> ps_roi_pool(x, torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]]), 2)
    tensor([[[[ 0., 17.],
              [36., 53.]]]])
    """
    return _ps_roi_pool(x, boxes, output_size, spatial_scale, data_format=data_format)


def _ps_roi_pool(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "ps_roi_pool",
) -> torch.Tensor:
    p = _feature_map(op, x, data_format)
    oh, ow = pooled_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    n, c, h, w = p.x.shape
    _groups(op, c, (oh, ow))
    ct = _compute_dtype(p.dtype)
    rois, _ = _as_rois(op, boxes, n, p.x.device)
    idx, valid = _image_of(rois, n)
    xy, valid = _scaled(rois, scale, valid, ct)
    qb = _round_half_away(xy)
    ys, ye = _pool_bins(qb[:, 1], (qb[:, 3] - qb[:, 1]).clamp(min=1), oh, h - 1, ct)
    xs, xe = _pool_bins(qb[:, 0], (qb[:, 2] - qb[:, 0]).clamp(min=1), ow, w - 1, ct)
    wy, wx = _range_weights(ys, ye, h, ct), _range_weights(xs, xe, w, ct)
    y = _linear_regions(p.x.to(ct), wy, wx, _onehot(idx, valid, n, ct), ps=True)
    area = ((ye - ys).clamp(min=0)[:, :, None] * (xe - xs).clamp(min=0)[:, None, :]).clamp(min=1)
    return _to_user(y / area[:, None].to(ct), p.channels_last, p.dtype)


def ps_roi_align(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Position-sensitive RoI Align, as ``torchvision.ops.ps_roi_align``.

    RoI Align with ``aligned=True`` and no minimum box size on R-FCN's
    channel groups; see :func:`poolkit.ops.ps_roi.ps_roi_align` (the divisor
    is ``max(gh gw, 1)``: a zero-size box with the adaptive grid gives 0
    where torchvision gives NaN).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import ps_roi_align
    >>> x = torch.arange(4 * 16.0).reshape(1, 4, 4, 4)
    >>> ps_roi_align(x, torch.tensor([[0, 0.5, 0.5, 2.5, 2.5]]), 2)
    tensor([[[[ 2.5000, 19.5000],
              [38.5000, 55.5000]]]])
    """
    return _ps_roi_align(x, boxes, output_size, spatial_scale, sampling_ratio, data_format=data_format)


def _ps_roi_align(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "ps_roi_align",
) -> torch.Tensor:
    p = _feature_map(op, x, data_format)
    out = pooled_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    n, c = p.x.shape[:2]
    _groups(op, c, out)
    ct = _compute_dtype(p.dtype)
    rois, _ = _as_rois(op, boxes, n, p.x.device)
    idx, valid = _image_of(rois, n)
    xy, valid = _scaled(rois, scale, valid, ct)
    wy, wx, count = _align_weights(xy, out, p.spatial, sampling_ratio, 0.5, False)
    y = _linear_regions(p.x.to(ct), wy, wx, _onehot(idx, valid, n, ct), ps=True)
    return _to_user(y / count[:, None, None, None], p.channels_last, p.dtype)


# --------------------------------------------------------------------------- multi-scale


def multiscale_roi_align(
    features: Any,
    boxes: Any,
    image_sizes: Any,
    output_size: Any,
    sampling_ratio: int = -1,
    *,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """RoI Align on the pyramid level that suits each box (FPN), as torchvision's ``MultiScaleRoIAlign``.

    ``features`` is a list (or dict, in insertion order) of ``(N, C, H_l, W_l)``
    tensors, finest first; see :func:`poolkit.ops.multiscale.multiscale_roi_align`
    for the level and scale rules. Every box is computed on every map with
    its weights zeroed off its own level (static shapes; the maps shrink
    geometrically, so this costs about 4/3 of the finest map's share).
    """
    return _multiscale_roi_align(
        features,
        boxes,
        image_sizes,
        output_size,
        sampling_ratio,
        canonical_scale=canonical_scale,
        canonical_level=canonical_level,
        data_format=data_format,
    )


def _image_height(op: str, image_sizes: Any, n: int) -> int:
    """The largest image height (:func:`poolkit.ops.multiscale` checks, without NumPy: traceable)."""
    sizes = list(image_sizes) if isinstance(image_sizes, (list, tuple)) else None
    if sizes is None or len(sizes) != n:
        got = f"{len(sizes)} entries" if sizes is not None else type(image_sizes).__name__
        raise PoolingInputError(
            f"{op}: image_sizes must hold one (height, width) per image, {n} for these feature maps, got {got}."
        )
    for i, s in enumerate(sizes):
        if not isinstance(s, (list, tuple)) or len(s) != 2 or not all(is_int(v) and v >= 1 for v in s):
            raise PoolingInputError(
                f"{op}: image_sizes[{i}] must be a (height, width) pair of positive ints, got {s!r}."
            )
    return max(int(s[0]) for s in sizes)


def _float32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def _scale(height: int, image_height: int) -> float:
    """torchvision's ``_infer_scale``: ``2 ** round(log2(h / H))``, the ratio in float32, halves to even."""
    return 2.0 ** round(_float32(math.log2(_float32(float(height) / float(image_height)))))


def _levels(rois: torch.Tensor, scales: list[float], s0: float, k0: int) -> torch.Tensor:
    """Map index of each box (-1: none), torchvision's ``LevelMapper`` in the boxes' dtype."""
    k_min = int(-math.log2(scales[0]))  # scales are powers of two: exact
    k_max = int(-math.log2(scales[-1]))
    r = rois.detach()
    area = (r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2])
    ok = area >= 0  # False for a negative area and for NaN
    s = torch.sqrt(torch.where(ok, area, torch.zeros_like(area)))
    lvl = torch.floor(k0 + torch.log2(s / s0) + 1e-6)
    lvl = lvl.clamp(k_min, k_max).to(torch.int64) - k_min
    return torch.where(ok & (lvl < len(scales)), lvl, -1)


def _multiscale_roi_align(
    features: Any,
    boxes: Any,
    image_sizes: Any,
    output_size: Any,
    sampling_ratio: int = -1,
    *,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "multiscale_roi_align",
) -> torch.Tensor:
    maps = list(features.values()) if isinstance(features, Mapping) else features
    if not isinstance(maps, (list, tuple)) or not maps:
        raise PoolingInputError(
            f"{op}: features must be a non-empty list (or dict) of (N, C, H, W) feature maps, got "
            f"{type(features).__name__}{' (empty)' if isinstance(maps, (list, tuple)) else ''}."
        )
    preps = [
        prepare(f, op=f"{op} (features[{i}])", nd=2, data_format=data_format, allow_unbatched=False)
        for i, f in enumerate(maps)
    ]
    n, c = preps[0].x.shape[:2]
    for i, pr in enumerate(preps):
        if tuple(pr.x.shape[:2]) != (n, c):
            raise PoolingInputError(
                f"{op}: every feature map must have the same batch size and channel count as features[0], "
                f"(N, C) = {(n, c)}; features[{i}] has {tuple(pr.x.shape[:2])}."
            )
        if 0 in pr.spatial:
            raise PoolingInputError(f"{op}: features[{i}] has an empty spatial extent {pr.spatial}.")
    out = pooled_size(op, output_size)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    s0 = check_real(op, "canonical_scale", canonical_scale, low=0.0, low_inclusive=False)
    k0 = check_int(op, "canonical_level", canonical_level)
    image_height = _image_height(op, image_sizes, n)
    ct = _compute_dtype(preps[0].dtype)
    rois, _ = _as_rois(op, boxes, n, preps[0].x.device)
    rois = rois.to(ct)
    scales = [_scale(pr.spatial[0], image_height) for pr in preps]
    which = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    if len(preps) > 1:
        which = _levels(rois, scales, s0, k0)
    y = None
    for lvl, (pr, scale) in enumerate(zip(preps, scales)):
        lt = _compute_dtype(pr.dtype)
        part = _align_level(pr.x.to(lt), rois.to(lt), scale, out, sampling_ratio, False, which == lvl).to(ct)
        y = part if y is None else y + part
    assert y is not None
    return _to_user(y, preps[0].channels_last, preps[0].dtype)


# --------------------------------------------------------------------------- precise RoI pooling


def precise_roi_pool(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Precise RoI pooling (Jiang et al., ECCV 2018): the exact mean of the bilinear interpolant per bin.

    See :func:`poolkit.ops.precise_roi.precise_roi_pool` for the definition
    (no 0.5 offset, the full bin area as divisor, degenerate boxes output 0,
    the non-finite rule). Differentiable in ``x`` and in ``boxes``: the
    per-axis weights are closed-form integrals of the tent written so that
    autograd gives the reference's box gradient exactly at the kinks
    (edges on pixel coordinates); the batch-index column gets 0, and a box
    whose support holds a non-finite value gets NaN. Weights are computed
    in float64 (float32 on MPS).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import precise_roi_pool
    >>> x = torch.arange(12.0).reshape(1, 1, 3, 4)
    >>> precise_roi_pool(x, torch.tensor([[0, 0.0, 0.0, 3.0, 2.0]]), 2)
    tensor([[[[2.7500, 4.2500],
              [6.7500, 8.2500]]]])
    """
    return _precise_roi_pool(x, boxes, output_size, spatial_scale, data_format=data_format)


def _tent_integrals(
    lo: torch.Tensor, hi: torch.Tensor, bins: int, size: int, live: torch.Tensor
) -> torch.Tensor:
    """``(K, bins, size)``: the mean over each bin of the tent ``t(u - j)`` of every pixel ``j``.

    Same arithmetic as the reference; the absolute values and the
    ``min(va vb, 0)`` term are written with signs fixed on the side of the
    bin, so autograd's derivative at a kink is the (continuous) exact one.
    """
    step = torch.where(live, (hi - lo) / bins, torch.ones_like(lo))
    edges = lo[:, None] + torch.arange(bins + 1, dtype=lo.dtype, device=lo.device) * step[:, None]
    v = (edges[:, :, None] - torch.arange(size, dtype=lo.dtype, device=lo.device)).clamp(-1.0, 1.0)
    va, vb = v[:, :-1], v[:, 1:]
    sa = torch.where(va.detach() >= 0, 1.0, -1.0)  # |va|: the bin lies above va
    sb = torch.where(vb.detach() > 0, 1.0, -1.0)  # |vb|: the bin lies below vb
    prod = va * vb
    w = (vb - va) * (1.0 - 0.5 * (va * sa + vb * sb)) - torch.where(
        prod.detach() < 0, prod, torch.zeros_like(prod)
    )
    scale = torch.where(live, 1.0 / step, torch.zeros_like(step))
    return w * scale[:, None, None]


def _precise_roi_pool(
    x: torch.Tensor,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "precise_roi_pool",
) -> torch.Tensor:
    p = _feature_map(op, x, data_format)
    oh, ow = pooled_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    n, c, h, w = p.x.shape
    ct = _compute_dtype(p.dtype)
    wd = _wide(p.x.device)
    rois, _ = _as_rois(op, boxes, n, p.x.device)
    idx, valid = _image_of(rois, n)
    r = rois[:, 1:].to(wd) * scale
    r = torch.where(valid[:, None], r, torch.zeros_like(r))
    live = (r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])
    wx = _tent_integrals(r[:, 0], r[:, 2], ow, w, live).to(ct)
    wy = _tent_integrals(r[:, 1], r[:, 3], oh, h, live).to(ct)
    y = _linear_regions(p.x.to(ct), wy, wx, _onehot(idx, valid, n, ct), box_grad=True)
    return _to_user(y, p.channels_last, p.dtype)


# --------------------------------------------------------------------------- aliases


def _alias(public: Any, impl: Any) -> Any:
    from .._core import aliases

    return aliases(public, impl, (2,))[f"{public.__name__}2d"]


roi_pool2d = _alias(roi_pool, _roi_pool)
roi_align2d = _alias(roi_align, _roi_align)
ps_roi_pool2d = _alias(ps_roi_pool, _ps_roi_pool)
ps_roi_align2d = _alias(ps_roi_align, _ps_roi_align)
multiscale_roi_align2d = _alias(multiscale_roi_align, _multiscale_roi_align)
precise_roi_pool2d = _alias(precise_roi_pool, _precise_roi_pool)
