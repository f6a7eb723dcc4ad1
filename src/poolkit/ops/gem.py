"""GeM, generalized-mean pooling (Radenović, Tolias, Chum, TPAMI 2018): windowed and global."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool, check_real
from ..errors import PoolingInputError
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import blockwise, sum_passes, sum_passes_backward
from ._input import Batch, check_grad, infer_ndim, prepare
from ._params import ChannelParam, channel_param

__all__ = ["gem_pool", "gem_pool1d", "gem_pool2d", "gem_pool3d", "global_gem_pool"]


_P_HINT = "GeM needs a positive power: p=1 is the average, p=3 the paper's initial value, large p nears max."


def _pow_(c: np.ndarray, e: Any) -> np.ndarray:
    """``c **= e`` in place (``e`` a float or a broadcastable array)."""
    if isinstance(e, float):
        if e == 1.0:
            return c
        if e == 2.0:
            return np.multiply(c, c, out=c)
        if e == 0.0:
            c[...] = 1
            return c
        e = c.dtype.type(e)
    return np.power(c, e, out=c)


def _clamped(b: np.ndarray, eps: Any) -> np.ndarray:
    return np.maximum(b, eps)


# --------------------------------------------------------------------------- windowed


def gem_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    p: Any = 3.0,
    eps: float = 1e-6,
    data_format: str = "channels_first",
) -> np.ndarray:
    """GeM pooling: each window's generalized (power) mean of ``max(x, eps)``.

    ``y = ((1/|R|) sum_{i in R} max(x_i, eps)^p)^(1/p)`` over each window
    ``R`` (Radenović, Tolias, Chum, "Fine-tuning CNN image retrieval with no
    human annotation", TPAMI 2018; their global operator is
    :func:`global_gem_pool`). ``p = 1`` is average pooling of
    ``max(x, eps)``; ``p -> inf`` approaches max pooling.

    Gradients, with ``c_i = max(x_i, eps)`` and ``S = sum_R c^p``::

        dy/dx_i = y c_i^(p-1) / S          (0 where x_i < eps)
        dy/dp   = (y / p) (sum_R c^p log c / S - log y)

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool` (no dilation).
    p : float or array_like of shape (C,)
        The power, one for all channels or one per channel; > 0 and finite.
        Learnable: ``vjp`` returns ``"p"`` in the shape passed (a float for a
        scalar).
    eps : float
        Clamp, > 0 (the paper's 1e-6): inputs below it count as ``eps``.

    Notes
    -----
    * ``|R|`` counts the window's taps inside the input: padding and
      ceil-mode overhang are not part of the mean (PyTorch's
      ``count_include_pad=False``), so a border window is the mean of what
      it covers.
    * The clamp's gradient follows ``torch.clamp(min=eps)``: it passes where
      ``x >= eps`` and is 0 below.
    * Computed directly, as the reference ``avg_pool(x.clamp(eps)^p)^(1/p)``
      does, in float32 for float16/32 inputs and float64 for float64. The
      result is ``+inf`` where ``max(x, eps)^p`` overflows (float32: about
      ``3.4e38``, so ``x = 1e4`` is exact up to ``p`` of about 9); it is 0
      instead of ``eps`` where every ``max(x, eps)^p`` of a window underflows
      (``eps^p`` below the smallest subnormal, float32 ``p`` above about 7.5
      at ``eps = 1e-6``).
    * A window holding a NaN gives NaN; one holding ``+inf`` gives ``+inf``;
      ``-inf`` is clamped to ``eps`` like any other value below it.
      Windows whose output is not finite (or 0 from underflow) pass no
      gradient to ``x`` or ``p``.
    * float16 is computed in float32 and returned as float16.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.gem import gem_pool1d
    >>> x = np.array([[[1.0, 3.0, 2.0, 2.0, -5.0, 4.0]]])
    >>> gem_pool1d(x, 2, p=2.0)   # sqrt((1 + 9) / 2), sqrt((4 + 4) / 2), sqrt((1e-12 + 16) / 2)
    array([[[2.23606798, 2.        , 2.82842712]]])
    >>> gem_pool1d(x[..., :4], 2, p=1.0)   # the average
    array([[[2., 2.]]])
    """
    return _gem_pool(x, kernel_size, stride, padding, ceil_mode, p=p, eps=eps, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    p: ChannelParam
    eps: Any
    divisors: tuple[Any, ...]
    y: np.ndarray
    mean: np.ndarray  # (1/|R|) sum c^p


def _axis_divisor(counts: np.ndarray, ndim: int, axis: int, dtype: Any) -> Any:
    """Per-axis divisor, as avg_pool computes it: None (all 1), one scalar, or an array along ``axis``."""
    counts = np.maximum(counts, 1)
    if (counts == counts[0]).all():
        return None if counts[0] == 1 else dtype.type(counts[0])
    shape = [1] * ndim
    shape[axis] = counts.size
    return counts.astype(dtype).reshape(shape)


def _window_sums(
    batch: Batch,
    spec: WindowSpec,
    divisors: list[Any],
    param: ChannelParam,
    fn: Callable[[np.ndarray, Any], np.ndarray],
) -> np.ndarray:
    """Window means of ``fn(x, p)``: one engine call for a scalar ``p``, per block for a per-channel one."""
    cl = batch.channels_last
    if param.scalar is not None:
        return sum_passes(batch.x, spec.axes, batch.empty, divisors, cl, pre=lambda b: fn(b, param.scalar))
    out = batch.empty((*batch.x.shape[:2], *spec.output_size))

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, pb = ins
        outs[0][...] = sum_passes(xb, spec.axes, batch.empty, divisors, cl, pre=lambda b: fn(b, pb))

    # A block fits the engine's block size, so the inner call runs it as one block and ``pb``
    # (this block's slice of p's broadcast view) lines up with every array ``pre`` sees.
    blockwise(block, [batch.x, param.blocks(batch.x.shape[:2], batch.nd)], [out], channels_last=cl)
    return out


def _gem_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    p: Any = 3.0,
    eps: float = 1e-6,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "gem_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    dtype = batch.x.dtype
    param = channel_param(op, "p", p, batch.x.shape[1], dtype, _P_HINT)
    e = dtype.type(check_real(op, "eps", eps, low=0.0, low_inclusive=False))
    divisors = [_axis_divisor(ax.counts(False), batch.x.ndim, 2 + j, dtype) for j, ax in enumerate(spec.axes)]
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        mean = _window_sums(batch, spec, divisors, param, lambda b, q: _pow_(_clamped(b, e), q))
        inv = 1.0 / param.scalar if param.scalar is not None else (1.0 / param.column(nd))
        y = mean
        if need_ctx:  # the backward pass needs the mean too
            y = batch.empty(mean.shape)
            np.copyto(y, mean)
        _pow_(y, inv)
    ctx = _Ctx(batch, spec, param, e, tuple(divisors), y, mean) if need_ctx else None
    return batch.to_user(y), ctx


def _gem_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, Any]:
    batch, spec, param, e = ctx.batch, ctx.spec, ctx.p, ctx.eps
    nd = batch.nd
    g = check_grad(batch, grad_output, ctx.y.shape).astype(batch.x.dtype, copy=False)
    cl = batch.channels_last
    pm1 = None if param.scalar is None else param.scalar - 1.0

    def post(gb: np.ndarray, xb: np.ndarray, pb: np.ndarray) -> None:
        c = _pow_(_clamped(xb, e), pb - 1 if pm1 is None else pm1)
        np.multiply(c, np.greater_equal(xb, e), out=c)  # torch.clamp(min=eps) passes x >= eps
        np.multiply(gb, c, out=gb)

    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        w = np.divide(ctx.y, ctx.mean)  # y / mean = y^(1-p) (0 / 0 where the mean underflowed)
        bad = _bad_windows(w)
        if bad is not None:
            w[bad] = 0  # NaN, inf or underflowed windows pass no gradient
        np.multiply(w, g, out=w)
        gx = sum_passes_backward(
            w,
            spec.axes,
            batch.empty,
            ctx.divisors,
            cl,
            post=post,
            post_ins=[batch.x, param.blocks(batch.x.shape[:2], nd)],
        )
        if bad is not None:
            gx[~np.isfinite(gx)] = 0
        # dy/dp = (y / p) (mean(c^p log c) / mean(c^p) - log y)
        t = _window_sums(batch, spec, list(ctx.divisors), param, _plogp(e))
        _p_grad(t, ctx.y, ctx.mean, g, param.column(nd), bad, w)
    return {"x": batch.to_user(gx), "p": param.grad(t)}


def _bad_windows(ratio: np.ndarray) -> np.ndarray | None:
    """Windows with a non-finite ``y / mean`` (NaN, inf, overflow, underflow), or None if there are none."""
    if np.isfinite(ratio).all():
        return None
    return ~np.isfinite(ratio)


def _p_grad(
    t: np.ndarray,
    y: np.ndarray,
    mean: np.ndarray,
    g: np.ndarray,
    p: np.ndarray,
    bad: np.ndarray | None,
    scratch: np.ndarray,
) -> None:
    """``t = g (y / p) (t / mean - log y)`` in place (``t``: the window means of ``c^p log c``)."""
    np.divide(t, mean, out=t)
    t -= np.log(y, out=scratch)
    t *= y
    t /= p
    t *= g
    if bad is not None:
        t[bad] = 0


def _plogp(e: Any) -> Callable[[np.ndarray, Any], np.ndarray]:
    def fn(b: np.ndarray, q: Any) -> np.ndarray:
        c = _clamped(b, e)
        lc = np.log(c)
        _pow_(c, q)
        return np.multiply(c, lc, out=c)

    return fn


_aliases = define(
    gem_pool,
    _gem_pool,
    _gem_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    differentiable=("x", "p"),
    learnable=("p",),
    example=lambda x: ((x,), {"kernel_size": 2, "p": np.full(x.shape[1], 3.0)}),
)
gem_pool1d = _aliases["gem_pool1d"]
gem_pool2d = _aliases["gem_pool2d"]
gem_pool3d = _aliases["gem_pool3d"]


# --------------------------------------------------------------------------- global


def global_gem_pool(
    x: Any,
    p: Any = 3.0,
    eps: float = 1e-6,
    *,
    keepdims: bool = False,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Global GeM: the generalized mean of ``max(x, eps)`` over each whole plane.

    ``y = ((1/|X|) sum_{i in X} max(x_i, eps)^p)^(1/p)`` with ``X`` all
    spatial positions of a (sample, channel) plane: the paper's operator
    (Radenović, Tolias, Chum, TPAMI 2018; cirtorch's
    ``avg_pool2d(x.clamp(min=eps).pow(p), (H, W)).pow(1/p)``), N-d.
    Equal to :func:`gem_pool` with the whole plane as the window, computed
    as one reduction per plane.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    p : float or array_like of shape (C,)
        The power (> 0, finite), shared or per channel; learnable.
    eps : float
        Clamp, > 0.
    keepdims : bool
        Keep size-1 spatial axes: ``(N, C, 1, ...)`` instead of ``(N, C)``.

    Notes
    -----
    Gradients, conventions for NaN, inf, overflow and underflow, and the
    clamp's gradient are those of :func:`gem_pool`.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.gem import global_gem_pool
    >>> x = np.array([[[[1.0, 3.0], [-2.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    >>> global_gem_pool(x, p=np.array([1.0, 3.0]))   # (1 + 3 + 1e-6 + 4) / 4, and 2
    array([[2.00000025, 2.        ]])
    """
    return _global_gem_pool(x, p, eps, keepdims=keepdims, data_format=data_format)[0]


@dataclass(frozen=True)
class _GlobalCtx:
    batch: Batch
    p: ChannelParam
    eps: Any
    y: np.ndarray  # (N, C, 1, ...)
    mean: np.ndarray
    keep_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _plane_means(
    batch: Batch, param: ChannelParam, fn: Callable[[np.ndarray, Any], np.ndarray]
) -> np.ndarray:
    """``(N, C, 1, ...)`` means of ``fn(x, p)`` over each plane, block by block."""
    nd = batch.nd
    axes = tuple(range(2, 2 + nd))
    size = batch.x.dtype.type(np.prod(batch.spatial))
    out = batch.empty((*batch.x.shape[:2], *[1] * nd))

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, pb = ins
        v = fn(xb, pb if param.scalar is None else param.scalar)
        np.sum(v, axis=axes, keepdims=True, out=outs[0])
        np.divide(outs[0], size, out=outs[0])

    blockwise(block, [batch.x, param.blocks(batch.x.shape[:2], nd)], [out], channels_last=batch.channels_last)
    return out


def _global_gem_pool(
    x: Any,
    p: Any = 3.0,
    eps: float = 1e-6,
    *,
    keepdims: bool = False,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "global_gem_pool",
) -> tuple[np.ndarray, _GlobalCtx | None]:
    keepdims = check_bool(op, "keepdims", keepdims)
    nd = infer_ndim(op, x, ndim, variants=False)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True, allow_unbatched=False)
    if 0 in batch.spatial:
        raise PoolingInputError(
            f"{op} needs at least one spatial position, got spatial size {batch.spatial}."
        )
    dtype = batch.x.dtype
    param = channel_param(op, "p", p, batch.x.shape[1], dtype, _P_HINT)
    e = dtype.type(check_real(op, "eps", eps, low=0.0, low_inclusive=False))
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        mean = _plane_means(batch, param, lambda b, q: _pow_(_clamped(b, e), q))
        inv = 1.0 / param.scalar if param.scalar is not None else (1.0 / param.column(nd))
        y = mean
        if need_ctx:  # the backward pass needs the mean too
            y = batch.empty(mean.shape)
            np.copyto(y, mean)
        _pow_(y, inv)
    out = batch.to_user(y)
    keep_shape = out.shape
    if not keepdims:
        out = out.reshape(out.shape[0], out.shape[-1] if batch.channels_last else out.shape[1])
    ctx = _GlobalCtx(batch, param, e, y, mean, keep_shape, out.shape) if need_ctx else None
    return out, ctx


def _global_gem_backward(ctx: _GlobalCtx, grad_output: Any) -> dict[str, Any]:
    batch, param, e = ctx.batch, ctx.p, ctx.eps
    nd = batch.nd
    g = np.asarray(grad_output)
    if g.shape != ctx.out_shape:
        raise PoolingInputError(
            f"{batch.op}: grad_output must have the output's shape {ctx.out_shape}, got {g.shape}."
        )
    g = check_grad(batch, g.reshape(ctx.keep_shape), ctx.y.shape).astype(batch.x.dtype, copy=False)
    size = batch.x.dtype.type(np.prod(batch.spatial))
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        w = np.divide(ctx.y, ctx.mean)
        bad = _bad_windows(w)
        if bad is not None:
            w[bad] = 0
        np.multiply(w, g, out=w)
        w /= size
        gx = batch.empty(batch.x.shape)

        def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
            xb, pb, wb = ins
            c = _pow_(_clamped(xb, e), pb - 1 if param.scalar is None else param.scalar - 1.0)
            np.multiply(c, np.greater_equal(xb, e), out=c)
            np.multiply(c, wb, out=outs[0])

        blockwise(
            block,
            [batch.x, param.blocks(batch.x.shape[:2], nd), w],
            [gx],
            channels_last=batch.channels_last,
        )
        if bad is not None:
            gx[~np.isfinite(gx)] = 0
        t = _plane_means(batch, param, _plogp(e))
        _p_grad(t, ctx.y, ctx.mean, g, param.column(nd), bad, w)
    return {"x": batch.to_user(gx), "p": param.grad(t)}


define(
    global_gem_pool,
    _global_gem_pool,
    _global_gem_backward,
    family="global",
    backends=("numpy", "torch", "keras"),
    ndims=(),
    differentiable=("x", "p"),
    learnable=("p",),
    example=lambda x: ((x,), {"p": np.full(x.shape[1], 3.0)}),
)
