"""Stochastic pooling (Zeiler & Fergus, ICLR 2013): sample one activation per window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool
from ..errors import PoolingInputError
from ..geometry import AxisWindow, WindowSpec, window_spec
from ._api import define
from ._axes import Alloc, arg_dtype
from ._engine import blockwise
from ._input import Batch, check_grad, infer_ndim, prepare
from ._passes import max_pass
from ._taps import at_taps, taps_nd
from .fractional import as_generator

__all__ = ["stochastic_pool", "stochastic_pool1d", "stochastic_pool2d", "stochastic_pool3d"]


def stochastic_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    training: bool = True,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Stochastic pooling: each window outputs one of its activations, drawn at random.

    With ``a_i = max(x_i, 0)`` over the window's taps inside the input and
    ``p_i = a_i / sum_j a_j`` (Zeiler & Fergus, "Stochastic Pooling for
    Regularization of Deep Convolutional Neural Networks", ICLR 2013):

    * ``training=True``: draw one tap ``l ~ Multinomial(p)`` per window and
      output ``y = x_l``. Gradient: ``dy/dx_l = 1``, 0 for the other taps
      (accumulated where windows overlap), as in max pooling.
    * ``training=False``: probabilistic weighting
      ``y = sum_i p_i a_i = sum_i a_i^2 / sum_i a_i``. Gradient:
      ``dy/dx_i = (2 a_i - y) / sum_j a_j`` where ``x_i > 0``, else 0.

    The training output's expectation is the evaluation output.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``),
        float16/32/64; float16 is computed in float32.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool`.
    training : bool
        Sample (True) or use the probabilistic weighting (False).
    samples : array_like, optional
        The uniforms ``u`` in [0, 1), one per window, shaped ``(N, C, *out)``
        in channels-first order whatever ``data_format`` (``(C, *out)`` for
        an unbatched input): the draws ``rng`` would make, given explicitly
        (training only; validated always). ``samples=g.random((N, C, *out))``
        gives the result of ``rng=g``; other backends take the same samples
        and give the same result.
    rng : None, int or numpy.random.Generator
        Source of the samples when ``samples`` is not given (training only;
        validated always). An int seed gives reproducible draws; ``None``
        draws fresh entropy.
    data_format : {"channels_first", "channels_last"}

    Notes
    -----
    Conventions where the paper is silent:

    * Negative inputs: the paper assumes ReLU outputs. poolkit takes the
      probabilities from ``max(x, 0)``, so ``stochastic_pool(x)`` equals
      ``stochastic_pool(max(x, 0))``: a tap ``<= 0`` is never sampled and
      gets no gradient. A window with no positive value (all zero, all
      negative) outputs 0 and passes no gradient, in both modes.
    * Padding and ceil-mode overhang taps are not part of the window: they
      are never sampled and do not count in the sums.
    * Sampling: one uniform ``u`` in [0, 1) per window (drawn as float64 in
      ``(N, C, *out)`` order, so both layouts give the same draws); the
      winner is the first tap, in row-major window order, whose running sum
      of ``a`` exceeds ``u * sum(a)``. The sums run on ``a / max(a)``, so
      large inputs (``1e4``, or near the float maximum) neither overflow
      nor lose the rule.
    * Non-finite inputs: a window holding a NaN outputs NaN and passes no
      gradient. A window whose largest value is ``+inf`` samples uniformly
      among its ``+inf`` taps in training (the limit of ``p``), whose
      gradient is then 1 as for any sample; in evaluation it outputs
      ``+inf`` and passes no gradient. ``-inf`` is just a negative value.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.stochastic import stochastic_pool1d
    >>> x = np.array([[[1.0, 3.0, 0.0, -2.0, 0.0, 4.0]]])
    >>> stochastic_pool1d(x, 2, training=False)   # (1 + 9) / 4, 0, 16 / 4
    array([[[2.5, 0. , 4. ]]])
    >>> stochastic_pool1d(x, 2, rng=0)   # 1 (p = 1/4) or 3 (p = 3/4); 0; 4
    array([[[3., 0., 4.]]])
    """
    return _stochastic_pool(
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        training=training,
        samples=samples,
        rng=rng,
        data_format=data_format,
    )[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    out_shape: tuple[int, ...]
    winner: np.ndarray | None  # training: flat tap number of each window's sample, -1 for none
    scale: np.ndarray | None  # evaluation: window max of max(x, 0); 1 where it is 0 or not finite
    q: np.ndarray | None  # evaluation: y / scale
    inv_s: np.ndarray | None  # evaluation: 1 / sum(a / scale); 0 for windows without gradient
    degenerate: bool  # some window holds a NaN or +inf


@dataclass(frozen=True)
class _Scale:
    """Per-window scale ``max(a)`` (1 where it is 0 or not finite) and the non-finite windows."""

    scale: np.ndarray
    nan: np.ndarray | None  # windows holding a NaN (None: no degenerate window in this block)
    inf: np.ndarray | None  # windows whose maximum is +inf

    @classmethod
    def of(cls, xb: np.ndarray, axes: Sequence[AxisWindow], alloc: Alloc) -> _Scale:
        m = xb
        for j in reversed(range(len(axes))):
            m = max_pass(m, 2 + j, axes[j], alloc, False)[0]  # NaN propagates
        nan, inf = np.isnan(m), m == np.inf
        ok = m > 0
        if nan.any() or inf.any():
            ok &= ~inf
            return cls(np.where(ok, m, 1), nan, inf)
        return cls(np.where(ok, m, 1), None, None)

    def weights(self, xs: np.ndarray, o: tuple[slice, ...], a: np.ndarray | None = None) -> np.ndarray:
        """``a / max(a)`` for one tap of every window (an indicator of ``+inf`` in +inf windows).

        ``a = max(xs, 0)`` when already computed (then it is left unchanged).
        """
        if a is None:
            w = np.maximum(xs, 0)
            w /= self.scale[o]
        else:
            w = np.divide(a, self.scale[o])
        if self.nan is not None:
            w = np.where(self.inf[o], xs == np.inf, np.where(self.nan[o], 0, w))
        return w


def _check_samples(op: str, samples: Any, out_shape: tuple[int, ...], batched: bool) -> np.ndarray:
    """Explicit uniforms: floats in [0, 1) shaped ``(N, C, *out)`` (``(C, *out)`` unbatched), as float64."""
    u = np.asarray(samples)
    if not batched and u.shape == out_shape[1:]:
        u = u[None]
    if u.shape != out_shape:
        raise PoolingInputError(
            f"{op}: samples must have shape (N, C, *out) = {out_shape} (one uniform per window, "
            f"channels-first whatever data_format), got {u.shape}."
        )
    if not np.issubdtype(u.dtype, np.floating) or not np.all((u >= 0) & (u < 1)):
        raise PoolingInputError(
            f"{op}: samples must be floats in [0, 1), got dtype {u.dtype} or values outside [0, 1)."
        )
    return u.astype(np.float64, copy=False)


def _stochastic_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    training: bool = True,
    samples: Any = None,
    rng: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "stochastic_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    training = check_bool(op, "training", training)
    gen = as_generator(op, rng)
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    out_shape = (*batch.x.shape[:2], *spec.output_size)
    given = None if samples is None else _check_samples(op, samples, out_shape, batch.batched)
    taps = taps_nd(spec.axes)
    y = batch.empty(out_shape)
    degenerate: list[bool] = []
    if training:
        # one uniform per window, independent of the layout
        u = gen.random(out_shape) if given is None else given
        winner = batch.empty(out_shape, arg_dtype(int(np.prod(spec.kernel_size)))) if need_ctx else None

        def sample(ins: list[Any], outs: list[Any], _axes: Any) -> None:
            xb, ub = ins
            yb, wb = outs
            sc = _Scale.of(xb, spec.axes, batch.empty)
            deg = sc.nan is not None
            degenerate.append(deg)
            s = np.zeros_like(sc.scale)
            for t in taps:
                o = at_taps(t.o)
                s[o] += sc.weights(xb[at_taps(t.i)], o)
            # threshold strictly below the total, so some tap always crosses it when the total is > 0
            thr = np.multiply(ub, s).astype(s.dtype)
            np.minimum(thr, np.nextafter(s, 0), out=thr)
            c = np.zeros_like(s)
            yb[...] = 0
            if wb is not None:
                wb[...] = -1
            for t in taps:
                o = at_taps(t.o)
                xs = xb[at_taps(t.i)]
                co, to = c[o], thr[o]
                a = np.maximum(xs, 0)
                new = np.less_equal(co, to)
                co += sc.weights(xs, o, a)
                new &= co > to  # the running sum crosses the threshold at this tap
                if wb is not None:
                    wo = wb[o]
                    wo += np.multiply(new, wb.dtype.type(t.flat + 1))
                if deg:
                    np.copyto(yb[o], xs, where=new)
                else:  # a sampled tap is > 0, so a = x there; a is finite here (-inf -> 0)
                    a *= new
                    yo = yb[o]
                    yo += a
            if deg:
                yb[sc.nan] = np.nan

        with np.errstate(under="ignore"):
            blockwise(sample, [batch.x, u], [y, winner], channels_last=batch.channels_last)
        ctx = _Ctx(batch, spec, out_shape, winner, None, None, None, any(degenerate)) if need_ctx else None
        return batch.to_user(y), ctx

    scale_all, q_all, inv_all = (batch.empty(out_shape) if need_ctx else None for _ in range(3))

    def weigh(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb = ins[0]
        yb, scale_o, q_o, inv_o = outs
        sc = _Scale.of(xb, spec.axes, batch.empty)
        degenerate.append(sc.nan is not None)
        s1 = np.zeros_like(sc.scale)
        s2 = np.zeros_like(s1)
        for t in taps:
            o = at_taps(t.o)
            w = sc.weights(xb[at_taps(t.i)], o)
            s1[o] += w
            w *= w
            s2[o] += w
        has = s1 > 0
        safe = s1 + ~has  # 1 where the window has no positive value (its s2 is 0 too)
        q = np.divide(s2, safe)
        np.multiply(sc.scale, q, out=yb)
        if sc.nan is not None:
            yb[sc.inf] = np.inf
            yb[sc.nan] = np.nan
            has &= ~(sc.inf | sc.nan)
        if scale_o is not None:
            scale_o[...] = sc.scale
            q_o[...] = q
            np.divide(has, safe, out=inv_o)

    with np.errstate(under="ignore"):
        blockwise(weigh, [batch.x], [y, scale_all, q_all, inv_all], channels_last=batch.channels_last)
    ctx = None
    if need_ctx:
        ctx = _Ctx(batch, spec, out_shape, None, scale_all, q_all, inv_all, any(degenerate))
    return batch.to_user(y), ctx


def _stochastic_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    gx = batch.empty(batch.x.shape, fill=0)
    taps = taps_nd(ctx.spec.axes)

    if ctx.winner is not None:

        def to_sample(ins: list[Any], outs: list[Any], _axes: Any) -> None:
            gb, wb = ins
            gxb = outs[0]
            for t in taps:
                o = at_taps(t.o)
                dst = gxb[at_taps(t.i)]
                np.add(dst, gb[o] * (wb[o] == t.flat), out=dst)

        blockwise(to_sample, [g, ctx.winner], [gx], channels_last=batch.channels_last)
        return {"x": batch.to_user(gx)}

    def to_weights(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, gb, scale, q, inv_s = ins
        gxb = outs[0]
        if ctx.degenerate and not np.isfinite(xb).all():
            # NaN and +inf taps lie only in windows that pass no gradient (inv_s = 0 there)
            xb = np.where(np.isfinite(xb), xb, 0)
        gs = gb * inv_s
        for t in taps:
            o = at_taps(t.o)
            xs = xb[at_taps(t.i)]
            w = np.maximum(xs, 0)
            w /= scale[o]
            w *= 2
            w -= q[o]
            w *= gs[o]
            w *= xs > 0
            dst = gxb[at_taps(t.i)]
            np.add(dst, w, out=dst)

    with np.errstate(under="ignore"):
        blockwise(
            to_weights, [batch.x, g, ctx.scale, ctx.q, ctx.inv_s], [gx], channels_last=batch.channels_last
        )
    return {"x": batch.to_user(gx)}


def _fixed_samples(x: Any) -> np.ndarray:
    """Deterministic uniforms for the registry example's ``kernel_size=2`` (every backend takes them)."""
    shape = (*np.shape(x)[:2], *(n // 2 for n in np.shape(x)[2:]))
    return np.random.default_rng(0).random(shape)


_aliases = define(
    stochastic_pool,
    _stochastic_pool,
    _stochastic_pool_backward,
    family="research",
    differentiable=("x",),
    stochastic=True,
    backends=("numpy", "torch", "keras"),
    example=lambda x: ((x,), {"kernel_size": 2, "samples": _fixed_samples(x)}),
)
stochastic_pool1d = _aliases["stochastic_pool1d"]
stochastic_pool2d = _aliases["stochastic_pool2d"]
stochastic_pool3d = _aliases["stochastic_pool3d"]
