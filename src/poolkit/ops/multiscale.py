"""Multi-scale RoI Align over a feature pyramid (FPN), as torchvision's ``MultiScaleRoIAlign``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_int, check_real, is_int
from ..errors import PoolingInputError
from . import _roi_plan as rp
from ._api import define
from ._boxes import as_rois, pooled_size
from ._input import Batch, prepare
from .roi import align_backward, align_plan

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
) -> np.ndarray:
    """RoI Align on the pyramid level that suits each box (Lin et al., "Feature Pyramid Networks", CVPR 2017).

    torchvision's ``MultiScaleRoIAlign(featmap_names, output_size,
    sampling_ratio)(features, boxes, image_sizes)`` with every given map
    used, in order (finest first). Each box is pooled with
    :func:`poolkit.ops.roi.roi_align` (``aligned=False``) from one level.

    Parameters
    ----------
    features : list or dict of array_like
        Feature maps ``(N, C, H_l, W_l)`` (channels_last: ``(N, H_l, W_l, C)``),
        same ``N`` and ``C``, finest first; a dict is taken in insertion order.
    boxes : list of array_like or array_like
        One ``(L_i, 4)`` array of ``(x1, y1, x2, y2)`` per image, in image
        pixels (or a ``(K, 5)`` array with the batch index first).
    image_sizes : list of (int, int)
        ``(height, width)`` of each of the ``N`` images before the network.
    output_size : int or (int, int)
        ``(oh, ow)`` bins per box.
    sampling_ratio : int
        As :func:`poolkit.ops.roi.roi_align` (``<= 0``: adaptive).
    canonical_scale : float
        ``s0 > 0``: a box of area ``s0**2`` maps to ``canonical_level``.
    canonical_level : int
        ``k0``.
    data_format : {"channels_first", "channels_last"}

    Returns
    -------
    ndarray
        ``(K, C, oh, ow)`` (channels_last: ``(K, oh, ow, C)``) in the dtype of
        the first map; row ``k`` is box ``k`` in the order given.

    Notes
    -----
    torchvision's rules, as its code computes them:

    - scale of level ``l``: ``2 ** round(log2(H_l / H_img))`` with
      ``H_img`` the largest image height (only heights are used; the
      logarithm is taken in float32 and rounded half to even);
    - ``k_min = int(-log2(scale_0))``, ``k_max = int(-log2(scale_last))``;
    - box level: ``k = floor(k0 + log2(sqrt(area) / s0) + 1e-6)`` (the
      ``1e-6`` is added outside the logarithm), clamped to
      ``[k_min, k_max]``; the box is pooled from map ``k - k_min`` with that
      map's scale. A level without a map (``k - k_min >= len(features)``)
      leaves the box's output at 0;
    - ``area = (x2 - x1) (y2 - y1)``: a box reversed along one axis has a
      negative area, so torchvision's level is NaN; on x86 the NaN becomes a
      level that matches no map and the box's output stays 0 (no gradient).
      This is what is done here on every platform. A zero-area box goes to
      ``k_min``;
    - with a single map no level is computed: every box uses it.

    Gradient: :func:`poolkit.ops.vjp` returns ``"features"``, a list with
    one gradient per map (in order, in its shape; zeros for a map no box
    uses), each the RoI Align backward of the boxes of that level.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.multiscale import multiscale_roi_align
    >>> p2, p3 = np.ones((1, 1, 64, 64)), np.full((1, 1, 32, 32), 2.0)  # scales 1/4 and 1/8
    >>> boxes = [np.array([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 120.0, 120.0]])]  # levels 2 (clamped) and 3
    >>> multiscale_roi_align({"p2": p2, "p3": p3}, boxes, [(256, 256)], 1)[:, 0, 0, 0]
    array([1., 2.])
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
    )[0]


@dataclass(frozen=True)
class _Level:
    batch: Batch
    rows: np.ndarray  # indices of the boxes pooled from this map
    plan: rp.Plan | None
    divisor: np.ndarray | None


@dataclass(frozen=True)
class _Ctx:
    levels: tuple[_Level, ...]
    k: int
    c: int
    out: tuple[int, int]
    channels_last: bool
    op: str


def _features(op: str, features: Any, data_format: str) -> list[Batch]:
    maps = list(features.values()) if isinstance(features, Mapping) else features
    if not isinstance(maps, (list, tuple)) or not maps:
        raise PoolingInputError(
            f"{op}: features must be a non-empty list (or dict) of (N, C, H, W) feature maps, got "
            f"{type(features).__name__}{' (empty)' if isinstance(maps, (list, tuple)) else ''}."
        )
    batches = [
        prepare(
            f,
            op=f"{op} (features[{i}])",
            nd=2,
            data_format=data_format,
            accumulate=True,
            allow_unbatched=False,
        )
        for i, f in enumerate(maps)
    ]
    n, c = batches[0].x.shape[:2]
    for i, b in enumerate(batches):
        if b.x.shape[:2] != (n, c):
            raise PoolingInputError(
                f"{op}: every feature map must have the same batch size and channel count as features[0], "
                f"(N, C) = {(n, c)}; features[{i}] has {b.x.shape[:2]}."
            )
        if 0 in b.x.shape[2:]:
            raise PoolingInputError(f"{op}: features[{i}] has an empty spatial extent {b.x.shape[2:]}.")
    return batches


def _image_height(op: str, image_sizes: Any, n: int) -> int:
    sizes = list(image_sizes) if isinstance(image_sizes, (list, tuple, np.ndarray)) else None
    if sizes is None or len(sizes) != n:
        got = f"{len(sizes)} entries" if sizes is not None else type(image_sizes).__name__
        raise PoolingInputError(
            f"{op}: image_sizes must hold one (height, width) per image, {n} for these feature maps, got {got}."
        )
    for i, s in enumerate(sizes):
        if np.ndim(s) != 1 or len(s) != 2 or not all(is_int(v) and v >= 1 for v in s):
            raise PoolingInputError(
                f"{op}: image_sizes[{i}] must be a (height, width) pair of positive ints, got {s!r}."
            )
    return max(int(s[0]) for s in sizes)


def _scale(height: int, image_height: int) -> float:
    """torchvision's ``_infer_scale``: ``2 ** round(log2(h / H))`` with the log in float32."""
    return 2.0 ** float(np.round(np.log2(np.float32(float(height) / float(image_height)))))


def _levels(rois: np.ndarray, scales: list[float], s0: float, k0: int) -> np.ndarray:
    """Map index of each box (-1: none), torchvision's ``LevelMapper`` in the boxes' dtype."""
    k_min = int(-np.log2(np.float32(scales[0])))
    k_max = int(-np.log2(np.float32(scales[-1])))
    t = rois.dtype.type
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        ok = area >= 0  # False for a negative area and for NaN (inf * 0)
        s = np.sqrt(np.where(ok, area, 0))
        lvl = np.floor(t(k0) + np.log2(s / t(s0)) + t(1e-6))
    lvl = np.clip(lvl, k_min, k_max).astype(np.int64) - k_min
    return np.where(ok & (lvl < len(scales)), lvl, -1)


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
    need_ctx: bool = False,
    op: str = "multiscale_roi_align",
) -> tuple[np.ndarray, _Ctx | None]:
    batches = _features(op, features, data_format)
    oh, ow = pooled_size(op, output_size)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    s0 = check_real(op, "canonical_scale", canonical_scale, low=0.0, low_inclusive=False)
    k0 = check_int(op, "canonical_level", canonical_level)
    n, c = batches[0].x.shape[:2]
    image_height = _image_height(op, image_sizes, n)
    dt = batches[0].x.dtype
    rois, _ = as_rois(op, boxes, n, dtype=dt)
    scales = [_scale(b.x.shape[2], image_height) for b in batches]
    k = len(rois)
    if len(batches) == 1:
        which = np.zeros(k, dtype=np.int64)
    else:
        which = _levels(rois, scales, s0, k0)
    y = np.zeros((k * oh * ow, c), dtype=dt)
    levels = []
    for lvl, (b, scale) in enumerate(zip(batches, scales)):
        rows = np.flatnonzero(which == lvl)
        if not rows.size:
            levels.append(_Level(b, rows, None, None))
            continue
        h, w = b.x.shape[2:]
        xy = rp.scaled_boxes(op, rois[rows].astype(b.x.dtype), scale, b.x.dtype)
        image = rois[rows, 0].astype(np.int64)
        plan, div = align_plan(image, xy, (oh, ow), (h, w), n, sampling_ratio, 0.0, True, b.x.dtype)
        part = rp.gather_sum(rp.source_rows(b.x), plan, rows.size * oh * ow, div)
        y.reshape(k, oh * ow, c)[rows] = part.reshape(rows.size, oh * ow, c)
        levels.append(_Level(b, rows, plan, div))
    cl = batches[0].channels_last
    ctx = _Ctx(tuple(levels), k, c, (oh, ow), cl, op) if need_ctx else None
    return rp.bins_to_output(y, k, oh, ow, cl).astype(batches[0].dtype, copy=False), ctx


def _multiscale_backward(ctx: _Ctx, grad_output: Any) -> dict[str, Any]:
    oh, ow = ctx.out
    dt = ctx.levels[0].batch.x.dtype
    g = rp.output_grad(ctx.op, grad_output, ctx.k, ctx.c, oh, ow, ctx.channels_last, dt)
    g = g.reshape(ctx.k, oh * ow, ctx.c)
    grads = []
    for lv in ctx.levels:
        b = lv.batch
        if lv.plan is None:
            n, c, h, w = b.x.shape
            gx = np.zeros((n, h, w, c) if b.channels_last else (n, c, h, w), dtype=b.x.dtype)
        else:
            gl = g[lv.rows].reshape(-1, ctx.c).astype(b.x.dtype)
            gx = rp.rows_to_input(align_backward(lv.plan, lv.divisor, gl), b.x.shape, b.channels_last)
        grads.append(gx.astype(b.dtype, copy=False))
    return {"features": grads}


def _example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    n, _, h, w = x.shape
    coarse = x[:, :, : h - h % 2, : w - w % 2]
    coarse = coarse.reshape(n, x.shape[1], h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    sizes = [(4 * h, 4 * w)] * n  # scales 1/4 and 1/8
    boxes = [np.array([[1.0, 2.0, 3.0 * w, 2.5 * h], [0.5, 0.5, 4.0, 3.0]]) for _ in range(n)]
    return ([x, coarse], boxes, sizes), {
        "output_size": (2, 2),
        "canonical_scale": 2 * max(h, w),
        "canonical_level": 3,
    }


_aliases = define(
    multiscale_roi_align,
    _multiscale_roi_align,
    _multiscale_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    ndims=(2,),
    differentiable=("features",),
    example=_example,
)
multiscale_roi_align2d = _aliases["multiscale_roi_align2d"]
