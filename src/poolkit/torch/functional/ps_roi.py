"""Position-sensitive RoI pooling and RoI Align (R-FCN) in torch, as torchvision's ``ps_roi_pool`` and
``ps_roi_align``.

Semantics are the NumPy reference's (:mod:`poolkit.ops.ps_roi`); both are
the separable linear map of :mod:`._regions` on R-FCN's channel groups.
"""

from __future__ import annotations

from typing import Any

import torch

from ..._validate import check_int
from ...ops.ps_roi import _groups
from .._core import compute_dtype
from ._regions import (
    _align_level,
    _as_rois,
    _feature_map,
    _linear_regions,
    _locate,
    _onehot,
    _quantised_bins,
    _range_weights,
    _to_user,
    alias2d,
)

__all__ = ["ps_roi_pool", "ps_roi_pool2d", "ps_roi_align", "ps_roi_align2d"]


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
    p, (oh, ow), scale = _feature_map(op, x, output_size, spatial_scale, data_format)
    n, c, h, w = p.x.shape
    _groups(op, p, (oh, ow))
    ct = compute_dtype(p.dtype)
    rois, _ = _as_rois(op, boxes, n, p.x.device)
    idx, valid, xy = _locate(rois, n, scale, ct)
    ys, ye, xs, xe = _quantised_bins(xy, (oh, ow), (h, w), ct, whole_pixels=False)
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
    p, out, scale = _feature_map(op, x, output_size, spatial_scale, data_format)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    _groups(op, p, out)
    ct = compute_dtype(p.dtype)
    rois, _ = _as_rois(op, boxes, p.x.shape[0], p.x.device)
    y = _align_level(p.x.to(ct), rois, scale, out, sampling_ratio, True, None, ps=True)
    return _to_user(y, p.channels_last, p.dtype)


ps_roi_pool2d = alias2d(ps_roi_pool, _ps_roi_pool)
ps_roi_align2d = alias2d(ps_roi_align, _ps_roi_align)
