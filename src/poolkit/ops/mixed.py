"""Mixed max-average pooling: random (Yu et al. 2014) or learnable (Lee et al. 2016) mixing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool, check_choice
from ..errors import PoolingConfigError, PoolingInputError
from ..geometry import window_spec
from ._api import define
from ._input import Batch, check_grad, infer_ndim, prepare
from .avg_pool import _avg_pool, _avg_pool_backward
from .fractional import as_generator
from .max_pool import _max_pool, _max_pool_backward

__all__ = ["mixed_pool", "mixed_pool1d", "mixed_pool2d", "mixed_pool3d"]

MODES = ("layer", "channel", "window")


def mixed_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    alpha: Any = None,
    mode: str = "layer",
    training: bool = True,
    rng: Any = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Mixed pooling: ``y = a * max_pool(x) + (1 - a) * avg_pool(x)``.

    * ``alpha=None``: Yu, Wang, Chen, Wei, "Mixed Pooling for Convolutional
      Neural Networks" (RSKT 2014). In training ``a = lambda`` is drawn in
      {0, 1} with probability 1/2 each, on every call; in evaluation
      (``training=False``) ``a = 1/2``, the expectation of the training
      output (the paper's rule, which uses the frequencies recorded in
      training, is not reproducible from a pure function).
    * ``alpha`` given: Lee, Gallagher, Tu, "Generalizing Pooling Functions in
      Convolutional Neural Networks: Mixed, Gated, and Tree" (AISTATS 2016),
      ``a = alpha`` learnable in [0, 1]; ``training`` and ``rng`` are not
      used.

    ``mode`` sets the granularity of ``a`` (a drawn ``lambda`` has the
    shape a learnable ``alpha`` would have): ``"layer"`` one scalar,
    ``"channel"`` one per channel ``(C,)`` shared by the batch, ``"window"``
    one per output position (the output's spatial shape, e.g. ``(H_out,
    W_out)``) shared by the batch and the channels. Passing a drawn
    ``lambda`` as ``alpha`` reproduces the call.

    Gradients (``vjp``): ``dL/dx = max_pool'(a * g) + avg_pool'((1 - a) * g)``
    and ``dL/dalpha = sum of g * (max - avg)`` over the positions that share
    one ``alpha``, returned in ``alpha``'s shape.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``),
        float16/32/64; float16 is computed in float32.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool`.
    alpha : float or array_like, optional
        In [0, 1]: a scalar (``mode="layer"``, shape ``()`` or ``(1,)``), a
        ``(C,)`` array (``"channel"``) or an array of the output's spatial
        shape (``"window"``).
    mode : {"layer", "channel", "window"}
    training : bool
        With ``alpha=None``: draw ``lambda`` (True) or use 1/2 (False).
    rng : None, int or numpy.random.Generator
        Draws ``lambda``; validated always.
    data_format : {"channels_first", "channels_last"}

    Notes
    -----
    The two terms are poolkit's own :func:`~poolkit.ops.max_pool` (padding
    is ``-inf``; ties, NaN and gradient rules as there) and
    :func:`~poolkit.ops.avg_pool` with ``count_include_pad=True``
    (PyTorch's default and Caffe's rule, which the papers used: explicit
    padding counts as zeros in the divisor, ceil-mode overhang does not).
    Hence ``alpha=1`` is exactly ``max_pool`` and ``alpha=0`` exactly
    ``avg_pool``.

    Non-finite values: a term whose coefficient is 0 is dropped, so
    ``0 * inf`` never makes a NaN (``alpha=1`` on a window holding ``+inf``
    and ``-inf`` gives ``+inf``, the max). A window holding both ``+inf``
    and ``-inf`` has a NaN average; a window holding a NaN gives NaN unless
    its term is dropped. Windows whose max or average is not finite add
    nothing to ``alpha``'s gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.mixed import mixed_pool1d
    >>> x = np.array([[[1.0, 3.0, -2.0, 0.0]], [[4.0, 0.0, 2.0, 2.0]]])
    >>> mixed_pool1d(x, 2, alpha=0.25)   # 0.25 * max + 0.75 * avg
    array([[[ 2.25, -0.75]],
    <BLANKLINE>
           [[ 2.5 ,  2.  ]]])
    >>> mixed_pool1d(x, 2, training=False)   # (max + avg) / 2
    array([[[ 2.5, -0.5]],
    <BLANKLINE>
           [[ 3. ,  2. ]]])
    >>> mixed_pool1d(x, 2, mode="window", rng=2)   # lambda drawn per window: 1 (max), 0 (avg)
    array([[[ 3., -1.]],
    <BLANKLINE>
           [[ 4.,  2.]]])
    """
    return _mixed_pool(
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        alpha=alpha,
        mode=mode,
        training=training,
        rng=rng,
        data_format=data_format,
    )[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    ctx_max: Any
    ctx_avg: Any
    a: np.ndarray  # the coefficient, broadcastable to the channels-first output
    out_shape: tuple[int, ...]
    diff: np.ndarray | None  # max - avg (0 where not finite); only for a learnable alpha
    alpha_shape: tuple[int, ...] | None
    alpha_dtype: Any
    reduce_axes: tuple[int, ...]


def _check_alpha(op: str, alpha: Any, mode: str, want: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.asarray(alpha)
    except Exception as err:  # ragged sequences and the like
        raise PoolingConfigError(f"{op}: alpha must be a number or an array of numbers in [0, 1].") from err
    if arr.dtype.kind not in "fiu":
        raise PoolingConfigError(
            f"{op}: alpha must be real numbers in [0, 1], got dtype {arr.dtype}. "
            f"Pass e.g. alpha=0.5 or a float array."
        )
    ok = arr.shape == want or (mode == "layer" and arr.shape == (1,))
    if not ok:
        what = {
            "layer": "a scalar",
            "channel": "one value per channel",
            "window": "the output's spatial shape",
        }
        raise PoolingInputError(
            f"{op}: with mode={mode!r} alpha must have shape {want} ({what[mode]}), got shape "
            f"{arr.shape}. Pass an alpha of that shape, or the mode that matches your alpha "
            f"('layer': (), 'channel': (C,), 'window': the output's spatial shape)."
        )
    if not bool(np.all((arr >= 0) & (arr <= 1))):
        raise PoolingConfigError(
            f"{op}: alpha must lie in [0, 1], got values in [{np.min(arr)!r}, {np.max(arr)!r}]. "
            f"Clip it (np.clip(alpha, 0, 1)) or learn it through a sigmoid."
        )
    return arr


def _combine(a: np.ndarray, mx: np.ndarray, av: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a * mx + (1 - a) * av``; returns ``mx - av`` (0 where not finite).

    Computed as ``av + a * d`` for ``a <= 1/2`` and ``mx - (1 - a) * d``
    above (``d = mx - av``), which is exact at ``a = 0``, at ``a = 1`` and
    where ``mx == av`` (all-equal windows). Overwrites ``av``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.subtract(mx, av)
    bad = ~np.isfinite(d)
    special = None
    if bad.any():
        with np.errstate(invalid="ignore"):
            # a term whose coefficient is 0 is dropped: 0 * inf must not make a NaN
            special = np.where(a == 0, 0, mx * a) + np.where(a == 1, 0, av * (1 - a))
        d[bad] = 0
    lo = a <= 0.5
    np.multiply(d, np.where(lo, a, a - 1), out=out)
    if lo.ndim == 0:
        out += av if lo else mx
    else:
        np.copyto(av, mx, where=~lo)  # av becomes the base of each window's form
        out += av
    if special is not None:
        out[bad] = np.broadcast_to(special, out.shape)[bad]
    return d


def _cf(a: np.ndarray, cl: bool) -> np.ndarray:
    return np.moveaxis(a, -1, 1) if cl else a


def _user(a: np.ndarray, cl: bool) -> np.ndarray:
    return np.moveaxis(a, 1, -1) if cl else a


def _mixed_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    alpha: Any = None,
    mode: str = "layer",
    training: bool = True,
    rng: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "mixed_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    mode = check_choice(op, "mode", mode, MODES)
    training = check_bool(op, "training", training)
    gen = as_generator(op, rng)
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    n, c = batch.x.shape[:2]
    out_sp = spec.output_size
    dt = batch.x.dtype
    shape = {"layer": (), "channel": (c,), "window": out_sp}[mode]
    learn = alpha is not None
    if learn:
        alpha_arr = _check_alpha(op, alpha, mode, shape)
        coef = alpha_arr.astype(dt).reshape(shape)
    elif training:
        coef = gen.integers(0, 2, size=shape).astype(dt)
    else:
        coef = np.full(shape, 0.5, dt)
    bshape = {"layer": (), "channel": (1, c, *[1] * nd), "window": (1, 1, *out_sp)}[mode]
    a = coef.reshape(bshape)
    reduce_axes = {"layer": tuple(range(nd + 2)), "channel": (0, *range(2, nd + 2)), "window": (0, 1)}[mode]

    cl = batch.channels_last
    xin = _user(batch.x, cl)  # the user's layout, batched, in the compute dtype
    common = dict(data_format=data_format, ndim=nd, need_ctx=need_ctx, op=op)
    mx, ctx_max = _max_pool(xin, kernel_size, stride, padding, 1, ceil_mode, **common)
    with np.errstate(invalid="ignore", over="ignore"):  # +inf and -inf in one window: NaN average
        av, ctx_avg = _avg_pool(xin, kernel_size, stride, padding, ceil_mode, True, **common)
    mx, av = _cf(mx, cl), _cf(av, cl)
    out_shape = (n, c, *out_sp)
    y = batch.empty(out_shape)
    diff = _combine(a, mx, av, y)
    del mx, av
    ctx = None
    if need_ctx:
        ctx = _Ctx(
            batch,
            ctx_max,
            ctx_avg,
            a,
            out_shape,
            diff if learn else None,
            alpha_arr.shape if learn else None,
            (alpha_arr.dtype if alpha_arr.dtype.kind == "f" else batch.dtype) if learn else None,
            reduce_axes,
        )
    return batch.to_user(y), ctx


def _mixed_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    cl = batch.channels_last
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    part = np.multiply(g, ctx.a)
    gx = _cf(_max_pool_backward(ctx.ctx_max, _user(part, cl))["x"], cl)
    np.multiply(g, 1 - ctx.a, out=part)
    gx += _cf(_avg_pool_backward(ctx.ctx_avg, _user(part, cl))["x"], cl)
    grads = {"x": batch.to_user(gx)}
    if ctx.diff is not None:
        np.multiply(g, ctx.diff, out=part)
        ga = part.sum(axis=ctx.reduce_axes, dtype=np.float64 if batch.x.dtype == np.float64 else np.float32)
        grads["alpha"] = np.asarray(ga, dtype=ctx.alpha_dtype).reshape(ctx.alpha_shape)
    return grads


_aliases = define(
    mixed_pool,
    _mixed_pool,
    _mixed_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    differentiable=("x", "alpha"),
    learnable=("alpha",),
    stochastic=True,
    example=lambda x: ((x,), {"kernel_size": 2, "alpha": np.full(x.shape[1], 0.5), "mode": "channel"}),
)
mixed_pool1d = _aliases["mixed_pool1d"]
mixed_pool2d = _aliases["mixed_pool2d"]
mixed_pool3d = _aliases["mixed_pool3d"]
