"""Multi-scale RoI Align (FPN) in torch, as torchvision's ``MultiScaleRoIAlign``.

Semantics are the NumPy reference's (:mod:`poolkit.ops.multiscale`): each
box is RoI Align (:mod:`._regions`) on the pyramid level that suits it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..._validate import check_int, check_real, is_int
from ...errors import PoolingInputError
from ...ops._boxes import pooled_size
from ...ops.multiscale import _scale
from .._core import compute_dtype, prepare
from ._regions import _align_level, _as_rois, _to_user, alias2d

__all__ = ["multiscale_roi_align", "multiscale_roi_align2d"]


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
    ct = compute_dtype(preps[0].dtype)
    rois, _ = _as_rois(op, boxes, n, preps[0].x.device)
    rois = rois.to(ct)
    scales = [_scale(pr.spatial[0], image_height) for pr in preps]
    which = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    if len(preps) > 1:
        which = _levels(rois, scales, s0, k0)
    y = None
    for lvl, (pr, scale) in enumerate(zip(preps, scales)):
        lt = compute_dtype(pr.dtype)
        part = _align_level(pr.x.to(lt), rois.to(lt), scale, out, sampling_ratio, False, which == lvl).to(ct)
        y = part if y is None else y + part
    assert y is not None
    return _to_user(y, preps[0].channels_last, preps[0].dtype)


multiscale_roi_align2d = alias2d(multiscale_roi_align, _multiscale_roi_align)
