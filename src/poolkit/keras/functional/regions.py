"""Region pooling in ``keras.ops``: RoI pool and align, position-sensitive, multi-scale (FPN), precise RoI pooling.

Semantics are the NumPy reference's (:mod:`poolkit.ops.roi`, ``ps_roi``,
``multiscale``, ``precise_roi``: torchvision's rules, with their documented
deviations). Every shape is static except the batch size and the number of
boxes, so the functions trace under ``tf.function`` and ``jax.jit``:

* **The linear operators** (``roi_align``, ``ps_roi_align``, ``ps_roi_pool``,
  ``multiscale_roi_align``, ``precise_roi_pool``) are separable: bin
  ``(k, ph, pw)`` weighs pixel ``(i, j)`` by ``Wy[k, ph, i] Wx[k, pw, j]``
  (bilinear weights and torchvision's validity tests factor into ``y`` and
  ``x``). The output is two contractions, ``(K, oh, N*H) x (N*H, W*C)`` (the
  box's image picked by a one-hot factor) and a batched one over ``W``; their
  gradient is contractions too: deterministic, no scatter.
* **The adaptive grid** (``sampling_ratio <= 0``) has ``ceil(roi_h / oh)``
  points per bin, a number that depends on the box. Rather than a static
  bound on the points per bin (a box as large as the map, or larger, would
  make it ``H`` or more), each row weight sums the points that can reach that
  row: their spacing is ``bin_h / ceil(bin_h) > 1/2`` (or there is one point),
  and a point reaches only rows within 2 of it, so the points within
  ``[i - 2.5, i + 4.5]`` of row ``i`` (at most ``14``, ``_CANDIDATES``)
  decide it. Cost ``K * oh * H * 14`` per axis, whatever the box sizes. A fixed
  ``sampling_ratio`` uses all its points for every row.
* **Non-finite inputs** follow the reference: a pixel whose weight in a bin
  is 0 is not read (``0 * inf`` would be NaN), so the product of the finite
  part is completed by counting products over the positive supports (number
  of non-finite values, sum of the signs of the infinities) that decide
  whether a bin is NaN or +-inf. This triples the cost of the products.
* **roi_pool** is a maximum over rectangles of whole pixels: a 2-D sparse
  table (the maximum over every ``2**a x 2**b`` block and its row-major first
  position, each level one shifted comparison of the previous) answers each
  bin with four overlapping blocks (ties to the first pixel in row-major
  order), built for a slice of channels at a time. The winner is then
  gathered from ``x``, so the gradient reaches exactly one pixel per bin.

Boxes: a ``(K, 5)`` array of ``(batch_index, x1, y1, x2, y2)``, a list of
``(L_i, 4)`` arrays (one per image), or (Keras' batched form) an
``(N, L, 4)`` tensor, image ``i``'s boxes at index ``i``. Box *values* given
as NumPy arrays are validated as the reference does; values in tensors cannot
be checked without running the graph: a box with a non-finite coordinate, a
batch index that is not an integer in ``[0, N)`` or ``|coordinate *
spatial_scale| >= 2**31`` reads nothing and outputs 0 (the reference raises).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from ..._validate import check_bool, check_int, check_real, is_int
from ...errors import PoolingInputError
from ...ops._boxes import as_rois, pooled_size, spatial_scale_of
from ...ops.multiscale import _scale
from .._core import batch_size, data_format_of, layout_of, public, scalar

__all__ = [
    "roi_pool",
    "roi_align",
    "ps_roi_pool",
    "ps_roi_align",
    "multiscale_roi_align",
    "precise_roi_pool",
]

FLT_MAX = float(np.finfo(np.float32).max)
COORD_LIMIT = 2.0**31
# Candidate sample points per row for the adaptive grid (module docstring), 0.5 of slack for the compute
# dtype's rounding of far-away coordinates.
_CANDIDATES = 14
_SLACK = 0.5
# roi_pool's sparse tables are built for as many channels at a time as keep them under this many elements.
_TABLE_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------- plumbing


@functools.cache
def _wide() -> str:
    """float64 where the backend has it (JAX only with ``jax_enable_x64``)."""
    with warnings.catch_warnings():  # JAX warns that it truncates the probe to float32
        warnings.simplefilter("ignore", UserWarning)
        return keras.backend.standardize_dtype(ops.zeros((), "float64").dtype)


def _floor(v: Any) -> Any:
    """``floor`` in ``v``'s dtype (Keras' torch ``ops.floor``/``ceil``/``maximum`` compute float64 in float32)."""
    r = ops.trunc(v)
    return ops.where(ops.less(v, r), r - 1, r)


def _ceil(v: Any) -> Any:
    r = ops.trunc(v)
    return ops.where(ops.greater(v, r), r + 1, r)


def _at_least(v: Any, low: float) -> Any:
    """``maximum(v, low)`` in ``v``'s dtype."""
    return ops.where(ops.less(v, low), ops.full_like(v, low), v)


def _compute_dtype(dtype: Any) -> str:
    d = keras.backend.standardize_dtype(dtype)
    return "float32" if d in ("float16", "bfloat16") else d


def _feature_map(op: str, x: Any, data_format: str | None) -> tuple[Any, bool, tuple[int, int, int]]:
    """``x`` as a channels-last tensor in the compute dtype, whether the user's layout is channels_last, (H, W, C)."""
    if isinstance(x, (np.ndarray, list, tuple)):
        x = ops.convert_to_tensor(x)
    df = data_format_of(op, data_format)
    layout = layout_of(op, tuple(x.shape), 2, df, x.dtype)
    h, w = layout.spatial(tuple(x.shape))
    if h == 0 or w == 0:
        raise PoolingInputError(f"{op}: the feature map must have H, W >= 1, got {(h, w)}.")
    xc = ops.cast(x, _compute_dtype(x.dtype))
    if not layout.channels_last:
        xc = ops.transpose(xc, (0, 2, 3, 1))
    return xc, layout.channels_last, (h, w, x.shape[layout.channel_axis])


def _to_user(y: Any, channels_last: bool, dtype: Any) -> Any:
    """``(K, oh, ow, C)`` -> the user's layout and dtype."""
    y = ops.cast(y, dtype)
    return y if channels_last else ops.transpose(y, (0, 3, 1, 2))


def _is_tensor(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, (np.ndarray, np.generic))


def _rows_of(b: Any) -> bool:
    """A ``(batch_index, x1, y1, x2, y2)`` row (a list of those is a ``(K, 5)`` array)."""
    return (len(b.shape) == 1 and b.shape[0] == 5) if _is_tensor(b) else (np.ndim(b) == 1 and len(b) == 5)


def _rois(op: str, boxes: Any, n: Any, dtype: str) -> Any:
    """Every accepted box format as one ``(K, 5)`` tensor in ``dtype`` (differentiable for the coordinates).

    NumPy boxes are validated as the reference validates them (:func:`poolkit.ops._boxes.as_rois`).
    """
    per_image = isinstance(boxes, (list, tuple)) and not (len(boxes) and _rows_of(boxes[0]))
    parts = list(boxes) if per_image else [boxes]
    if not any(_is_tensor(b) for b in parts):  # values known now: the reference's checks
        as_rois(op, boxes, n if isinstance(n, int) else 2**62)
    if per_image:
        if isinstance(n, int) and len(boxes) > n:
            raise PoolingInputError(
                f"{op}: boxes is a list of {len(boxes)} per-image arrays but the input holds {n} images."
            )
        rows = []
        for i, b in enumerate(boxes):
            b = (
                ops.cast(b, dtype)
                if _is_tensor(b)
                else ops.convert_to_tensor(np.asarray(b, np.float64), dtype)
            )
            if len(b.shape) != 2 or b.shape[1] != 4:
                raise PoolingInputError(
                    f"{op}: boxes[{i}] must have shape (L, 4) holding (x1, y1, x2, y2), got shape {tuple(b.shape)}."
                )
            rows.append(ops.concatenate([ops.full_like(b[:, :1], float(i)), b], axis=1))
        return ops.concatenate(rows, axis=0) if rows else ops.zeros((0, 5), dtype)
    b = (
        ops.cast(boxes, dtype)
        if _is_tensor(boxes)
        else ops.convert_to_tensor(np.asarray(boxes, np.float64), dtype)
    )
    if len(b.shape) == 3 and b.shape[-1] == 4:  # (N, L, 4): Keras' batched form, image i at index i
        images = ops.arange(ops.shape(b)[0], dtype=dtype)[:, None, None] + ops.zeros_like(b[..., :1])
        return ops.reshape(ops.concatenate([images, b], axis=-1), (-1, 5))
    if len(b.shape) != 2 or b.shape[1] != 5:
        raise PoolingInputError(
            f"{op}: boxes must be a (K, 5) array of (batch_index, x1, y1, x2, y2), a list of (L, 4) arrays or "
            f"an (N, L, 4) tensor, got shape {tuple(b.shape)}."
        )
    return b


def _image_of(rois: Any, n: Any) -> tuple[Any, Any]:
    """Batch index of every box (0 where unusable) and whether the box is usable."""
    r = ops.stop_gradient(rois)
    col = r[:, 0]
    nf = ops.cast(n, col.dtype)
    valid = ops.all(ops.isfinite(r), axis=1)
    valid = valid & ops.equal(col, _floor(col)) & ops.greater_equal(col, 0) & ops.less(col, nf)
    return ops.cast(ops.where(valid, col, ops.zeros_like(col)), "int32"), valid


def _scaled(rois: Any, scale: float, valid: Any, dtype: str) -> tuple[Any, Any]:
    """``(K, 4)`` coordinates times ``spatial_scale`` in the compute dtype (0 for unusable boxes)."""
    xy = ops.cast(ops.stop_gradient(rois[:, 1:]), dtype)
    xy = xy * scalar(scale, xy)
    valid = valid & ops.all(ops.less(ops.abs(xy), COORD_LIMIT), axis=1)
    return ops.where(valid[:, None], xy, ops.zeros_like(xy)), valid


def _onehot(idx: Any, valid: Any, n: Any, dtype: str) -> Any:
    """``(K, N)``: 1 at the box's image (a zero row for an unusable box)."""
    hit = ops.equal(idx[:, None], ops.arange(n, dtype="int32")[None, :]) & valid[:, None]
    return ops.cast(hit, dtype)


def _output_size(op: str, output_size: Any) -> tuple[int, int]:
    return pooled_size(op, output_size)


# --------------------------------------------------------------------------- separable linear map


@ops.custom_gradient
def _finite_part(x: Any) -> Any:
    """``where(isfinite(x), x, 0)`` whose gradient is the identity (the reference's map is linear in ``x``)."""

    def grad(*args: Any, upstream: Any = None) -> Any:
        return args[0] if upstream is None else upstream

    return ops.where(ops.isfinite(x), x, ops.zeros_like(x)), grad


@ops.custom_gradient
def _nan_grad(w: Any, bad: Any) -> Any:
    """Identity in ``w`` whose gradient is NaN for the boxes flagged ``bad`` (1.0) on the first axis."""

    def grad(*args: Any, upstream: Any = None) -> Any:
        g = args[0] if upstream is None else upstream
        mask = ops.greater(ops.reshape(bad, (-1,) + (1,) * (len(g.shape) - 1)), 0)
        return ops.where(mask, ops.full_like(g, float("nan")), g), ops.zeros_like(bad)

    return w + ops.zeros_like(w), grad


def _contract(x: Any, wy: Any, wx: Any, onehot: Any, ps: bool) -> Any:
    """``y[k, p, q, c] = sum_{i,j} wy[k, p, i] x[b_k, i, j, c'] wx[k, q, j]``, channels-last ``(K, P, Q, C_out)``.

    ``c' = c`` normally; position-sensitive (``ps``): ``c' = (c P + p) Q + q``.
    (``ops.einsum`` throughout: ``ops.matmul`` returns float32 for float64 on Keras' torch backend.)
    """
    _, h, w, c = x.shape
    p, q = wy.shape[1], wx.shape[1]
    if ps:
        x6 = ops.reshape(x, (-1, h, w, c // (p * q), p, q))
        a = wy[:, :, None, :] * onehot[:, None, :, None]  # (K, P, N, H)
        t = ops.einsum("kpnh,nhwcpq->kpwcq", a, x6)
        return ops.einsum("kqw,kpwcq->kpqc", wx, t)
    if p * w <= q * h:  # rows first: intermediate (K, P, W, C)
        a = wy[:, :, None, :] * onehot[:, None, :, None]
        return ops.einsum("kqw,kpwc->kpqc", wx, ops.einsum("kpnh,nhwc->kpwc", a, x))
    a = wx[:, :, None, :] * onehot[:, None, :, None]  # (K, Q, N, W)
    return ops.einsum("kph,kqhc->kpqc", wy, ops.einsum("kqnw,nhwc->kqhc", a, x))


def _linear_regions(x: Any, wy: Any, wx: Any, onehot: Any, ps: bool = False, box_grad: bool = False) -> Any:
    """:func:`_contract` with the reference's non-finite rule (module docstring).

    With ``box_grad``, a box whose support holds a non-finite value gets a NaN weight gradient.
    """
    t = x.dtype
    fin = ops.isfinite(x)
    my = ops.cast(ops.greater(ops.stop_gradient(wy), 0), t)
    mx = ops.cast(ops.greater(ops.stop_gradient(wx), 0), t)
    oh = ops.stop_gradient(onehot)
    xs = ops.stop_gradient(x)
    cnt = _contract(ops.cast(ops.logical_not(fin), t), my, mx, oh, ps)
    sgn = _contract(
        ops.cast(ops.logical_and(ops.isinf(xs), ops.greater(xs, 0)), t)
        - ops.cast(ops.logical_and(ops.isinf(xs), ops.less(xs, 0)), t),
        my,
        mx,
        oh,
        ps,
    )
    hit = ops.greater(cnt, 0)
    if box_grad:
        bad = ops.cast(ops.any(hit, axis=(1, 2, 3)), t)  # (a reshape to (K, -1) fails for K = 0 on JAX)
        wy, wx = _nan_grad(wy, bad), _nan_grad(wx, bad)
    y = _contract(_finite_part(x), wy, wx, onehot, ps)
    # NaN, or the infinity all of a bin's non-finite values agree on; the gradient passes unchanged.
    special = ops.where(ops.equal(ops.abs(sgn), cnt), ops.sign(sgn) * float("inf"), float("nan"))
    return y + ops.stop_gradient(ops.where(hit, ops.cast(special, t) - y, ops.zeros_like(y)))


# --------------------------------------------------------------------------- RoI Align weights


def _align_axis(a0: Any, bin_: Any, grid: Any, size: int, pooled: int, fixed: int) -> Any:
    """``(K, pooled, size)``: the summed bilinear weights of every bin's sample points on every row.

    Point ``j < grid`` of bin ``p`` is ``y = a0 + p bin + ((j + .5) bin) / grid`` in the compute dtype
    (torchvision's arithmetic); ``y < -1`` or ``y > size`` is skipped, ``y <= 0`` clamps to 0, and
    ``floor(y) >= size - 1`` gives all its weight to row ``size - 1``. ``grid`` is a float tensor.
    """
    t = a0.dtype
    a = a0[:, None] + ops.arange(pooled, dtype=t)[None, :] * bin_[:, None]  # (K, P)
    rows = ops.arange(size, dtype=t)
    if fixed > 0:  # every point is a candidate for every row: (1, 1, 1, G)
        j = ops.reshape(ops.arange(fixed, dtype=_wide()), (1, 1, 1, fixed))
        ok = None
    else:  # the first point that can reach row i, estimated in a wide dtype, then a fixed count
        wd = _wide()
        gw = ops.cast(grid, wd)
        step = ops.cast(bin_, wd) / _at_least(gw, 1.0)
        first = (ops.cast(rows, wd)[None, None, :] - (2 + _SLACK) - ops.cast(a, wd)[:, :, None]) / step[
            :, None, None
        ] - 0.5
        first = ops.clip(ops.nan_to_num(first, nan=0.0, posinf=COORD_LIMIT * 4), -4.0, COORD_LIMIT * 4)
        j = (_floor(first) - 1)[..., None] + ops.arange(_CANDIDATES, dtype=wd)
        ok = ops.greater_equal(j, 0) & ops.less(j, gw[:, None, None, None])
    half = ops.cast(ops.cast(j, "float32") + 0.5, t)  # C's `iy + .5f`
    num = half * bin_[:, None, None, None]
    # XLA (JAX's jit, TensorFlow's jit_compile) turns a division by a broadcast into a product with the
    # reciprocal, an ulp off: a point landing exactly on -1, a row or the map's end moves across it. Adding
    # num * 0 (not simplified away for floats) makes the divisor a full tensor: C's true division.
    den = ops.cast(grid, t)[:, None, None, None] + num * scalar(0.0, num)
    y = a[:, :, None, None] + num / den
    inside = ops.greater_equal(y, -1.0) & ops.less_equal(y, float(size))
    if ok is not None:
        inside = inside & ok
    y = ops.where(ops.less_equal(y, 0), ops.zeros_like(y), y)
    low = _floor(y)
    edge = ops.greater_equal(low, size - 1)
    low = ops.where(edge, ops.full_like(low, size - 1), low)
    ly = ops.where(edge, ops.zeros_like(y), y - low)
    r = ops.reshape(rows, (1, 1, size, 1))
    zero = ops.zeros_like(ly)
    w = ops.where(inside & ops.equal(low, r), 1 - ly, zero) + ops.where(
        inside & ops.equal(low + 1, r), ly, zero
    )
    return ops.sum(w, axis=-1)


def _align_weights(
    xy: Any, out: tuple[int, int], hw: tuple[int, int], sampling_ratio: int, offset: float, min_size: bool
) -> tuple[Any, Any, Any]:
    """RoI Align's ``Wy (K, oh, H)``, ``Wx (K, ow, W)`` and per-box divisor ``max(gh gw, 1)``."""
    t = xy.dtype
    oh, ow = out
    start = xy - scalar(offset, xy)
    size = start[:, 2:] - start[:, :2]  # (roi_w, roi_h)
    if min_size:
        size = _at_least(size, 1.0)
    bins = size / ops.convert_to_tensor(np.array([ow, oh]), dtype=t)
    if sampling_ratio > 0:
        grid = ops.full_like(size, float(sampling_ratio))
    else:  # ceil(roi_w / ow) in the compute dtype, as torchvision
        grid = ops.clip(_ceil(bins), -(2.0**33), 2.0**33)
    wy = _align_axis(start[:, 1], bins[:, 1], grid[:, 1], hw[0], oh, sampling_ratio)
    wx = _align_axis(start[:, 0], bins[:, 0], grid[:, 0], hw[1], ow, sampling_ratio)
    return wy, wx, _at_least(grid[:, 0] * grid[:, 1], 1.0)


def _align_level(
    xc: Any,
    rois: Any,
    scale: float,
    out: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    keep: Any = None,
    ps: bool = False,
) -> Any:
    """RoI Align of every box on one channels-last map ``xc``; boxes with ``keep`` False read nothing."""
    _, h, w, _ = xc.shape
    n = batch_size(xc)
    idx, valid = _image_of(rois, n)
    xy, valid = _scaled(rois, scale, valid, xc.dtype)
    if keep is not None:
        valid = valid & keep
    wy, wx, count = _align_weights(xy, out, (h, w), sampling_ratio, 0.5 if aligned else 0.0, not aligned)
    y = _linear_regions(xc, wy, wx, _onehot(idx, valid, n, xc.dtype), ps=ps)
    return y / count[:, None, None, None]


# --------------------------------------------------------------------------- quantized bins


def _round_half_away(v: Any) -> Any:
    """C's ``round`` (halves away from zero), as a float of the wide dtype."""
    v = ops.cast(v, _wide())
    r = ops.trunc(v)
    return ops.where(ops.greater_equal(ops.abs(v - r), 0.5), r + ops.sign(v), r)


def _pool_bins(start: Any, roi: Any, pooled: int, top: int, dtype: str) -> tuple[Any, Any]:
    """``[floor(p b), ceil((p+1) b)) + start`` clipped to ``[0, top]`` with ``b = roi / pooled`` in ``dtype``.

    ``start`` and ``roi`` are whole numbers in the wide dtype; the bounds come back as int32.
    """
    bin_ = ops.cast(roi, dtype) / float(pooled)
    edge = ops.arange(pooled + 1, dtype=dtype)[None, :] * bin_[:, None]
    wd = start.dtype
    lo = ops.clip(ops.cast(_floor(edge[:, :-1]), wd) + start[:, None], 0, top)
    hi = ops.clip(ops.cast(_ceil(edge[:, 1:]), wd) + start[:, None], 0, top)
    return ops.cast(lo, "int32"), ops.cast(hi, "int32")


def _range_weights(lo: Any, hi: Any, size: int, dtype: str) -> Any:
    """``(K, P, size)``: 1 on ``[lo, hi)``."""
    r = ops.arange(size, dtype="int32")[None, None, :]
    return ops.cast(ops.greater_equal(r, lo[..., None]) & ops.less(r, hi[..., None]), dtype)


def _quantized(op: str, x: Any, boxes: Any, output_size: Any, spatial_scale: Any, data_format: Any, ps: bool):
    """Shared setup of roi_pool and ps_roi_pool: the map, image index, validity and whole-pixel bins."""
    xc, cl, (h, w, c) = _feature_map(op, x, data_format)
    oh, ow = _output_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    if ps and c % (oh * ow):
        p = oh * ow
        raise PoolingInputError(
            f"{op}: the channel count C={c} must be a multiple of oh*ow = {p} (output_size={(oh, ow)}): each "
            f"output channel reads one group of {p} input channels. Use C = {(c // p + 1) * p} channels or "
            f"another output_size."
        )
    n = batch_size(xc)
    rois = _rois(op, boxes, n, xc.dtype)
    idx, valid = _image_of(rois, n)
    xy, valid = _scaled(rois, scale, valid, xc.dtype)
    qb = _round_half_away(xy)
    extra = 0.0 if ps else 1.0  # roi_pool's roi_w = x2 - x1 + 1; ps_roi_pool's x2 - x1
    top_h, top_w = (h - 1, w - 1) if ps else (h, w)
    ys, ye = _pool_bins(qb[:, 1], _at_least(qb[:, 3] - qb[:, 1] + extra, 1.0), oh, top_h, xc.dtype)
    xs, xe = _pool_bins(qb[:, 0], _at_least(qb[:, 2] - qb[:, 0] + extra, 1.0), ow, top_w, xc.dtype)
    ye = ops.where(valid[:, None], ye, ys)  # an unusable box has empty bins
    return xc, cl, n, idx, valid, (ys, ye, xs, xe), (oh, ow)


# --------------------------------------------------------------------------- RoI max


def _level(length: Any, size: int) -> Any:
    """``floor(log2(length))`` for int32 lengths in ``[1, size]`` (0 for shorter)."""
    lvl = ops.zeros_like(length)
    for t in range(1, size.bit_length()):
        lvl = lvl + ops.cast(ops.greater_equal(length, 1 << t), "int32")
    return lvl


def _first_max(v1: Any, a1: Any, v2: Any, a2: Any) -> tuple[Any, Any]:
    """The larger value and, on a tie, the smaller (row-major first) position."""
    first = ops.greater(v1, v2) | (ops.equal(v1, v2) & ops.less_equal(a1, a2))
    return ops.where(first, v1, v2), ops.where(first, a1, a2)


def _tables(v: Any, a: Any, la: int, lb: int) -> tuple[list[Any], list[Any]]:
    """Maxima and first positions of every ``2**a x 2**b`` block, table ``a * (lb + 1) + b``.

    Doubling along ``W`` keeps the left block on ties, along ``H`` the upper one: both come first in
    row-major order.
    """
    base = [(v, a)]
    for b in range(1, lb + 1):
        half = 1 << (b - 1)
        v, a = base[-1]
        m = v.shape[2] - half
        first = ops.greater_equal(v[:, :, :m], v[:, :, half:])
        base.append(
            (ops.where(first, v[:, :, :m], v[:, :, half:]), ops.where(first, a[:, :, :m], a[:, :, half:]))
        )
    tv: list[Any] = [None] * ((la + 1) * (lb + 1))
    ta: list[Any] = [None] * ((la + 1) * (lb + 1))
    for b in range(lb + 1):
        v, a = base[b]
        tv[b], ta[b] = v, a
        for lvl in range(1, la + 1):
            half = 1 << (lvl - 1)
            m = v.shape[1] - half
            first = ops.greater_equal(v[:, :m], v[:, half:])
            v, a = ops.where(first, v[:, :m], v[:, half:]), ops.where(first, a[:, :m], a[:, half:])
            tv[lvl * (lb + 1) + b], ta[lvl * (lb + 1) + b] = v, a
    return tv, ta


def _roi_max(x: Any, idx: Any, ys: Any, ye: Any, xs: Any, xe: Any) -> Any:
    """Bin maxima ``(K, P, Q, C)`` of the channels-last map ``x`` (module docstring: sparse tables).

    A bin holding only NaN or values ``<= -FLT_MAX`` gives ``-FLT_MAX``, an empty bin 0; the winner
    is gathered from ``x``, so the gradient reaches it alone.
    """
    _, h, w, c = x.shape
    la, lb = h.bit_length() - 1, w.bit_length() - 1
    sizes = [(h - (1 << a) + 1, w - (1 << b) + 1) for a in range(la + 1) for b in range(lb + 1)]
    offsets = np.cumsum([0] + [th * tw for th, tw in sizes])  # each image's tables, stored one after another
    total = int(offsets[-1])

    def const(values: Any) -> Any:
        return ops.convert_to_tensor(np.asarray(values, dtype=np.int32))

    ar, ac = _level(ops.maximum(ye - ys, 1), h), _level(ops.maximum(xe - xs, 1), w)
    t = ar[:, :, None] * (lb + 1) + ac[:, None, :]  # (K, P, Q): the table of each bin
    th, tw = ops.take(const([s[0] for s in sizes]), t), ops.take(const([s[1] for s in sizes]), t)
    zero = ops.zeros_like(t)
    r1, r2 = (
        ys[:, :, None] + zero,
        (ye - ops.take(const([1 << i for i in range(la + 1)]), ar))[:, :, None] + zero,
    )
    c1, c2 = (
        xs[:, None, :] + zero,
        (xe - ops.take(const([1 << i for i in range(lb + 1)]), ac))[:, None, :] + zero,
    )
    rows = ops.minimum(ops.maximum(ops.stack([r1, r1, r2, r2], axis=-1), 0), th[..., None] - 1)
    cols = ops.minimum(ops.maximum(ops.stack([c1, c2, c1, c2], axis=-1), 0), tw[..., None] - 1)
    base = idx[:, None, None] * total + ops.take(const(offsets[:-1]), t)
    where = ops.reshape(base[..., None] + rows * tw[..., None] + cols, (-1,))  # (K*P*Q*4,)
    p, q = ys.shape[1], xs.shape[1]
    xv = ops.stop_gradient(
        ops.where(ops.greater(x, -FLT_MAX), x, float("-inf"))
    )  # NaN, <= -FLT_MAX never win
    pos0 = ops.reshape(ops.arange(h * w, dtype="int32"), (1, h, w, 1))
    n_static = x.shape[0] if isinstance(x.shape[0], int) else 1
    step = max(1, _TABLE_ELEMENTS // max(total * n_static, 1))
    vals, args = [], []
    for c0 in range(0, c, step):
        v0 = xv[..., c0 : c0 + step]
        cc = v0.shape[-1]
        tv, ta = _tables(v0, pos0 + ops.zeros_like(v0, dtype="int32"), la, lb)
        flat_v = ops.reshape(
            ops.concatenate([ops.reshape(z, (-1, z.shape[1] * z.shape[2], cc)) for z in tv], 1), (-1, cc)
        )
        flat_a = ops.reshape(
            ops.concatenate([ops.reshape(z, (-1, z.shape[1] * z.shape[2], cc)) for z in ta], 1), (-1, cc)
        )
        gv = ops.reshape(ops.take(flat_v, where, axis=0), (-1, p, q, 4, cc))
        ga = ops.reshape(ops.take(flat_a, where, axis=0), (-1, p, q, 4, cc))
        v01, a01 = _first_max(gv[..., 0, :], ga[..., 0, :], gv[..., 1, :], ga[..., 1, :])
        v23, a23 = _first_max(gv[..., 2, :], ga[..., 2, :], gv[..., 3, :], ga[..., 3, :])
        vm, am = _first_max(v01, a01, v23, a23)
        vals.append(vm)
        args.append(am)
    m2 = vals[0] if len(vals) == 1 else ops.concatenate(vals, axis=-1)
    a2 = args[0] if len(args) == 1 else ops.concatenate(args, axis=-1)
    live = (ops.greater(ye, ys)[:, :, None] & ops.greater(xe, xs)[:, None, :])[..., None]  # (K, P, Q, 1)
    won = live & ops.greater(m2, float("-inf"))
    rows_x = ops.where(won, idx[:, None, None, None] * (h * w) + a2, ops.zeros_like(a2))
    picked = ops.take_along_axis(ops.reshape(x, (-1, c)), ops.reshape(rows_x, (-1, c)), axis=0)
    picked = ops.reshape(picked, (-1, p, q, c))
    lowest = ops.full_like(picked, -FLT_MAX)
    return ops.where(live, ops.where(won, picked, lowest), ops.zeros_like(picked))


# --------------------------------------------------------------------------- public functions


def _tensor(x: Any) -> Any:
    return ops.convert_to_tensor(x) if isinstance(x, (np.ndarray, list, tuple)) else x


@public
def roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "roi_pool",
) -> Any:
    """RoI max pooling (Girshick, "Fast R-CNN", 2015), as ``torchvision.ops.roi_pool``.

    Every rule is :func:`poolkit.ops.roi.roi_pool`'s (C's rounding of the box,
    bins of whole pixels clipped to the map, the running ``v > m`` from
    ``-FLT_MAX``: ties to the first pixel in row-major order, NaN never wins, a
    bin of only NaN or values ``<= -FLT_MAX`` gives ``-FLT_MAX``, an empty bin 0).
    The gradient goes to each bin's winning pixel (summed over the bins it wins).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import roi_pool
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> np.asarray(roi_pool(x, np.array([[0, 0.0, 0.0, 3.0, 3.0]]), 2, data_format="channels_last"))[..., 0]
    array([[[ 5.,  7.],
            [13., 15.]]])
    """
    x = _tensor(x)
    xc, cl, _, idx, _, (ys, ye, xs, xe), _ = _quantized(
        op, x, boxes, output_size, spatial_scale, data_format, False
    )
    return _to_user(_roi_max(xc, idx, ys, ye, xs, xe), cl, x.dtype)


@public
def roi_align(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "roi_align",
) -> Any:
    """RoI Align (He et al., "Mask R-CNN", 2017), as ``torchvision.ops.roi_align``.

    Every rule is :func:`poolkit.ops.roi.roi_align`'s (sample grid, bilinear
    edge rules, ``aligned``, the adaptive grid for ``sampling_ratio <= 0``, the
    divisor ``max(gh gw, 1)``; zero-weight pixels are not read). The adaptive
    grid is computed without a bound on the points per bin (module docstring).
    The gradient (for ``x``) is the transposed map, by contractions.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import roi_align
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> y = roi_align(x, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), 2, aligned=True, data_format="channels_last")
    >>> np.asarray(y)[..., 0]
    array([[[0., 1.],
            [4., 5.]]])
    """
    x = _tensor(x)
    xc, cl, _ = _feature_map(op, x, data_format)
    out = _output_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    aligned = check_bool(op, "aligned", aligned)
    rois = _rois(op, boxes, batch_size(xc), xc.dtype)
    return _to_user(_align_level(xc, rois, scale, out, sampling_ratio, aligned), cl, x.dtype)


@public
def ps_roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "ps_roi_pool",
) -> Any:
    """Position-sensitive RoI pooling (Dai et al., "R-FCN", 2016), as ``torchvision.ops.ps_roi_pool``.

    Bin ``(ph, pw)`` of output channel ``c`` averages input channel
    ``(c oh + ph) ow + pw`` over its whole pixels (bins clipped to
    ``[0, H - 1]``, as torchvision's forward); see
    :func:`poolkit.ops.ps_roi.ps_roi_pool`. The gradient is the exact one of
    this forward, as the reference's.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import ps_roi_pool
    >>> x = np.arange(4 * 16.0).reshape(1, 4, 4, 4)
    >>> y = ps_roi_pool(x, np.array([[0, 0.0, 0.0, 2.0, 2.0]]), 2, data_format="channels_first")
    >>> np.asarray(y)[0, 0]
    array([[ 0., 17.],
           [36., 53.]])
    """
    x = _tensor(x)
    xc, cl, n, idx, valid, (ys, ye, xs, xe), _ = _quantized(
        op, x, boxes, output_size, spatial_scale, data_format, True
    )
    _, h, w, _ = xc.shape
    wy, wx = _range_weights(ys, ye, h, xc.dtype), _range_weights(xs, xe, w, xc.dtype)
    y = _linear_regions(xc, wy, wx, _onehot(idx, valid, n, xc.dtype), ps=True)
    rows, cols = ops.maximum(ye - ys, 0), ops.maximum(xe - xs, 0)
    area = ops.maximum(rows[:, :, None] * cols[:, None, :], 1)
    return _to_user(y / ops.cast(area, xc.dtype)[..., None], cl, x.dtype)


@public
def ps_roi_align(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "ps_roi_align",
) -> Any:
    """Position-sensitive RoI Align, as ``torchvision.ops.ps_roi_align``.

    RoI Align with ``aligned=True`` and no minimum box size on R-FCN's channel
    groups; see :func:`poolkit.ops.ps_roi.ps_roi_align` (the divisor is
    ``max(gh gw, 1)``: a zero-size box with the adaptive grid gives 0 where
    torchvision gives NaN).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import ps_roi_align
    >>> x = np.arange(4 * 16.0).reshape(1, 4, 4, 4)
    >>> y = ps_roi_align(x, np.array([[0, 0.5, 0.5, 2.5, 2.5]]), 2, data_format="channels_first")
    >>> np.asarray(y)[0, 0]
    array([[ 2.5, 19.5],
           [38.5, 55.5]])
    """
    x = _tensor(x)
    xc, cl, (_, _, c) = _feature_map(op, x, data_format)
    out = _output_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    p = out[0] * out[1]
    if c % p:
        raise PoolingInputError(
            f"{op}: the channel count C={c} must be a multiple of oh*ow = {p} (output_size={out}): each "
            f"output channel reads one group of {p} input channels. Use C = {(c // p + 1) * p} channels or "
            f"another output_size."
        )
    rois = _rois(op, boxes, batch_size(xc), xc.dtype)
    return _to_user(_align_level(xc, rois, scale, out, sampling_ratio, True, ps=True), cl, x.dtype)


# --------------------------------------------------------------------------- multi-scale


def _image_height(op: str, image_sizes: Any, n: Any) -> int:
    """The largest image height; ``image_sizes`` holds one ``(height, width)`` per image, or one pair for all."""
    sizes = list(image_sizes) if isinstance(image_sizes, (list, tuple, np.ndarray)) else None
    if sizes is not None and len(sizes) == 2 and all(is_int(v) for v in sizes):
        sizes = [sizes]  # one (height, width) for every image (the batch size may be unknown)
    elif sizes is None or (isinstance(n, int) and len(sizes) != n):
        got = f"{len(sizes)} entries" if sizes is not None else type(image_sizes).__name__
        raise PoolingInputError(
            f"{op}: image_sizes must hold one (height, width) per image, {n} for these feature maps (or one "
            f"pair for all of them), got {got}."
        )
    for i, s in enumerate(sizes):
        if np.ndim(s) != 1 or len(s) != 2 or not all(is_int(v) and v >= 1 for v in s):
            raise PoolingInputError(
                f"{op}: image_sizes[{i}] must be a (height, width) pair of positive ints, got {s!r}."
            )
    return max(int(s[0]) for s in sizes)


def _levels(rois: Any, scales: list[float], s0: float, k0: int) -> Any:
    """Map index of each box (-1: none), torchvision's ``LevelMapper`` in the boxes' dtype."""
    k_min = int(-np.log2(np.float32(scales[0])))
    k_max = int(-np.log2(np.float32(scales[-1])))
    r = ops.stop_gradient(rois)
    area = (r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2])
    ok = ops.greater_equal(area, 0)  # False for a negative area and for NaN
    s = ops.sqrt(ops.where(ok, area, ops.zeros_like(area)))
    lvl = _floor(scalar(k0, s) + ops.log2(s / scalar(s0, s)) + scalar(1e-6, s))
    lvl = ops.cast(ops.clip(lvl, k_min, k_max), "int32") - k_min
    return ops.where(ok & ops.less(lvl, len(scales)), lvl, -1)


@public
def multiscale_roi_align(
    features: Any,
    boxes: Any,
    image_sizes: Any,
    output_size: Any,
    sampling_ratio: int = -1,
    *,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "multiscale_roi_align",
) -> Any:
    """RoI Align on the pyramid level that suits each box (FPN), as torchvision's ``MultiScaleRoIAlign``.

    ``features`` is a list (or dict, in insertion order) of maps, finest
    first; see :func:`poolkit.ops.multiscale.multiscale_roi_align` for the
    level and scale rules. ``image_sizes`` holds one static ``(height, width)``
    per image, or one pair for every image. Every box is computed on every map
    with its weights zeroed off its own level (static shapes).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import multiscale_roi_align
    >>> p2, p3 = np.ones((1, 64, 64, 1)), np.full((1, 32, 32, 1), 2.0)  # scales 1/4 and 1/8
    >>> boxes = [np.array([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 120.0, 120.0]])]  # levels 2 (clamped) and 3
    >>> y = multiscale_roi_align([p2, p3], boxes, [(256, 256)], 1, data_format="channels_last")
    >>> np.asarray(y)[:, 0, 0, 0]
    array([1., 2.])
    """
    maps = list(features.values()) if isinstance(features, Mapping) else features
    if not isinstance(maps, (list, tuple)) or not maps:
        raise PoolingInputError(
            f"{op}: features must be a non-empty list (or dict) of (N, C, H, W) feature maps, got "
            f"{type(features).__name__}{' (empty)' if isinstance(maps, (list, tuple)) else ''}."
        )
    maps = [_tensor(f) for f in maps]
    preps = [_feature_map(f"{op} (features[{i}])", f, data_format) for i, f in enumerate(maps)]
    n, c = maps[0].shape[0], preps[0][2][2]
    for i, (f, (_, _, hwc)) in enumerate(zip(maps, preps)):
        if (f.shape[0], hwc[2]) != (n, c):
            raise PoolingInputError(
                f"{op}: every feature map must have the same batch size and channel count as features[0], "
                f"(N, C) = {(n, c)}; features[{i}] has {(f.shape[0], hwc[2])}."
            )
    out = _output_size(op, output_size)
    sampling_ratio = check_int(op, "sampling_ratio", sampling_ratio)
    s0 = check_real(op, "canonical_scale", canonical_scale, low=0.0, low_inclusive=False)
    k0 = check_int(op, "canonical_level", canonical_level)
    image_height = _image_height(op, image_sizes, n)
    ct = preps[0][0].dtype
    rois = _rois(op, boxes, batch_size(preps[0][0]), ct)
    scales = [_scale(hwc[0], image_height) for _, _, hwc in preps]
    which = ops.zeros_like(rois[:, 0], dtype="int32") if len(preps) == 1 else _levels(rois, scales, s0, k0)
    y = None
    for lvl, ((xl, _, _), scale) in enumerate(zip(preps, scales)):
        keep = ops.equal(which, lvl)
        part = ops.cast(
            _align_level(xl, ops.cast(rois, xl.dtype), scale, out, sampling_ratio, False, keep), ct
        )
        y = part if y is None else y + part
    return _to_user(y, preps[0][1], maps[0].dtype)


# --------------------------------------------------------------------------- precise RoI pooling


def _tent_integrals(lo: Any, hi: Any, bins: int, size: int, live: Any) -> Any:
    """``(K, bins, size)``: the mean over each bin of the tent ``t(u - j)`` of every pixel ``j``.

    The reference's arithmetic; the clip, the absolute values and the ``min(va vb, 0)`` term are
    written with ``where`` and signs fixed on the side of the bin, so autodiff's derivative at a
    kink (an edge on a pixel coordinate) is the exact, continuous one on every backend.
    """
    t = lo.dtype
    one = ops.ones_like(lo)
    step = ops.where(live, (hi - lo) / float(bins), one)
    edges = lo[:, None] + ops.arange(bins + 1, dtype=t)[None, :] * step[:, None]
    u = edges[:, :, None] - ops.arange(size, dtype=t)[None, None, :]
    v = ops.where(ops.less(u, -1.0), -ops.ones_like(u), ops.where(ops.greater(u, 1.0), ops.ones_like(u), u))
    va, vb = v[:, :-1], v[:, 1:]
    sa = ops.where(ops.greater_equal(ops.stop_gradient(va), 0), 1.0, -1.0)  # |va|: the bin lies above va
    sb = ops.where(ops.greater(ops.stop_gradient(vb), 0), 1.0, -1.0)  # |vb|: the bin lies below vb
    prod = va * vb
    w = (vb - va) * (1.0 - 0.5 * (va * ops.cast(sa, t) + vb * ops.cast(sb, t)))
    w = w - ops.where(ops.less(ops.stop_gradient(prod), 0), prod, ops.zeros_like(prod))
    return w * ops.where(live, 1.0 / step, ops.zeros_like(step))[:, None, None]


@public
def precise_roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "precise_roi_pool",
) -> Any:
    """Precise RoI pooling (Jiang et al., ECCV 2018): the exact mean of the bilinear interpolant per bin.

    See :func:`poolkit.ops.precise_roi.precise_roi_pool` (no 0.5 offset, the
    full bin area as divisor, degenerate boxes output 0, the non-finite rule).
    Differentiable in ``x`` and in ``boxes`` (autodiff of the closed-form
    tent integrals: the reference's box gradient, continuous at the kinks; the
    batch-index column gets 0; a box whose support holds a non-finite value
    gets NaN). Weights are computed in float64 where the backend has it.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import precise_roi_pool
    >>> x = np.arange(12.0).reshape(1, 3, 4, 1)  # F[i, j] = 4 i + j
    >>> y = precise_roi_pool(x, np.array([[0, 0.0, 0.0, 3.0, 2.0]]), 2, data_format="channels_last")
    >>> np.asarray(y)[..., 0]
    array([[[2.75, 4.25],
            [6.75, 8.25]]])
    """
    x = _tensor(x)
    xc, cl, (h, w, _) = _feature_map(op, x, data_format)
    oh, ow = _output_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    n = batch_size(xc)
    rois = _rois(op, boxes, n, _wide())
    idx, valid = _image_of(rois, n)
    r = rois[:, 1:] * scalar(scale, rois)
    r = ops.where(valid[:, None], r, ops.zeros_like(r))
    live = ops.greater(r[:, 2], r[:, 0]) & ops.greater(r[:, 3], r[:, 1])
    wx = ops.cast(_tent_integrals(r[:, 0], r[:, 2], ow, w, live), xc.dtype)
    wy = ops.cast(_tent_integrals(r[:, 1], r[:, 3], oh, h, live), xc.dtype)
    y = _linear_regions(xc, wy, wx, _onehot(idx, valid, n, xc.dtype), box_grad=True)
    return _to_user(y, cl, x.dtype)
