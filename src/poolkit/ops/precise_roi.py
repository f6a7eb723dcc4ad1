"""Precise RoI pooling: the exact mean of the bilinear interpolant over each bin (PrRoI pooling)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PoolingInputError
from ._api import define
from ._boxes import as_rois, pooled_size, spatial_scale_of, split_rois
from ._input import Batch, check_grad, prepare

__all__ = ["precise_roi_pool", "precise_roi_pool2d"]

# Boxes are processed in chunks whose largest intermediate (before cropping) holds about this many
# elements. Small chunks crop tightly to their boxes; measured fastest from 2**16 to 2**17.
_CHUNK_ELEMENTS = 1 << 17


def precise_roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    r"""Precise RoI pooling: the exact mean of the bilinear interpolant over each bin.

    PrRoI pooling (Jiang et al., "Acquisition of Localization Confidence for
    Accurate Object Detection", ECCV 2018; reference: vacancy/PreciseRoIPooling,
    CUDA only). Each bin's value is the integral of the continuous bilinear
    interpolant ``f`` of the feature map divided by the bin's area, with no
    sampling grid, so the output and its gradient with respect to the box
    coordinates are continuous.

    Parameters
    ----------
    x : array_like, float
        ``(N, C, H, W)`` (channels_last: ``(N, H, W, C)``).
    boxes : array_like or list of array_like
        torchvision's formats: a ``(K, 5)`` array of
        ``(batch_index, x1, y1, x2, y2)``, or a list with one ``(L_i, 4)``
        array of ``(x1, y1, x2, y2)`` per image (image ``i`` gets index ``i``).
    output_size : int or (int, int)
        ``(oh, ow)`` bins per box; an int means square.
    spatial_scale : float
        Multiplies every box coordinate (e.g. ``1/16`` for a stride-16 map).
    data_format : {"channels_first", "channels_last"}

    Returns
    -------
    ndarray
        ``(K, C, oh, ow)`` (channels_last: ``(K, oh, ow, C)``), in ``x``'s dtype.

    Notes
    -----
    Interpolant: with the tent ``t(u) = max(0, 1 - |u|)``,

    .. math:: f(x, y) = \sum_{i=0}^{H-1} \sum_{j=0}^{W-1} F_{ij}\, t(x - j)\, t(y - i),

    so pixel ``(i, j)`` sits at the point ``(x, y) = (j, i)`` and ``f`` falls
    linearly to 0 over the one pixel beyond the border and is 0 further out.

    Coordinates: a box maps to ``[s x1, s x2] x [s y1, s y2]`` with
    ``s = spatial_scale`` and **no 0.5 offset** (as in the reference; the
    box ``(0, 0, W-1, H-1)`` spans the first to the last pixel centre). The
    box is split into ``oh x ow`` equal bins of size ``bh = s (y2-y1)/oh``,
    ``bw = s (x2-x1)/ow``; bin ``(ph, pw)`` is
    ``[X_pw, X_pw+1) x [Y_ph, Y_ph+1)`` with ``X_p = s x1 + p bw`` (the
    [L, R) convention: neighbouring bins share an edge of measure zero).

    Output (PrPool):

    .. math:: y_{k,c,ph,pw} = \frac{1}{bw\, bh} \int_{Y_{ph}}^{Y_{ph+1}}
              \int_{X_{pw}}^{X_{pw+1}} f_c(x, y)\, dx\, dy
              = \sum_{i,j} F_{c,ij}\, A_{ph,i}\, B_{pw,j},

    separable, with ``B_{p,j} = (T(X_{p+1} - j) - T(X_p - j)) / bw`` and
    ``T`` the antiderivative of the tent: ``0`` for ``u <= -1``,
    ``(1+u)^2/2`` on ``[-1, 0]``, ``1 - (1-u)^2/2`` on ``[0, 1]``, ``1``
    for ``u >= 1`` (a piecewise quadratic; ``A`` likewise along ``y``).
    The divisor is always the full bin area: parts of a bin outside the map
    count as zeros, and a box entirely outside gives 0.

    Gradients (:func:`poolkit.ops.vjp` returns ``"x"`` and ``"boxes"``):
    ``dy/dF_{ij} = A_{ph,i} B_{pw,j}``;
    ``dB_{p,j}/dX_q = (t(X_q - j) [q = p+1] - t(X_q - j) [q = p]) / bw`` and
    ``dB/dbw = -B/bw``, chained through ``X_q = s x1 + q s (x2 - x1)/ow``
    to ``x1`` and ``x2`` (same along ``y``). ``t`` is continuous, so the box
    gradient is continuous in the coordinates, including when an edge
    crosses a pixel coordinate. The batch-index column gets 0; the box
    gradient comes back in the format, shape and (floating) dtype the boxes
    were given in.

    Degenerate boxes: if ``x2 <= x1`` or ``y2 <= y1`` (zero or negative
    width or height), every bin of the box outputs 0 and passes no gradient
    to ``x`` or to the box, as in the reference (which clamps the size to 0
    and outputs 0 when the bin area is 0). The output therefore jumps from
    the bilinear value to 0 as a box collapses to a point.

    Non-finite ``x``: a bin is NaN if a NaN (or both ``+inf`` and ``-inf``)
    lies where its weight ``A B`` is positive, ``+-inf`` if only infinities
    of one sign do; values outside a bin's support never reach it. The box
    gradient of a box touching a non-finite value is NaN; the gradient for
    ``x`` is unaffected (it does not depend on ``x``).

    Precision: weights are computed in float64 from the float64 boxes and
    cast to the compute dtype (float16 input is computed in float32).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.precise_roi import precise_roi_pool
    >>> x = np.arange(12.0).reshape(1, 1, 3, 4)  # F[i, j] = 4 i + j, so f(x, y) = x + 4 y inside
    >>> precise_roi_pool(x, np.array([[0, 0.0, 0.0, 3.0, 2.0]]), 2)
    array([[[[2.75, 4.25],
             [6.75, 8.25]]]])
    >>> precise_roi_pool(x, [np.array([[0.0, 0.0, 1.0, 1.0]])], 1)  # one pixel cell: mean of 4 corners
    array([[[[2.5]]]])
    >>> from poolkit.ops import vjp
    >>> y, pullback = vjp("precise_roi_pool", x, np.array([[0, 0.0, 0.0, 3.0, 2.0]]), output_size=1)
    >>> pullback(np.ones_like(y))["boxes"]  # d mean / d (x1, y1, x2, y2) = (1/2, 2, 1/2, 2) for x + 4 y
    array([[0. , 0.5, 2. , 0.5, 2. ]])
    """
    return _precise_roi_pool(x, boxes, output_size, spatial_scale, data_format=data_format)[0]


@dataclass(frozen=True)
class _Axis:
    """Per-box 1-D integral weights along one axis (float64)."""

    w: np.ndarray  # (K, bins, size): mean of the tent of each pixel over each bin
    av: np.ndarray  # (K, bins + 1, size): |edge - pixel| clipped to 1, so t = 1 - av
    scale: np.ndarray  # (K,): 1 / bin length (0 for degenerate boxes)
    bin: np.ndarray  # (K,): bin length (1 for degenerate boxes)


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    ay: _Axis
    ax: _Axis
    live: np.ndarray  # (K,) box has positive width and height
    bad: np.ndarray  # (K,) box support touches a non-finite value of x
    groups: tuple[tuple[int, tuple[_Chunk, ...]], ...]  # (image, its chunks)
    scale: float
    as_list: bool
    counts: tuple[int, ...]
    box_dtypes: tuple[np.dtype, ...]
    out_shape: tuple[int, ...]


def _axis(lo: np.ndarray, hi: np.ndarray, bins: int, size: int, live: np.ndarray) -> _Axis:
    length = hi - lo
    step = np.where(live, length / bins, 1.0)
    edges = lo[:, None] + np.arange(bins + 1) * step[:, None]  # (K, bins + 1)
    v = edges[:, :, None] - np.arange(size, dtype=np.float64)  # edge relative to each pixel
    np.clip(v, -1.0, 1.0, out=v)  # the tent's support: t(u) = 1 - |clip(u)|
    va, vb = v[:, :-1], v[:, 1:]
    av = np.abs(v)
    # Integral of 1 - |u| over [va, vb] is d - (vb|vb| - va|va|)/2 with d = vb - va; written as
    # d (1 - (|va| + |vb|)/2) - min(va vb, 0) it has no cancellation, so tiny bins keep full precision.
    w = (vb - va) * (1.0 - 0.5 * (av[:, :-1] + av[:, 1:]))
    w -= np.minimum(va * vb, 0.0)
    scale = live / step
    w *= scale[:, None, None]
    return _Axis(w, av, scale, step)


@dataclass(frozen=True)
class _Chunk:
    """Boxes of one image processed together, and the rows and columns their weights reach."""

    sel: np.ndarray
    rows: slice
    cols: slice


def _span(w: np.ndarray) -> slice:
    hit = np.flatnonzero(w.any(axis=(0, 1)))
    return slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0)


def _groups(
    index: np.ndarray, centre: np.ndarray, per_box: int, ay: _Axis, ax: _Axis
) -> tuple[tuple[int, tuple[_Chunk, ...]], ...]:
    """Boxes grouped by image and sorted by vertical centre (so that a chunk's boxes share rows), in
    chunks that bound the intermediates; each chunk reads only the rows and columns its weights reach."""
    chunk = max(1, _CHUNK_ELEMENTS // max(per_box, 1))
    order = np.lexsort((centre, index))
    images, starts = np.unique(index[order], return_index=True)
    bounds = [*starts.tolist(), len(order)]
    out = []
    for n, s, e in zip(images.tolist(), bounds[:-1], bounds[1:]):
        sels = (order[c : min(c + chunk, e)] for c in range(s, e, chunk))
        out.append((int(n), tuple(_Chunk(sel, _span(ay.w[sel]), _span(ax.w[sel])) for sel in sels)))
    return tuple(out)


def _contract(wy: np.ndarray, wx: np.ndarray, ft: np.ndarray) -> np.ndarray:
    """``sum_{i,j} ft[i, j, c] wy[k, p, i] wx[k, q, j]`` -> ``(k, p, q, c)``."""
    kc, oh, h = wy.shape
    _, w, c = ft.shape
    z = (wy.reshape(kc * oh, h) @ ft.reshape(h, w * c)).reshape(kc, oh, w, c)
    return np.matmul(wx[:, None], z)


def _image(batch: Batch, n: int) -> np.ndarray:
    """Image ``n`` as a contiguous ``(H, W, C)`` array (a view for channels_last input)."""
    return np.ascontiguousarray(np.moveaxis(batch.x[n], 0, -1))


def _precise_roi_pool(
    x: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "precise_roi_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    if np.ndim(x) != 4:
        layout = "(N, H, W, C)" if data_format == "channels_last" else "(N, C, H, W)"
        raise PoolingInputError(
            f"{op} expects a 4-D array shaped {layout}, got shape {np.shape(x)}. "
            "Add a batch axis with x[None] for a single image."
        )
    batch = prepare(x, op=op, nd=2, data_format=data_format, accumulate=True, allow_unbatched=False)
    oh, ow = pooled_size(op, output_size)
    scale = spatial_scale_of(op, spatial_scale)
    n_img, c, h, w = batch.x.shape
    rois, as_list = as_rois(op, boxes, n_img)
    k = len(rois)
    r = rois[:, 1:] * scale
    live = (r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])
    ax = _axis(r[:, 0], r[:, 2], ow, w, live)
    ay = _axis(r[:, 1], r[:, 3], oh, h, live)
    groups = _groups(rois[:, 0].astype(np.intp), r[:, 1] + r[:, 3], c * max(oh * w, h * ow, oh * ow), ay, ax)
    cdt = batch.x.dtype
    y = batch.empty((k, c, oh, ow))
    bad = np.zeros(k, dtype=bool)
    for n, chunks in groups:
        ft = _image(batch, n)
        finite = np.isfinite(ft)
        clean = finite.all()
        for ch in chunks:
            sel, rs, cs = ch.sel, ch.rows, ch.cols
            if rs.stop == rs.start or cs.stop == cs.start:  # no weight on the map: all zeros
                y[sel] = 0
                continue
            wy, wx = ay.w[sel][:, :, rs].astype(cdt), ax.w[sel][:, :, cs].astype(cdt)
            if clean:
                yk = _contract(wy, wx, np.ascontiguousarray(ft[rs, cs]))
            else:
                yk, bad[sel] = _nonfinite(wy, wx, np.ascontiguousarray(ft[rs, cs]), finite[rs, cs])
            y[sel] = yk.transpose(0, 3, 1, 2)
    ctx = None
    if need_ctx:
        counts = tuple(len(b) for b in boxes) if as_list else ()
        parts = boxes if as_list else [boxes]
        dtypes = tuple(np.asarray(b).dtype for b in parts)
        dtypes = tuple(d if np.issubdtype(d, np.floating) else np.dtype(np.float64) for d in dtypes)
        ctx = _Ctx(batch, ay, ax, live, bad, groups, scale, as_list, counts, dtypes, (k, c, oh, ow))
    return batch.to_user(y), ctx


def _nonfinite(
    wy: np.ndarray, wx: np.ndarray, ft: np.ndarray, finite: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Contract with non-finite values applied only where a bin's weight is positive.

    A dense contraction would spread ``0 * nan`` to every bin of the image.
    """
    yk = _contract(wy, wx, np.where(finite, ft, 0))
    sy, sx = (wy > 0).astype(ft.dtype), (wx > 0).astype(ft.dtype)
    n_nan = _contract(sy, sx, np.isnan(ft).astype(ft.dtype)) > 0
    n_pos = _contract(sy, sx, np.isposinf(ft).astype(ft.dtype)) > 0
    n_neg = _contract(sy, sx, np.isneginf(ft).astype(ft.dtype)) > 0
    yk[n_pos] = np.inf
    yk[n_neg] = -np.inf
    yk[n_nan | (n_pos & n_neg)] = np.nan
    touched = (n_nan | n_pos | n_neg).reshape(len(yk), -1).any(axis=1)
    return yk, touched


def _edge_grads(axis: _Axis, gw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d loss / d (lo, hi) of one axis from ``gw = d loss / d w`` (chain through edges and bin)."""
    bins = gw.shape[1]
    tent = 1.0 - axis.av  # t(edge - pixel)
    # Edge q is the upper end of bin q - 1 and the lower end of bin q.
    d_edge = np.zeros(axis.av.shape[:2])
    d_edge[:, 1:] += np.einsum("kps,kps->kp", gw, tent[:, 1:])
    d_edge[:, :-1] -= np.einsum("kps,kps->kp", gw, tent[:, :-1])
    d_edge *= axis.scale[:, None]
    d_bin = -np.einsum("kps,kps->k", gw, axis.w) / axis.bin
    q = np.arange(bins + 1) / bins
    d_lo = (d_edge * (1.0 - q)).sum(axis=1) - d_bin / bins
    d_hi = (d_edge * q).sum(axis=1) + d_bin / bins
    return d_lo, d_hi


def _precise_roi_backward(ctx: _Ctx, grad_output: Any) -> dict[str, Any]:
    batch = ctx.batch
    k, c, oh, ow = ctx.out_shape
    n_img, _, h, w = batch.x.shape
    cdt = batch.x.dtype
    g = check_grad(batch, grad_output, ctx.out_shape).astype(cdt, copy=False)
    gx = batch.zeros(batch.x.shape)
    gwy = np.zeros((k, oh, h))
    gwx = np.zeros((k, ow, w))
    for n, chunks in ctx.groups:
        ft = _image(batch, n)
        if not np.isfinite(ft).all():
            ft = np.where(np.isfinite(ft), ft, 0)  # boxes touching these get NaN below
        acc = np.zeros((h, w, c), dtype=cdt)
        for ch in chunks:
            sel, rs, cs = ch.sel, ch.rows, ch.cols
            kc, hr, wc = len(sel), rs.stop - rs.start, cs.stop - cs.start
            if hr == 0 or wc == 0:
                continue
            wy, wx = ctx.ay.w[sel][:, :, rs].astype(cdt), ctx.ax.w[sel][:, :, cs].astype(cdt)
            crop = np.ascontiguousarray(ft[rs, cs])
            gk = np.ascontiguousarray(g[sel].transpose(0, 2, 3, 1))  # (kc, oh, ow, C)
            u = np.matmul(wx.transpose(0, 2, 1)[:, None], gk).reshape(kc * oh, wc * c)  # sum over pw
            acc[rs, cs] += (wy.reshape(kc * oh, hr).T @ u).reshape(hr, wc, c)
            # Weight gradients off the crop meet zero weights and zero tents: leaving them 0 is exact.
            gwy[sel, :, rs] = (u @ crop.reshape(hr, wc * c).T).reshape(kc, oh, hr)
            v = np.matmul(wy.transpose(0, 2, 1), gk.reshape(kc, oh, ow * c))  # sum over ph
            v = v.reshape(kc, hr, ow, c).transpose(0, 2, 1, 3).reshape(kc * ow, hr * c)
            gwx[sel, :, cs] = (v @ crop.transpose(0, 2, 1).reshape(hr * c, wc)).reshape(kc, ow, wc)
        gx[n] = np.moveaxis(acc, -1, 0)
    groi = np.zeros((k, 5))
    groi[:, 1], groi[:, 3] = _edge_grads(ctx.ax, gwx)
    groi[:, 2], groi[:, 4] = _edge_grads(ctx.ay, gwy)
    groi[:, 1:] *= ctx.scale * ctx.live[:, None]
    groi[ctx.bad & ctx.live, 1:] = np.nan
    gb = split_rois(groi, ctx.as_list, ctx.counts)
    if ctx.as_list:
        gb = [part.astype(dt) for part, dt in zip(gb, ctx.box_dtypes)]
    else:
        gb = gb.astype(ctx.box_dtypes[0])
    return {"x": batch.to_user(gx), "boxes": gb}


def _example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    boxes = np.array(
        [
            [0, 0.5, 1.0, w - 2.5, h - 2.0],
            [n - 1, -1.0, 0.25, w / 2 + 0.3, h + 0.5],  # partly outside the map
        ]
    )
    return (x, boxes), {"output_size": (2, 3), "spatial_scale": 1.0}


_aliases = define(
    precise_roi_pool,
    _precise_roi_pool,
    _precise_roi_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    ndims=(2,),
    differentiable=("x", "boxes"),
    example=_example,
)
precise_roi_pool2d = _aliases["precise_roi_pool2d"]
