"""Position-sensitive region pooling (R-FCN): ps_roi_pool and ps_roi_align, with torchvision's rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_int
from ..errors import PoolingInputError
from . import _roi_plan as rp
from ._api import define
from ._input import Batch
from .roi import _setup, align_backward, align_plan, example_boxes

__all__ = ["ps_roi_pool", "ps_roi_pool2d", "ps_roi_align", "ps_roi_align2d"]


def ps_roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Position-sensitive RoI pooling (Dai et al., "R-FCN", NeurIPS 2016), as ``torchvision.ops.ps_roi_pool``.

    Bin ``(ph, pw)`` of output channel ``c`` averages input channel
    ``c_in = (c oh + ph) ow + pw`` over the bin's whole pixels, so each bin
    reads its own group of channels (score maps for one relative position).

    Parameters
    ----------
    x : array_like, float
        ``(N, C, H, W)`` (channels_last: ``(N, H, W, C)``), ``C`` a multiple
        of ``oh * ow``.
    boxes : array_like or list of array_like
        A ``(K, 5)`` array of ``(batch_index, x1, y1, x2, y2)`` or a list of
        ``(L_i, 4)`` arrays, one per image (see :func:`poolkit.ops.roi.roi_pool`).
    output_size : int or (int, int)
        ``(oh, ow)`` bins per box.
    spatial_scale : float
        ``> 0``; multiplies every box coordinate.
    data_format : {"channels_first", "channels_last"}

    Returns
    -------
    ndarray
        ``(K, C / (oh ow), oh, ow)`` (channels_last: ``(K, oh, ow, C / (oh ow))``).

    Notes
    -----
    torchvision's CPU forward, rule for rule: ``x1' = round(s x1)`` (halves
    away from zero); ``roi_w = max(x2' - x1', 1)`` (no ``+ 1``, unlike
    ``roi_pool``); ``bin_w = roi_w / ow``; bin ``pw`` covers columns
    ``[floor(pw bin_w), ceil((pw + 1) bin_w)) + x1'`` **clipped to
    ``[0, W - 1]``** (so the last row and column of the map are never read;
    rows likewise); an empty bin outputs 0; otherwise
    ``y = sum / ((hend - hstart) (wend - wstart))``.

    Gradient: ``1 / area`` to every pixel of the bin in channel ``c_in``:
    the exact gradient of this forward (:func:`poolkit.ops.vjp` returns
    ``"x"``). torchvision's backward clips the bins to ``[0, H]`` instead,
    so for bins that reach the last row or column it returns a gradient that
    is not the one of its own forward; elsewhere the two agree.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.ps_roi import ps_roi_pool
    >>> x = np.arange(4 * 16.0).reshape(1, 4, 4, 4)  # channel c_in holds 16 c_in + 4 i + j
    >>> ps_roi_pool(x, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), 2)  # bin (ph, pw) reads channel 2 ph + pw
    array([[[[ 0., 17.],
             [36., 53.]]]])
    """
    return _ps_roi_pool(x, boxes, output_size, spatial_scale, data_format=data_format)[0]


def ps_roi_align(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Position-sensitive RoI Align, as ``torchvision.ops.ps_roi_align``.

    RoI Align's bilinear sampling (He et al., "Mask R-CNN", 2017) on R-FCN's
    position-sensitive channel groups (Dai et al., 2016): bin ``(ph, pw)``
    of output channel ``c`` samples input channel ``c_in = (c oh + ph) ow + pw``.

    Parameters
    ----------
    x : array_like, float
        ``(N, C, H, W)`` (channels_last: ``(N, H, W, C)``), ``C`` a multiple
        of ``oh * ow``.
    boxes : array_like or list of array_like
        A ``(K, 5)`` array or a list of ``(L_i, 4)`` arrays, one per image.
    output_size : int or (int, int)
        ``(oh, ow)`` bins per box.
    spatial_scale : float
        ``> 0``; multiplies every box coordinate.
    sampling_ratio : int
        Points per bin side if ``> 0``, else adaptive ``ceil(roi / out)``.
    data_format : {"channels_first", "channels_last"}

    Returns
    -------
    ndarray
        ``(K, C / (oh ow), oh, ow)`` (channels_last: ``(K, oh, ow, C / (oh ow))``).

    Notes
    -----
    As :func:`poolkit.ops.roi.roi_align` with ``aligned=True`` always
    (``x1' = s x1 - 0.5``) and no minimum box size: sample points
    ``y = y1' + ph bin_h + (iy + 0.5) bin_h / gh`` with ``bin_h = roi_h / oh``
    and ``gh = sampling_ratio`` or ``ceil(roi_h / oh)``; a point with
    ``y < -1`` or ``y > H`` contributes 0, ``y <= 0`` clamps to 0,
    ``y_low >= H - 1`` reads row ``H - 1``; each bin is the sum over its
    points divided by ``max(gh gw, 1)``.

    Difference from torchvision: its divisor is ``gh gw`` without the
    ``max``, so a zero-width or zero-height box with the adaptive grid gives
    ``0 / 0 = NaN`` there; here it gives 0, like ``roi_align(aligned=True)``.
    The output is linear in ``x``; the gradient is the transposed map.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.ps_roi import ps_roi_align
    >>> x = np.arange(4 * 16.0).reshape(1, 4, 4, 4)  # channel c_in holds 16 c_in + 4 i + j
    >>> ps_roi_align(x, np.array([[0, 0.5, 0.5, 2.5, 2.5]]), 2)  # points (0.5, 0.5), (0.5, 1.5), ...
    array([[[[ 2.5, 19.5],
             [38.5, 55.5]]]])
    """
    return _ps_roi_align(x, boxes, output_size, spatial_scale, sampling_ratio, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    plan: rp.Plan
    k: int
    out: tuple[int, int]
    divisor: np.ndarray


def _groups(op: str, batch: Batch, out: tuple[int, int]) -> int:
    c, p = batch.x.shape[1], out[0] * out[1]
    if c % p:
        raise PoolingInputError(
            f"{op}: the channel count C={c} must be a multiple of oh*ow = {p} (output_size={out}): each "
            f"output channel reads one group of {p} input channels. Use C = {(c // p + 1) * p} channels or "
            f"another output_size."
        )
    return p


def _ps_roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "ps_roi_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    batch, image, xy, (oh, ow) = _setup(op, x, boxes, output_size, spatial_scale, data_format)
    groups = _groups(op, batch, (oh, ow))
    n, c, h, w = batch.x.shape
    dt = batch.x.dtype
    q = rp.round_half_away(xy)
    ay = rp.pool_axis(q[:, 1], np.maximum(q[:, 3] - q[:, 1], 1), oh, h - 1, dt)
    ax = rp.pool_axis(q[:, 0], np.maximum(q[:, 2] - q[:, 0], 1), ow, w - 1, dt)
    plan = rp.cartesian(ay, ax, image, oh, ow, (h, w), groups * n * h * w, n * h * w)
    k = len(image)
    area = np.maximum(plan.counts, 1).astype(dt)
    y = rp.gather_sum(rp.ps_source_rows(batch.x, groups), plan, k * groups, area)
    ctx = _Ctx(batch, plan, k, (oh, ow), area) if need_ctx else None
    return rp.bins_to_output(y, k, oh, ow, batch.channels_last).astype(batch.dtype, copy=False), ctx


def _ps_roi_align(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "ps_roi_align",
) -> tuple[np.ndarray, _Ctx | None]:
    batch, image, xy, out = _setup(op, x, boxes, output_size, spatial_scale, data_format)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    groups = _groups(op, batch, out)
    n, c, h, w = batch.x.shape
    plan, div = align_plan(image, xy, out, (h, w), n, sampling_ratio, 0.5, False, batch.x.dtype, ps=True)
    k = len(image)
    y = rp.gather_sum(rp.ps_source_rows(batch.x, groups), plan, k * groups, div)
    ctx = _Ctx(batch, plan, k, out, div) if need_ctx else None
    return rp.bins_to_output(y, k, *out, batch.channels_last).astype(batch.dtype, copy=False), ctx


def _ps_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    b = ctx.batch
    groups = ctx.out[0] * ctx.out[1]
    g = rp.output_grad(b.op, grad_output, ctx.k, b.x.shape[1] // groups, *ctx.out, b.channels_last, b.x.dtype)
    gx = align_backward(ctx.plan, ctx.divisor, g)
    return {"x": rp.rows_to_input(gx, b.x.shape, b.channels_last, groups).astype(b.dtype, copy=False)}


def _example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (x, example_boxes(x)), {"output_size": (1, x.shape[1])}


_pool_aliases = define(
    ps_roi_pool,
    _ps_roi_pool,
    _ps_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    ndims=(2,),
    differentiable=("x",),
    example=_example,
)
_align_aliases = define(
    ps_roi_align,
    _ps_roi_align,
    _ps_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    ndims=(2,),
    differentiable=("x",),
    example=lambda x: (_example(x)[0], {**_example(x)[1], "sampling_ratio": 2}),
)
ps_roi_pool2d = _pool_aliases["ps_roi_pool2d"]
ps_roi_align2d = _align_aliases["ps_roi_align2d"]
