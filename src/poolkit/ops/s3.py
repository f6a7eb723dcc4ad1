"""S3Pool (Zhai et al., CVPR 2017): max pooling at stride 1, then stochastic spatial sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool, int_tuple
from ..errors import PoolingConfigError, PoolingInputError
from ._api import define
from ._input import Batch, check_grad, infer_ndim, prepare
from .fractional import as_generator
from .max_pool import _max_pool, _max_pool_backward

__all__ = ["s3_pool", "s3_pool1d", "s3_pool2d", "s3_pool3d"]


def s3_pool(
    x: Any,
    kernel_size: Any = 2,
    grid_size: Any = 2,
    *,
    stride: Any = 2,
    training: bool = True,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """S3Pool: stride-1 max pooling followed by random, ordered row/column sampling.

    Zhai, Wu, Kumar, Moore, Wang, Zhang, "S3Pool: Pooling with Stochastic
    Spatial Sampling" (CVPR 2017). Two steps:

    1. ``m = max_pool(x, kernel_size, stride=1, padding="same")``: the same
       spatial size as ``x``.
    2. Down-sampling by ``stride`` along every spatial axis: the axis is cut
       into grid cells of ``grid_size`` samples; in training each cell keeps
       ``grid_size / stride`` of its rows (columns, ...), drawn uniformly
       without replacement and kept in order; ``y = m[..., rows, cols]``.
       In evaluation (``training=False``) every ``stride``-th row is kept:
       rows ``0, stride, 2 * stride, ...``.

    Gradient: ``g`` is scattered to the kept positions of ``m`` (each is
    kept once), then through max pooling to the window's winner
    (accumulating where windows overlap).

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``),
        float16/32/64.
    kernel_size : int or tuple
        Window of the stride-1 max pooling (the paper uses 2).
    grid_size : int or tuple
        Grid cell size ``g``; a multiple of ``stride`` on every axis.
        ``grid_size=stride`` keeps one random row per cell; larger cells
        give stronger distortions.
    stride : int or tuple
        Down-sampling factor ``s``.
    training : bool
        Random sampling (True) or the deterministic every-``stride``-th row.
    samples : sequence of array_like, optional
        The kept rows given explicitly (training only; validated always): one
        1-D integer array per spatial axis, each of ``ceil(size / stride)``
        strictly increasing positions in ``[0, size)``, as training draws
        them. Other backends take the same samples and give the same result.
    rng : None, int or numpy.random.Generator
        Draws the rows when ``samples`` is not given (training only;
        validated always).
    data_format : {"channels_first", "channels_last"}

    Notes
    -----
    Conventions where the paper is silent:

    * Padding of step 1: ``padding="same"`` with ``-inf`` (max pooling's
      padding is never 0), i.e. ``(k - 1) // 2`` before and the rest after.
      For the paper's ``kernel_size=2`` this is one row/column after the
      end, so ``m[i] = max(x[i], x[i + 1])`` as in the paper's code (which
      does not pad and loses the last row). Hence evaluation with
      ``kernel_size=stride=2`` equals ``max_pool(x, 2)`` on even sizes.
    * Output size: ``ceil(size / stride)`` per axis, in both modes. When
      ``size`` is not a multiple of ``grid_size``, the last, partial cell of
      ``r`` rows keeps ``ceil(r / stride)`` of them (the paper's code
      instead merges the remainder into the last full cell).
    * One draw per call and axis, shared by every sample and channel, as
      in the authors' code; axes are drawn in order (first spatial axis
      first).
    * Evaluation: every ``stride``-th row from the first (the paper's code
      instead averages ``m`` over ``stride``-sized windows).
    * Ties, NaN and ``+-inf``: as :func:`poolkit.ops.max_pool`; the
      sampling never looks at the values.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.s3 import s3_pool1d
    >>> x = np.array([[[1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 6.0, -1.0]]])
    >>> s3_pool1d(x, 2, grid_size=4, training=False)   # m = [5, 5, 2, 3, 4, 6, 6, -1]
    array([[[5., 2., 4., 6.]]])
    >>> s3_pool1d(x, 2, grid_size=4, rng=0)   # 2 of rows 0-3, 2 of rows 4-7: here 2, 3, 6, 7
    array([[[ 2.,  3.,  6., -1.]]])
    """
    return _s3_pool(
        x,
        kernel_size,
        grid_size,
        stride=stride,
        training=training,
        samples=samples,
        rng=rng,
        data_format=data_format,
    )[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    ctx_max: Any
    index: tuple[np.ndarray, ...]  # np.ix_ index of the kept rows, one per spatial axis
    out_shape: tuple[int, ...]


def _rows(gen: np.random.Generator | None, n: int, g: int, s: int) -> np.ndarray:
    """Kept positions along one axis of size ``n``: random in training (``gen``), else every ``s``-th."""
    if gen is None:
        return np.arange(0, n, s)
    per = g // s
    q, r = divmod(n, g)
    parts = []
    if q:
        # the first `per` entries of a random permutation: a uniform subset, then sorted
        pick = np.argsort(gen.random((q, g)), axis=1)[:, :per]
        parts.append((np.sort(pick, axis=1) + np.arange(q)[:, None] * g).ravel())
    if r:
        pick = np.argsort(gen.random(r))[: -(-r // s)]
        parts.append(np.sort(pick) + q * g)
    return np.concatenate(parts)


def _check_samples(op: str, samples: Any, sizes: tuple[int, ...], s: tuple[int, ...]) -> list[np.ndarray]:
    """Explicit kept rows: per axis ``ceil(size / stride)`` strictly increasing positions in range."""
    nd = len(sizes)
    want = tuple(-(-n // st) for n, st in zip(sizes, s))
    if isinstance(samples, (str, bytes)) or not hasattr(samples, "__len__") or len(samples) != nd:
        raise PoolingInputError(
            f"{op}: samples must be a sequence of {nd} 1-D integer arrays (the kept rows of each "
            f"spatial axis), got {type(samples).__name__}."
        )
    rows = []
    for j, (r, n, k) in enumerate(zip(samples, sizes, want)):
        a = np.asarray(r)
        if a.shape != (k,) or not np.issubdtype(a.dtype, np.integer):
            raise PoolingInputError(
                f"{op}: samples[{j}] must be {k} integer positions (ceil({n} / stride)), got dtype "
                f"{a.dtype} and shape {a.shape}."
            )
        if k and (a[0] < 0 or a[-1] >= n or (np.diff(a) <= 0).any()):
            raise PoolingInputError(
                f"{op}: samples[{j}] must be strictly increasing positions in [0, {n}), got {a.tolist()!r}."
            )
        rows.append(a.astype(np.intp))
    return rows


def _s3_pool(
    x: Any,
    kernel_size: Any = 2,
    grid_size: Any = 2,
    *,
    stride: Any = 2,
    training: bool = True,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "s3_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    training = check_bool(op, "training", training)
    gen = as_generator(op, rng)
    nd = infer_ndim(op, x, ndim, kernel_size, grid_size, stride)
    k = int_tuple(op, "kernel_size", kernel_size, nd, 1)
    grid = int_tuple(op, "grid_size", grid_size, nd, 1)
    s = int_tuple(op, "stride", stride, nd, 1)
    for j in range(nd):
        if grid[j] % s[j]:
            raise PoolingConfigError(
                f"{op}: grid_size must be a multiple of stride on every axis (each grid cell keeps "
                f"grid_size / stride rows), got grid_size={grid[j]} and stride={s[j]} on axis {j}. "
                f"Use grid_size={s[j] * max(1, round(grid[j] / s[j]))} or another multiple of {s[j]}."
            )
    batch = prepare(x, op=op, nd=nd, data_format=data_format)
    cl = batch.channels_last
    xin = np.moveaxis(batch.x, 1, -1) if cl else batch.x
    m, ctx_max = _max_pool(
        xin, k, 1, "same", 1, False, data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op
    )
    m = np.moveaxis(m, -1, 1) if cl else m
    given = None if samples is None else _check_samples(op, samples, batch.spatial, s)
    if training and given is not None:
        rows = given
    else:
        rows = [_rows(gen if training else None, batch.spatial[j], grid[j], s[j]) for j in range(nd)]
    index = np.ix_(*rows)
    out_shape = (*batch.x.shape[:2], *(len(r) for r in rows))
    y = batch.empty(out_shape)
    y[...] = m[(slice(None), slice(None), *index)]
    ctx = _Ctx(batch, ctx_max, index, out_shape) if need_ctx else None
    return batch.to_user(y), ctx


def _s3_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    cl = batch.channels_last
    g = check_grad(batch, grad_output, ctx.out_shape)
    g = g.astype(np.float32 if batch.dtype == np.float16 else batch.dtype, copy=False)
    gm = batch.empty(batch.x.shape, g.dtype, fill=0)
    gm[(slice(None), slice(None), *ctx.index)] = g  # kept positions are distinct: no accumulation
    gx = _max_pool_backward(ctx.ctx_max, np.moveaxis(gm, 1, -1) if cl else gm)["x"]
    return {"x": batch.to_user(np.moveaxis(gx, -1, 1) if cl else gx)}


def _fixed_rows(x: Any) -> tuple[np.ndarray, ...]:
    """Deterministic kept rows for the registry example (grid 4, stride 2; every backend takes them)."""
    gen = np.random.default_rng(0)
    return tuple(_rows(gen, n, 4, 2) for n in np.shape(x)[2:])


_aliases = define(
    s3_pool,
    _s3_pool,
    _s3_pool_backward,
    family="research",
    differentiable=("x",),
    stochastic=True,
    backends=("numpy", "torch", "keras"),
    example=lambda x: ((x,), {"kernel_size": 2, "grid_size": 4, "stride": 2, "samples": _fixed_rows(x)}),
)
s3_pool1d = _aliases["s3_pool1d"]
s3_pool2d = _aliases["s3_pool2d"]
s3_pool3d = _aliases["s3_pool3d"]
