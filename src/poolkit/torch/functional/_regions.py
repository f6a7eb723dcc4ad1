"""Plumbing shared by the region operators (:mod:`.roi`, :mod:`.ps_roi`, :mod:`.multiscale`, :mod:`.precise_roi`).

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
* **roi_pool** is a maximum over rectangles of whole pixels (see :mod:`.roi`).

Values of the boxes are not validated (that would need a device sync):
a box with a non-finite coordinate, a batch index that is not an integer in
``[0, N)``, or ``|coordinate * spatial_scale| >= 2**31`` reads nothing and
outputs 0 (the NumPy reference raises). Shapes and settings are checked as
in the reference.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from ...errors import PoolingInputError
from ...ops._boxes import pooled_size, spatial_scale_of
from .._core import Prepared, aliases, prepare

FLT_MAX = float(torch.finfo(torch.float32).max)
COORD_LIMIT = 2.0**31
# Candidate sample points per row for the adaptive grid: the points within [i - 2.5, i + 2.5] (spacing > 1/2,
# 0.5 of slack for the compute dtype's rounding of far-away coordinates), plus one on each side.
_CANDIDATES = 14
_SLACK = 0.5


# --------------------------------------------------------------------------- plumbing


def _wide(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _feature_map(
    op: str, x: Any, output_size: Any, spatial_scale: Any, data_format: str
) -> tuple[Prepared, tuple[int, int], float]:
    """A region operator's checked feature map, output size ``(oh, ow)`` and spatial scale."""
    p = prepare(x, op=op, nd=2, data_format=data_format, allow_unbatched=False)
    h, w = p.spatial
    if h == 0 or w == 0:
        raise PoolingInputError(f"{op}: the feature map must have H, W >= 1, got {(h, w)}.")
    return p, pooled_size(op, output_size), spatial_scale_of(op, spatial_scale)


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


def _locate(
    rois: torch.Tensor, n_images: int, scale: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch index of every box, whether it is usable, and its scaled ``(K, 4)`` coordinates."""
    idx, valid = _image_of(rois, n_images)
    xy, valid = _scaled(rois, scale, valid, dtype)
    return idx, valid, xy


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


def _quantised_bins(
    xy: torch.Tensor, out: tuple[int, int], size: tuple[int, int], dtype: torch.dtype, whole_pixels: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoI pooling's integer bins ``(ys, ye, xs, xe)`` of boxes ``xy`` ``(K, 4)``, corners rounded as C.

    ``whole_pixels``: the box holds its last pixel (``x2 - x1 + 1`` wide, bins clipped to
    ``[0, H]``: ``roi_pool``); else ``x2 - x1`` wide, clipped to ``[0, H - 1]`` (``ps_roi_pool``).
    """
    qb = _round_half_away(xy)
    extra = 1 if whole_pixels else 0
    (oh, ow), (h, w) = out, size
    ys, ye = _pool_bins(qb[:, 1], (qb[:, 3] - qb[:, 1] + extra).clamp(min=1), oh, h - 1 + extra, dtype)
    xs, xe = _pool_bins(qb[:, 0], (qb[:, 2] - qb[:, 0] + extra).clamp(min=1), ow, w - 1 + extra, dtype)
    return ys, ye, xs, xe


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
    idx, valid, xy = _locate(rois, n, scale, xc.dtype)
    if keep is not None:
        valid = valid & keep
    wy, wx, count = _align_weights(xy, out, (h, w), sampling_ratio, 0.5 if aligned else 0.0, not aligned)
    y = _linear_regions(xc, wy, wx, _onehot(idx, valid, n, xc.dtype), ps=ps)
    return y / count[:, None, None, None]


def alias2d(public: Any, impl: Any) -> Any:
    """The ``*2d`` alias of a region operator (they are 2-D only)."""
    return aliases(public, impl, (2,))[f"{public.__name__}2d"]
