"""Region pooling: RoI pooling (Fast R-CNN) and RoI Align (Mask R-CNN), with torchvision's exact rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool, check_int
from ..errors import PoolingInputError
from . import _roi_plan as rp
from ._api import define
from ._boxes import as_rois, pooled_size, spatial_scale_of
from ._input import Batch, prepare

__all__ = ["roi_pool", "roi_pool2d", "roi_align", "roi_align2d"]


def roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """RoI max pooling (Girshick, "Fast R-CNN", ICCV 2015), as ``torchvision.ops.roi_pool``.

    Each box is cut into ``oh x ow`` bins of whole pixels and every bin
    outputs the maximum of ``x`` over its pixels.

    Parameters
    ----------
    x : array_like, float
        ``(N, C, H, W)`` (channels_last: ``(N, H, W, C)``).
    boxes : array_like or list of array_like
        torchvision's formats: a ``(K, 5)`` array of
        ``(batch_index, x1, y1, x2, y2)``, or a list with one ``(L_i, 4)``
        array of ``(x1, y1, x2, y2)`` per image (image ``i`` gets index ``i``).
        Coordinates must be finite, with ``|coordinate * spatial_scale| < 2**31``.
    output_size : int or (int, int)
        ``(oh, ow)`` bins per box; an int means square.
    spatial_scale : float
        ``> 0``; multiplies every box coordinate (``1/16`` for a stride-16 map).
    data_format : {"channels_first", "channels_last"}

    Returns
    -------
    ndarray
        ``(K, C, oh, ow)`` (channels_last: ``(K, oh, ow, C)``), in ``x``'s dtype.

    Notes
    -----
    torchvision's CPU kernel, rule for rule (``s = spatial_scale``, ``T`` the
    compute dtype; float16 is computed in float32):

    - ``x1' = round(s x1)`` etc., with C's ``round`` (halves away from zero,
      not NumPy's half-to-even);
    - ``roi_w = max(x2' - x1' + 1, 1)``, ``roi_h = max(y2' - y1' + 1, 1)``
      (a degenerate or reversed box becomes one pixel wide/high);
    - ``bin_h = roi_h / oh`` in ``T``; bin ``ph`` covers rows
      ``[floor(ph bin_h), ceil((ph + 1) bin_h)) + y1'`` clipped to ``[0, H]``
      (neighbouring bins may share a row), columns likewise;
    - ``y = max over the bin`` by a running ``v > m`` from ``m = -FLT_MAX``:
      ties go to the first pixel in row-major order, NaN never wins, and a
      bin holding only NaN or values ``<= -FLT_MAX`` (such as ``-inf``)
      outputs ``-FLT_MAX = -3.4028234663852886e38`` (also for float64) with
      no gradient;
    - an empty bin (outside the map) outputs 0 and passes no gradient.

    Gradient: ``dy/dx`` is 1 at the winning pixel of each bin, so
    ``gx[p] = sum of g over the bins p wins`` (summed in box, then bin order,
    as torchvision; :func:`poolkit.ops.vjp` returns ``"x"``).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.roi import roi_pool
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> roi_pool(x, np.array([[0, 0.0, 0.0, 3.0, 3.0]]), 2)
    array([[[[ 5.,  7.],
             [13., 15.]]]])
    >>> roi_pool(x, [np.array([[2.5, 0.5, 2.5, 0.5]])], 1)  # C's round: pixel (1, 3), not (0, 2)
    array([[[[7.]]]])
    """
    return _roi_pool(x, boxes, output_size, spatial_scale, data_format=data_format)[0]


def roi_align(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """RoI Align (He et al., "Mask R-CNN", ICCV 2017), as ``torchvision.ops.roi_align``.

    Each bin is the mean of ``x`` bilinearly sampled on a regular grid of
    points inside the bin (no rounding of the box).

    Parameters
    ----------
    x : array_like, float
        ``(N, C, H, W)`` (channels_last: ``(N, H, W, C)``).
    boxes : array_like or list of array_like
        A ``(K, 5)`` array of ``(batch_index, x1, y1, x2, y2)`` or a list of
        ``(L_i, 4)`` arrays, one per image (see :func:`roi_pool`).
    output_size : int or (int, int)
        ``(oh, ow)`` bins per box.
    spatial_scale : float
        ``> 0``; multiplies every box coordinate.
    sampling_ratio : int
        Sample points per bin side if ``> 0``; any value ``<= 0`` (-1, 0,
        ...) means adaptive: ``ceil(roi_h / oh)`` by ``ceil(roi_w / ow)``.
    aligned : bool
        Shift the box by -0.5 pixel (Detectron2's ROIAlignV2) so that pixel
        ``i`` is the point ``i + 0.5``; the legacy ``False`` does not.
    data_format : {"channels_first", "channels_last"}

    Returns
    -------
    ndarray
        ``(K, C, oh, ow)`` (channels_last: ``(K, oh, ow, C)``).

    Notes
    -----
    torchvision's rules (``s = spatial_scale``, offset ``o = 0.5`` if
    ``aligned`` else 0, arithmetic in the compute dtype):

    - ``x1' = s x1 - o`` etc.; ``roi_w = x2' - x1'``; when not aligned,
      ``roi_w = max(roi_w, 1)`` (same for ``h``); an aligned reversed box
      keeps its negative size;
    - ``bin_h = roi_h / oh``; grid ``gh = sampling_ratio`` if ``> 0`` else
      ``ceil(roi_h / oh)`` (``gw`` likewise; a grid ``<= 0`` has no points);
    - points ``y = y1' + ph bin_h + (iy + 0.5) bin_h / gh``, ``iy < gh``
      (``x`` likewise);
    - bilinear rules: a point with ``y < -1`` or ``y > H`` (or ``x < -1``,
      ``x > W``) contributes 0; otherwise ``y <= 0`` is clamped to 0,
      ``y_low = floor(y)``, and if ``y_low >= H - 1`` then
      ``y_low = y_high = H - 1`` (weight 1 on the last row);
    - ``y[k, c, ph, pw] = sum of the samples / max(gh gw, 1)``.

    The output is linear in ``x``: ``y = sum_p w_p x_p`` with ``w_p`` the
    summed bilinear weights of the pixel over the bin's samples divided by
    the count, so ``gx[p] = sum over bins of w_p g`` (what torchvision's
    backward computes; :func:`poolkit.ops.vjp` returns ``"x"``). Pixels
    are merged per bin before the sum (same value to rounding) and a pixel
    with zero weight is not read, so an ``inf`` there does not turn the bin
    into NaN (torchvision multiplies it by 0). With ``aligned=True``, the
    adaptive grid and a box reversed along one axis only, ``gh gw < 0`` and
    torchvision's CPU kernel raises (it sizes a buffer by that product);
    here the box has no sample point and outputs 0. Float16 input is
    computed in float32 (torchvision's CPU kernels take float and double).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.roi import roi_align
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)  # x[i, j] = 4 i + j, bilinear is exact
    >>> roi_align(x, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), 2)  # bin centres (0.5, 0.5), ...
    array([[[[2.5, 3.5],
             [6.5, 7.5]]]])
    >>> roi_align(x, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), 2, aligned=True)  # shifted by -0.5
    array([[[[0., 1.],
             [4., 5.]]]])
    """
    y, _ = _roi_align(x, boxes, output_size, spatial_scale, sampling_ratio, aligned, data_format=data_format)
    return y


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    plan: rp.Plan | None  # align only
    k: int
    out: tuple[int, int]
    divisor: np.ndarray | None  # per bin (align)
    winners: np.ndarray | None  # per bin and channel (pool)
    image: np.ndarray | None = None  # per box (pool)


def _setup(
    op: str, x: Any, boxes: Any, output_size: Any, spatial_scale: Any, data_format: str
) -> tuple[Batch, np.ndarray, np.ndarray, tuple[int, int]]:
    """Shared checks: the batch, the batch index and scaled coordinates of every box, the output size."""
    batch = prepare(x, op=op, nd=2, data_format=data_format, accumulate=True, allow_unbatched=False)
    oh, ow = pooled_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    n, _, h, w = batch.x.shape
    if h == 0 or w == 0:
        raise PoolingInputError(f"{op}: the feature map must have H, W >= 1, got {(h, w)}.")
    rois, _ = as_rois(op, boxes, n, dtype=batch.x.dtype)
    xy = rp.scaled_boxes(op, rois, scale, batch.x.dtype)
    return batch, rois[:, 0].astype(np.int64), xy, (oh, ow)


def _roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "roi_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    batch, image, xy, (oh, ow) = _setup(op, x, boxes, output_size, spatial_scale, data_format)
    n, c, h, w = batch.x.shape
    dt = batch.x.dtype
    q = rp.round_half_away(xy)  # (K, 4) int: x1, y1, x2, y2
    ay = rp.pool_axis(q[:, 1], np.maximum(q[:, 3] - q[:, 1] + 1, 1), oh, h, dt)
    ax = rp.pool_axis(q[:, 0], np.maximum(q[:, 2] - q[:, 0] + 1, 1), ow, w, dt)
    plan = rp.cartesian(ay, ax, image, oh, ow, (h, w), n * h * w)
    y, win = rp.gather_max(rp.source_rows(batch.x), plan, len(image) * oh * ow, need_ctx)
    ctx = _Ctx(batch, None, len(image), (oh, ow), None, win, image) if need_ctx else None
    return rp.bins_to_output(y, len(image), oh, ow, batch.channels_last).astype(batch.dtype, copy=False), ctx


def _roi_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    b = ctx.batch
    g = rp.output_grad(b.op, grad_output, ctx.k, b.x.shape[1], *ctx.out, b.channels_last, b.x.dtype)
    image = np.repeat(ctx.image, ctx.out[0] * ctx.out[1])
    gx = rp.scatter_winners(ctx.winners, g, image, b.x.shape, b.channels_last)
    return {"x": gx.astype(b.dtype, copy=False)}


def align_plan(
    image: np.ndarray,
    xy: np.ndarray,
    out: tuple[int, int],
    hw: tuple[int, int],
    n: int,
    sampling_ratio: int,
    offset: float,
    min_size: bool,
    dtype: Any,
    ps: bool = False,
) -> tuple[rp.Plan, np.ndarray]:
    """RoI Align's plan and per-bin divisor ``max(gh gw, 1)`` (shared with ps_roi_align, multiscale)."""
    t = np.dtype(dtype).type
    oh, ow = out
    h, w = hw
    start = xy - t(offset)
    size = start[:, 2:] - start[:, :2]  # (roi_w, roi_h)
    if min_size:
        size = np.maximum(size, t(1))
    bins = size / np.array([ow, oh], dtype=dtype)
    if sampling_ratio > 0:
        grid = np.full(size.shape, sampling_ratio, dtype=np.int64)
    else:
        grid = np.ceil(bins).astype(np.int64)  # ceil(roi_w / ow) in T, as torchvision
    ay = rp.align_axis(start[:, 1], bins[:, 1], grid[:, 1], h, oh, dtype)
    ax = rp.align_axis(start[:, 0], bins[:, 0], grid[:, 0], w, ow, dtype)
    plan = rp.cartesian(
        ay, ax, image, oh, ow, (h, w), n * h * w * (oh * ow if ps else 1), n * h * w if ps else 0
    )
    count = np.maximum(grid[:, 0].astype(np.float64) * grid[:, 1], 1).astype(dtype)
    return plan, np.repeat(count, oh * ow)


def _roi_align(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "roi_align",
) -> tuple[np.ndarray, _Ctx | None]:
    batch, image, xy, out = _setup(op, x, boxes, output_size, spatial_scale, data_format)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    aligned = check_bool(op, "aligned", aligned)
    n, c, h, w = batch.x.shape
    plan, div = align_plan(
        image, xy, out, (h, w), n, sampling_ratio, 0.5 if aligned else 0.0, not aligned, batch.x.dtype
    )
    k = len(image)
    y = rp.gather_sum(rp.source_rows(batch.x), plan, k * out[0] * out[1], div)
    ctx = _Ctx(batch, plan, k, out, div, None) if need_ctx else None
    return rp.bins_to_output(y, k, *out, batch.channels_last).astype(batch.dtype, copy=False), ctx


def align_backward(plan: rp.Plan, div: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``gx`` rows of RoI Align's transposed plan for bin gradients ``g`` ``(K*oh*ow, C)``."""
    return rp.scatter_sum(plan, g / div[:, None])


def _roi_align_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    b = ctx.batch
    g = rp.output_grad(b.op, grad_output, ctx.k, b.x.shape[1], *ctx.out, b.channels_last, b.x.dtype)
    gx = align_backward(ctx.plan, ctx.divisor, g)
    return {"x": rp.rows_to_input(gx, b.x.shape, b.channels_last).astype(b.dtype, copy=False)}


def example_boxes(x: Any) -> np.ndarray:
    """A few boxes for ``(N, C, H, W)``: the whole map, one partly outside, one reversed (tiny)."""
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    return np.array(
        [
            [0, 0.0, 0.0, w - 1.0, h - 1.0],
            [n - 1, -1.5, 0.5, w / 2 + 0.3, h + 0.7],
            [0, w / 2, h / 3, w / 4, h / 3 + 0.2],
        ]
    )


_pool_aliases = define(
    roi_pool,
    _roi_pool,
    _roi_pool_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    ndims=(2,),
    differentiable=("x",),
    example=lambda x: ((x, example_boxes(x)), {"output_size": (2, 3)}),
)
_align_aliases = define(
    roi_align,
    _roi_align,
    _roi_align_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    ndims=(2,),
    differentiable=("x",),
    example=lambda x: ((x, example_boxes(x)), {"output_size": (2, 3), "sampling_ratio": 2, "aligned": True}),
)
roi_pool2d = _pool_aliases["roi_pool2d"]
roi_align2d = _align_aliases["roi_align2d"]
