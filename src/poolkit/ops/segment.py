"""Pooling over sets: rows of ``x`` grouped by a segment index (graph readout, set aggregation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_choice, check_int, check_real
from ..errors import PoolingInputError
from ._api import define
from ._input import check_float

__all__ = ["segment_pool"]

MODES = ("sum", "mean", "max", "softmax", "power_mean")


def segment_pool(
    x: Any,
    batch: Any,
    num_segments: int | None = None,
    mode: str = "sum",
    *,
    t: Any = 1.0,
    p: Any = 1.0,
    eps: float = 1e-6,
) -> np.ndarray:
    """Pool the rows of ``x`` that share a segment id: ``(num_items, *F) -> (num_segments, *F)``.

    The building block of graph readouts (PyG's ``global_*_pool``) and set
    aggregations.

    Parameters
    ----------
    x : array_like, float
        ``(num_items, *features)``.
    batch : array_like of int
        ``(num_items,)``: the segment of each row, ``0 <= batch < num_segments``,
        in any order.
    num_segments : int, optional
        Number of output rows; default ``batch.max() + 1``. Pass it whenever
        trailing segments may be empty: they then get a row of zeros (PyG's
        ``global_add_pool`` silently drops an empty last graph, pyg#2895).
    mode : {"sum", "mean", "max", "softmax", "power_mean"}
        ``sum``: ``sum x``; ``mean``: ``sum x / n``; ``max``: elementwise
        maximum; ``softmax``: ``sum_i softmax(t x)_i x_i`` per feature (PyG's
        ``SoftmaxAggregation``), computed with the segment maximum subtracted;
        ``power_mean``: ``((1/n) sum max(x, eps)^p)^(1/p)`` (GeM over a set).
    t, p : float or array
        Temperature (softmax) and power (power_mean): a scalar or one value
        per feature (shape ``F``); both differentiable.

    Notes
    -----
    An empty segment gives 0 in every mode, with zero gradient. ``max``
    sends the gradient to the first maximum in item order (a NaN wins, and
    the last NaN is reported, as in max pooling). Items may come in any
    order; results are deterministic (sums run in item order).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import segment_pool
    >>> x = np.array([[1.0], [2.0], [4.0]])
    >>> segment_pool(x, [0, 0, 2], num_segments=4, mode="mean")
    array([[1.5],
           [0. ],
           [4. ],
           [0. ]])
    """
    return _segment_pool(x, batch, num_segments, mode, t=t, p=p, eps=eps)[0]


@dataclass(frozen=True)
class _Ctx:
    mode: str
    x: np.ndarray
    y: np.ndarray
    seg: np.ndarray  # segment of each item
    counts: np.ndarray
    dtype: np.dtype
    extra: Any  # mode-specific saved arrays
    param: np.ndarray | None
    param_shape: tuple[int, ...]


def _param(op: str, name: str, value: Any, feat: tuple[int, ...], positive: bool) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        check_real(op, name, float(a), low=0.0 if positive else None, low_inclusive=not positive)
    elif a.shape != feat:
        raise PoolingInputError(
            f"{op}: {name} must be a scalar or have the feature shape {feat}, got shape {a.shape}."
        )
    elif not np.isfinite(a).all() or (positive and (a <= 0).any()):
        raise PoolingInputError(
            f"{op}: every {name} must be finite{' and > 0' if positive else ''}, got {a}."
        )
    return a


def _sum_by(seg: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """``out[s] = sum of v[i] with seg[i] == s`` in item order."""
    out = np.zeros((n, *v.shape[1:]), dtype=v.dtype)
    np.add.at(out, seg, v)
    return out


def _segment_pool(
    x: Any,
    batch: Any,
    num_segments: int | None = None,
    mode: str = "sum",
    *,
    t: Any = 1.0,
    p: Any = 1.0,
    eps: float = 1e-6,
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "segment_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    mode = check_choice(op, "mode", mode, MODES)
    x = np.asarray(x)
    check_float(op, x)
    if x.ndim < 1:
        raise PoolingInputError(f"{op} expects x shaped (num_items, *features), got a scalar.")
    seg = np.asarray(batch)
    if (
        seg.ndim != 1
        or seg.shape[0] != x.shape[0]
        or not (seg.size == 0 or np.issubdtype(seg.dtype, np.integer))
    ):
        raise PoolingInputError(
            f"{op}: batch must be a 1-D integer array with one segment id per row of x ({x.shape[0]}), got "
            f"shape {seg.shape} and dtype {seg.dtype}."
        )
    seg = seg.astype(np.intp)
    if seg.size and seg.min() < 0:
        raise PoolingInputError(f"{op}: segment ids must be >= 0, got {int(seg.min())}.")
    top = int(seg.max()) + 1 if seg.size else 0
    if num_segments is None:
        n = top
    else:
        n = check_int(op, "num_segments", num_segments, 0)
        if n < top:
            raise PoolingInputError(
                f"{op}: num_segments={n} but batch holds segment id {top - 1}. Pass at least {top}."
            )
    dtype = x.dtype
    xc = x.astype(np.float32) if dtype == np.float16 else x
    feat = tuple(x.shape[1:])
    counts = np.bincount(seg, minlength=n)
    shape_n = (n, *[1] * len(feat))
    nonempty = (counts > 0).reshape(shape_n)
    param = None
    extra: Any = None
    if mode == "sum":
        y = _sum_by(seg, xc, n)
    elif mode == "mean":
        y = _sum_by(seg, xc, n) / np.maximum(counts, 1).reshape(shape_n).astype(xc.dtype)
    elif mode == "max":
        y = np.full((n, *feat), -np.inf, dtype=xc.dtype)
        np.maximum.at(y, seg, xc)
        y = np.where(nonempty, y, 0)  # (num_segments, *F): small
    elif mode == "softmax":
        param = _param(op, "t", t, feat, False)
        tx = xc * param.astype(xc.dtype)
        m = np.full((n, *feat), -np.inf, dtype=xc.dtype)
        np.maximum.at(m, seg, tx)
        m = np.where(np.isfinite(m), m, 0)
        e = np.exp(tx - m[seg])
        s = _sum_by(seg, e, n)
        w = e / np.where(s > 0, s, 1)[seg]
        y = _sum_by(seg, w * xc, n)
        extra = w
    else:
        param = _param(op, "p", p, feat, True)
        eps = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
        pp = param.astype(xc.dtype)
        xe = np.maximum(xc, xc.dtype.type(eps))
        mean = _sum_by(seg, xe**pp, n) / np.maximum(counts, 1).reshape(shape_n).astype(xc.dtype)
        y = np.where(nonempty, mean, 1) ** (1 / pp) * nonempty
        extra = (xe, mean)
    ctx = (
        _Ctx(mode, xc, y, seg, counts, dtype, extra, param, np.shape(t if mode == "softmax" else p))
        if need_ctx
        else None
    )
    return y.astype(dtype, copy=False), ctx


def _segment_backward(ctx: _Ctx, grad_output: Any) -> dict[str, Any]:
    g = np.asarray(grad_output, dtype=ctx.x.dtype)
    if g.shape != ctx.y.shape:
        raise PoolingInputError(f"segment_pool: grad_output must have shape {ctx.y.shape}, got {g.shape}.")
    seg, x, y = ctx.seg, ctx.x, ctx.y
    n = y.shape[0]
    shape_n = (n, *[1] * (x.ndim - 1))
    out: dict[str, Any] = {}
    if ctx.mode == "sum":
        gx = g[seg]
    elif ctx.mode == "mean":
        gx = (g / np.maximum(ctx.counts, 1).reshape(shape_n))[seg]
    elif ctx.mode == "max":
        # The first maximum in item order wins; where the segment holds a NaN, the last NaN.
        items = np.arange(len(seg)).reshape((-1, *[1] * (x.ndim - 1)))
        big = len(seg)
        first = np.full(y.shape, big, dtype=np.intp)
        np.minimum.at(first, seg, np.where(x == y[seg], items, big))
        last = np.full(y.shape, -1, dtype=np.intp)
        np.maximum.at(last, seg, np.where(np.isnan(x), items, -1))
        winner = np.where(np.isnan(y), last, first)
        gx = np.zeros_like(x)
        won = winner[seg] == items
        gx[won] = np.broadcast_to(g[seg], x.shape)[won]
    elif ctx.mode == "softmax":
        w = ctx.extra
        t = ctx.param.astype(x.dtype)
        dev = x - y[seg]
        gx = w * g[seg] * (1 + t * dev)
        gt = _sum_by(seg, w * g[seg] * x * dev, n).sum(axis=0)
        out["t"] = _shape_like(gt, ctx.param_shape)
    else:
        xe, mean = ctx.extra
        pp = ctx.param.astype(x.dtype)
        nonempty = (ctx.counts > 0).reshape(shape_n)
        cnt = np.maximum(ctx.counts, 1).reshape(shape_n).astype(x.dtype)
        safe_mean = np.where(nonempty, mean, 1)
        # y = mean^(1/p); dy/dx_i = mean^(1/p - 1) x_i^(p-1) / n (0 below eps)
        coef = (g * safe_mean ** (1 / pp - 1) / cnt * nonempty)[seg]
        gx = coef * xe ** (pp - 1) * (x >= xe)  # clamp(min=eps) passes gradient where x >= eps
        # dy/dp = y * (-log(mean)/p^2 + (sum x^p log x) / (n p mean))
        xlog = _sum_by(seg, xe**pp * np.log(xe), n)
        dyp = y * (-np.log(safe_mean) / pp**2 + xlog / (cnt * pp * safe_mean)) * nonempty
        out["p"] = _shape_like((g * dyp).sum(axis=0), ctx.param_shape)
    out = {"x": gx.astype(ctx.dtype, copy=False), **out}
    return out


def _shape_like(gsum: np.ndarray, shape: tuple[int, ...]) -> Any:
    return float(gsum.sum()) if shape == () else gsum.reshape(shape)


def _example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    items = x.reshape(-1, x.shape[-1])
    batch = np.arange(items.shape[0]) % 3
    return (items, batch), {"num_segments": 4, "mode": "mean"}


define(
    segment_pool,
    _segment_pool,
    _segment_backward,
    family="set",
    ndims=(),
    backends=("numpy", "torch", "keras"),
    example=_example,
)
