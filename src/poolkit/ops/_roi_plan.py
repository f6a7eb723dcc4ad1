"""Sampling plans shared by the region operators (roi.py, ps_roi.py, multiscale.py).

A region operator is a sparse linear map (or a max) from input pixels to
output bins. Each bin ``(k, ph, pw)`` reads the Cartesian product of a list
of rows (from its ``(k, ph)``) and a list of columns (from its ``(k, pw)``):
an integer range for the quantized pools, the merged bilinear weights of the
sample points for the align variants (bilinear weights and torchvision's
validity test are separable in ``y`` and ``x``, so merging the samples per
axis gives the exact per-pixel weight of the bin).

The computation runs on a channels-last matrix of source rows ``(R, C)``:
gathers take whole rows (one box, one pixel, every channel), bins are
grouped by their entry count (padded to a few sizes) so each group is one
``(n, P, C)`` gather and one sequential reduction over ``P``, in cache-sized
chunks. The backward pass applies the transposed plan the same way: every
input row is written once, as a sum in a fixed order (deterministic, no
scatter conflicts).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PoolingInputError

# Gathers are processed in chunks of about this many elements.
CHUNK_ELEMENTS = 1 << 18
# torchvision casts scaled coordinates (and bin bounds) to 32-bit ints.
COORD_LIMIT = 2.0**31
FLT_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Axis:
    """For each ``(box, bin)`` along one axis: ``idx[ptr[i]:ptr[i+1]]`` ascending, weights ``w`` (None = 1)."""

    ptr: np.ndarray
    idx: np.ndarray
    w: np.ndarray | None


@dataclass(frozen=True)
class Plan:
    """Bin ``b`` reads rows ``rows[starts[b] : starts[b] + counts[b]]`` (weights ``w``, None = 1)."""

    counts: np.ndarray
    starts: np.ndarray
    rows: np.ndarray
    w: np.ndarray | None
    n_src: int


def scaled_boxes(op: str, rois: np.ndarray, scale: float, dtype: Any) -> np.ndarray:
    """``(K, 4)`` coordinates times ``spatial_scale``, in the compute dtype (torchvision's ``T``)."""
    t = np.dtype(dtype).type
    with np.errstate(over="ignore"):
        xy = rois[:, 1:] * t(scale)
    if xy.size and not (np.abs(xy) < COORD_LIMIT).all():
        raise PoolingInputError(
            f"{op}: box coordinates times spatial_scale must lie within +-2**31 (torchvision converts them "
            f"to 32-bit integers), got {float(np.abs(xy).max()):g}. Clip the boxes to the image first."
        )
    return xy


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's ``round``: halves go away from zero (NumPy's ``round`` goes to even)."""
    r = np.trunc(v)
    return (r + np.copysign(np.abs(v - r) >= 0.5, v)).astype(np.int64)


def _ranges(lo: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, value)`` of the concatenated ranges ``lo[i] + arange(n[i])``."""
    n = n.ravel()
    owner = np.repeat(np.arange(n.size), n)
    first = np.cumsum(n) - n
    return owner, lo.ravel()[owner] + (np.arange(owner.size) - first[owner])


def _ptr(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(counts.ravel()))).astype(np.intp)


def pool_axis(start: np.ndarray, roi: np.ndarray, pooled: int, top: int, dtype: Any) -> Axis:
    """Quantized bins: ``[floor(p b), ceil((p+1) b)) + start`` clipped to ``[0, top]``, ``b = roi / pooled``."""
    t = np.dtype(dtype).type
    bin_ = roi.astype(dtype) / t(pooled)
    p = np.arange(pooled + 1, dtype=dtype)
    edge = p[None, :] * bin_[:, None]
    lo = np.clip(np.floor(edge[:, :-1]).astype(np.int64) + start[:, None], 0, top)
    hi = np.clip(np.ceil(edge[:, 1:]).astype(np.int64) + start[:, None], 0, top)
    n = np.maximum(hi - lo, 0)
    return Axis(_ptr(n), _ranges(lo, n)[1], None)


def align_axis(
    start: np.ndarray, bin_: np.ndarray, grid: np.ndarray, size: int, pooled: int, dtype: Any
) -> Axis:
    """Merged bilinear weights of the samples ``y = start + p bin + ((i + .5) bin) / grid``, ``i < grid``.

    Follows torchvision's arithmetic in the compute dtype: a sample with
    ``y < -1`` or ``y > size`` is skipped, ``y <= 0`` is clamped to 0, and
    ``y_low >= size - 1`` reads row ``size - 1`` only. Only the samples that
    can land in ``[-1, size]`` are generated (a box far larger than the map
    costs no more than the map).
    """
    t = np.dtype(dtype).type
    k = start.shape[0]
    a = start[:, None] + np.arange(pooled, dtype=dtype)[None, :] * bin_[:, None]  # bin start (K, pooled)
    g = np.broadcast_to(grid[:, None], a.shape)
    a64, b64 = a.astype(np.float64), np.broadcast_to(bin_[:, None], a.shape).astype(np.float64)
    step = b64 / np.maximum(g, 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t1 = (-1.0 - a64) / step - 0.5
        t2 = (size - a64) / step - 0.5
        # The computed y may be off by a few ulps of its magnitude: widen the window to cover it.
        margin = 2.0 + np.ceil(
            8 * np.finfo(dtype).eps * (np.abs(a64) + np.abs(b64) + size + 1) / np.abs(step)
        )
        lo = np.floor(np.minimum(t1, t2)) - margin
        hi = np.ceil(np.maximum(t1, t2)) + margin
    exact = (step == 0) | ~np.isfinite(lo) | ~np.isfinite(hi)
    gmax = np.maximum(g - 1, -1).astype(np.float64)
    lo = np.where(exact, 0.0, np.clip(lo, 0.0, gmax + 1)).astype(np.int64)
    hi = np.where(exact, gmax, np.clip(hi, -1.0, gmax)).astype(np.int64)
    owner, i = _ranges(lo, np.maximum(hi - lo + 1, 0))
    box = owner // pooled
    half = (i.astype(np.float32) + np.float32(0.5)).astype(dtype)  # C's `iy + .5f`
    y = a.ravel()[owner] + half * bin_[box] / grid[box].astype(dtype)
    keep = (y >= -1.0) & (y <= size)
    owner, y = owner[keep], y[keep]
    y[y <= 0] = 0
    low = y.astype(np.int64)
    edge = low >= size - 1
    low[edge] = size - 1
    y[edge] = size - 1
    high = np.where(edge, low, low + 1)
    ly = y - low.astype(dtype)
    hy = t(1) - ly
    keys = np.concatenate((owner * size + low, owner * size + high))
    uk, inv = np.unique(keys, return_inverse=True)
    w = np.bincount(inv.ravel(), weights=np.concatenate((hy, ly)), minlength=uk.size)
    nz = w != 0
    uk, w = uk[nz], w[nz]
    counts = np.bincount(uk // size, minlength=k * pooled)
    return Axis(_ptr(counts), uk % size, w.astype(dtype))


def cartesian(
    ay: Axis, ax: Axis, image: np.ndarray, oh: int, ow: int, hw: tuple[int, int], n_src: int, ps: int = 0
) -> Plan:
    """The plan of bins ``(k, ph, pw)``: rows of ``(k, ph)`` x columns of ``(k, pw)``, row-major.

    Source row: ``image * H * W + r * W + c``; with ``ps`` (= ``N*H*W``) the
    bin's position ``ph * ow + pw`` selects a block of ``ps`` rows
    (position-sensitive channel groups).
    """
    k = image.shape[0]
    h, w = hw
    nr = np.diff(ay.ptr).reshape(k, oh, 1)
    nc = np.diff(ax.ptr).reshape(k, 1, ow)
    counts = (nr * nc).ravel()
    starts = np.cumsum(counts) - counts
    b, local = _ranges(np.zeros(counts.size, np.int64), counts)
    ncb = np.broadcast_to(nc, (k, oh, ow)).ravel()[b]
    i = local // np.maximum(ncb, 1)
    j = local - i * ncb
    box, ph, pw = b // (oh * ow), (b // ow) % oh, b % ow
    ri = ay.ptr[box * oh + ph] + i
    ci = ax.ptr[box * ow + pw] + j
    rows = image[box] * (h * w) + ay.idx[ri] * w + ax.idx[ci]
    if ps:
        rows += (ph * ow + pw) * ps
    weights = None if ay.w is None else ay.w[ri] * ax.w[ci]
    return Plan(counts, starts, rows.astype(np.intp), weights, n_src)


def _caps(counts: np.ndarray) -> np.ndarray:
    """Padded group sizes: exact up to 8, then 4 sizes per octave (<= 25% padding)."""
    cap = counts.copy()
    big = counts > 8
    if big.any():
        e = np.floor(np.log2(counts[big] - 1)).astype(np.int64)
        step = np.left_shift(1, e - 2)
        cap[big] = -(-counts[big] // step) * step
    return cap


def _groups(plan: Plan, width: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Chunks of bins with one padded size ``P``: ``(bins, entry positions (n, P), valid mask or None)``."""
    live = np.flatnonzero(plan.counts)
    if not live.size:
        return
    cap = _caps(plan.counts[live])
    order = np.argsort(cap, kind="stable")
    live, cap = live[order], cap[order]
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(cap)) + 1, [live.size]))
    for g0, g1 in zip(bounds[:-1], bounds[1:]):
        p = int(cap[g0])
        per = max(1, CHUNK_ELEMENTS // max(p * width, 1))
        jj = np.arange(p)
        for a in range(g0, g1, per):
            d = live[a : min(a + per, g1)]
            cnt = plan.counts[d]
            pos = plan.starts[d][:, None] + jj
            if (cnt == p).all():
                yield d, pos, None
            else:
                mask = jj < cnt[:, None]
                yield d, np.where(mask, pos, plan.starts[d][:, None]), mask


def _gather(src: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return src.take(rows.ravel(), axis=0).reshape(*rows.shape, src.shape[1])


def gather_sum(
    src: np.ndarray, plan: Plan, n_out: int, div: np.ndarray | None = None, dest: np.ndarray | None = None
) -> np.ndarray:
    """``out[b] = sum_e w_e src[rows_e] (/ div[b])`` in entry order; bins with no entry are 0.

    With ``dest``, bin ``b`` is written to row ``dest[b]`` of the ``(n_out, C)`` result.
    """
    out = np.zeros((n_out, src.shape[1]), dtype=src.dtype)
    for d, pos, mask in _groups(plan, src.shape[1]):
        v = _gather(src, plan.rows[pos])
        if mask is not None:
            v[~mask] = 0  # padding (never 0 * inf)
        if plan.w is not None:
            v *= plan.w[pos][:, :, None]
        s = v.sum(axis=1)
        out[d if dest is None else dest[d]] = s if div is None else s / div[d][:, None]
    return out


def gather_max(src: np.ndarray, plan: Plan, n_out: int, track: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """torchvision's roi_pool maximum: running ``v > m`` from ``m = -FLT_MAX`` (0 for an empty bin).

    NaN and values ``<= -FLT_MAX`` never win; a bin where nothing wins gives
    ``-FLT_MAX`` and no winner (-1). Ties go to the first entry (row-major).
    """
    lo = src.dtype.type(-FLT_MAX)
    out = np.zeros((n_out, src.shape[1]), dtype=src.dtype)
    win = np.full((n_out, src.shape[1]), -1, dtype=np.intp) if track else None
    for d, pos, mask in _groups(plan, src.shape[1]):
        rows = plan.rows[pos]
        v = _gather(src, rows)
        if mask is not None:
            v[~mask] = -np.inf  # padding never wins
        m = v.max(axis=1)
        redo = ~(m > lo)  # a NaN or only values <= -FLT_MAX: recompute these bins without them
        if redo.any():
            sub = np.flatnonzero(redo.any(axis=1))
            vs = v[sub]
            vs[~(vs > lo)] = -np.inf
            v[sub] = vs
            m[sub] = vs.max(axis=1)
        has = m > lo
        out[d] = np.where(has, m, lo)
        if win is not None:
            # First maximum along the entries: largest priority P - p among the equal ones.
            p = pos.shape[1]
            prio = np.arange(p, 0, -1, dtype=np.min_scalar_type(p))[None, :, None]
            first = p - ((v == m[:, None, :]) * prio).max(axis=1)
            win[d] = np.where(has, rows[np.arange(len(d))[:, None], first], -1)
    return out, win


def scatter_sum(plan: Plan, g: np.ndarray) -> np.ndarray:
    """The transposed plan: ``gx[r] = sum over entries e reading r of w_e g[bin_e]`` (in entry order).

    Each source row is written once, from the entries that read it (a stable
    sort groups them), so the sums are deterministic.
    """
    order = np.argsort(plan.rows, kind="stable")
    rows = plan.rows[order]
    first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1]))) if rows.size else rows
    counts = np.diff(np.concatenate((first, [rows.size])))
    bins = np.repeat(np.arange(plan.counts.size), plan.counts)[order]
    back = Plan(counts, first, bins, None if plan.w is None else plan.w[order], plan.counts.size)
    return gather_sum(g, back, plan.n_src, dest=rows[first])


def scatter_winners(
    win: np.ndarray, g: np.ndarray, image: np.ndarray, shape_cf: tuple[int, ...], channels_last: bool
) -> np.ndarray:
    """``gx[winner, c] += g[b, c]`` for every bin with a winner, in bin order, in the user's layout.

    ``image`` is the image of each bin (the winner rows are ``image * H * W + pixel``).
    """
    n, c, h, w = shape_cf
    if channels_last:
        flat = win * c + np.arange(c)
    else:  # (image * C + channel) * H * W + pixel
        flat = win + (image[:, None] * (c - 1) + np.arange(c)) * (h * w)
    ok = win >= 0
    if not ok.all():  # no winner: nothing flows (an exact 0 added to element 0)
        flat = np.where(ok, flat, 0)
        g = np.where(ok, g, 0)
    gx = np.zeros(n * c * h * w, dtype=g.dtype)
    np.add.at(gx, flat.ravel(), g.ravel())
    return gx.reshape((n, h, w, c) if channels_last else shape_cf)


def source_rows(x_cf: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` (any memory layout) as channels-last rows ``(N*H*W, C)``."""
    return np.ascontiguousarray(np.moveaxis(x_cf, 1, -1)).reshape(-1, x_cf.shape[1])


def ps_source_rows(x_cf: np.ndarray, groups: int) -> np.ndarray:
    """Position-sensitive rows ``(groups*N*H*W, C/groups)``: channel ``c_out*groups + g`` -> block ``g``."""
    n, c, h, w = x_cf.shape
    v = x_cf.reshape(n, c // groups, groups, h, w).transpose(2, 0, 3, 4, 1)
    return np.ascontiguousarray(v).reshape(-1, c // groups)


def rows_to_input(
    gx: np.ndarray, shape_cf: tuple[int, ...], channels_last: bool, groups: int = 0
) -> np.ndarray:
    """Inverse of :func:`source_rows` / :func:`ps_source_rows`, in the user's layout."""
    n, c, h, w = shape_cf
    if groups:
        v = gx.reshape(groups, n, h, w, c // groups)
        v = v.transpose(1, 2, 3, 4, 0) if channels_last else v.transpose(1, 4, 0, 2, 3)
        return np.ascontiguousarray(v).reshape((n, h, w, c) if channels_last else shape_cf)
    v = gx.reshape(n, h, w, c)
    return v if channels_last else np.ascontiguousarray(v.transpose(0, 3, 1, 2))


def bins_to_output(y: np.ndarray, k: int, oh: int, ow: int, channels_last: bool) -> np.ndarray:
    """``(K*oh*ow, C)`` bins as ``(K, C, oh, ow)`` (channels_last: ``(K, oh, ow, C)``)."""
    v = y.reshape(k, oh, ow, y.shape[1])
    return v if channels_last else np.ascontiguousarray(v.transpose(0, 3, 1, 2))


def output_grad(
    op: str, grad: Any, k: int, c: int, oh: int, ow: int, channels_last: bool, dtype: Any
) -> np.ndarray:
    """An upstream gradient in the output's layout as ``(K*oh*ow, C)`` rows in the compute dtype."""
    g = np.asarray(grad)
    want = (k, oh, ow, c) if channels_last else (k, c, oh, ow)
    if g.shape != want:
        raise PoolingInputError(
            f"{op}: grad_output must have shape {want} (the shape of the output), got {g.shape}."
        )
    if not channels_last:
        g = g.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(g, dtype=dtype).reshape(-1, c)
