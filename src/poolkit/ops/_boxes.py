"""Region boxes in torchvision's formats, checked once for every region operator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._validate import check_real, int_tuple
from ..errors import PoolingInputError

__all__ = ["as_rois", "pooled_size", "spatial_scale_of", "split_rois"]


def as_rois(op: str, boxes: Any, n_images: int, dtype: Any = np.float64) -> tuple[np.ndarray, bool]:
    """Boxes as a ``(K, 5)`` array ``(batch_index, x1, y1, x2, y2)``.

    Accepts torchvision's two formats: a ``(K, 5)`` array, or a list with
    one ``(L_i, 4)`` array of ``(x1, y1, x2, y2)`` per image (image ``i``
    gets batch index ``i``). Returns the array (in ``dtype``) and whether a
    list was given (gradients for boxes are then returned as a list too).
    """
    if isinstance(boxes, (list, tuple)) and not (
        len(boxes) and np.ndim(boxes[0]) == 1 and len(boxes[0]) == 5
    ):
        if len(boxes) > n_images:
            raise PoolingInputError(
                f"{op}: boxes is a list of {len(boxes)} per-image arrays but the input holds {n_images} images."
            )
        parts = []
        for i, b in enumerate(boxes):
            b = np.asarray(b, dtype=np.float64)
            if b.ndim != 2 or b.shape[1] != 4:
                raise PoolingInputError(
                    f"{op}: boxes[{i}] must have shape (L, 4) holding (x1, y1, x2, y2), got shape {b.shape}."
                )
            parts.append(np.concatenate([np.full((len(b), 1), float(i)), b], axis=1))
        rois = np.concatenate(parts, axis=0) if parts else np.zeros((0, 5))
        as_list = True
    else:
        rois = np.asarray(boxes, dtype=np.float64)
        if rois.ndim != 2 or rois.shape[1] != 5:
            raise PoolingInputError(
                f"{op}: boxes must be a (K, 5) array of (batch_index, x1, y1, x2, y2) or a list of (L, 4) arrays, "
                f"got shape {rois.shape}."
            )
        as_list = False
    if not np.isfinite(rois).all():
        raise PoolingInputError(f"{op}: boxes must be finite, got a NaN or inf coordinate.")
    idx = rois[:, 0]
    if rois.size and ((idx != np.round(idx)).any() or idx.min() < 0 or idx.max() >= n_images):
        raise PoolingInputError(
            f"{op}: the batch index (column 0 of boxes) must be an integer in [0, {n_images}), got values in "
            f"[{idx.min():g}, {idx.max():g}]."
        )
    return rois.astype(dtype, copy=False), as_list


def pooled_size(op: str, output_size: Any) -> tuple[int, int]:
    """``output_size`` as ``(height, width)`` (an int means square)."""
    return int_tuple(op, "output_size", output_size, 2, 1)  # type: ignore[return-value]


def spatial_scale_of(op: str, value: Any) -> float:
    return check_real(op, "spatial_scale", value, low=0.0, low_inclusive=False)


def split_rois(rois: np.ndarray, as_list: bool, counts: Sequence[int]) -> Any:
    """Inverse of :func:`as_rois` for gradients: a list of (L_i, 4) arrays if the input was a list."""
    if not as_list:
        return rois
    out, start = [], 0
    for n in counts:
        out.append(rois[start : start + n, 1:])
        start += n
    return out
