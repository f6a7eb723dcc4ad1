"""Precise RoI pooling (PrRoI, Jiang et al., ECCV 2018) in torch.

Semantics are the NumPy reference's (:mod:`poolkit.ops.precise_roi`): the
separable linear map of :mod:`._regions` with weights that are exact
integrals of the bilinear tent, differentiable in the boxes too.
"""

from __future__ import annotations

from typing import Any

import torch

from .._core import compute_dtype
from ._regions import _as_rois, _feature_map, _image_of, _linear_regions, _onehot, _to_user, _wide, alias2d

__all__ = ["precise_roi_pool", "precise_roi_pool2d"]


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
    p, (oh, ow), scale = _feature_map(op, x, output_size, spatial_scale, data_format)
    n, c, h, w = p.x.shape
    ct = compute_dtype(p.dtype)
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


precise_roi_pool2d = alias2d(precise_roi_pool, _precise_roi_pool)
