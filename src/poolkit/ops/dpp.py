"""Detail-preserving pooling (Saeedan, Weber, Goesele, Roth, CVPR 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_bool, check_real
from ..errors import PoolingConfigError, PoolingInputError
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import blockwise
from ._filters import QUIET, as_param, block_channels, channel_dot, channel_index
from ._input import Batch, check_grad, infer_ndim, prepare
from ._taps import at_taps, tap_counts, taps_nd

__all__ = ["dpp_pool", "dpp_pool1d", "dpp_pool2d", "dpp_pool3d"]


def dpp_pool(
    x: Any,
    alpha: Any,
    lam: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    asymmetric: bool = False,
    eps: float = 1e-3,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Detail-preserving pooling: a window average that weighs taps by how much they stand out.

    ``D[p] = sum_q w[p,q] I[q] / sum_q w[p,q]`` over the taps ``q`` of window
    ``p`` inside the input, with ``w[p,q] = alpha + rho(I[q] - Itilde[p])``
    and ``Itilde[p]`` the plain average of the same taps (Saeedan, Weber,
    Goesele, Roth, "Detail-preserving pooling in deep networks", CVPR 2018).
    Symmetric: ``rho(d) = sqrt(d^2 + eps^2)^lam``; ``asymmetric=True``:
    ``rho(d) = sqrt(max(0, d)^2 + eps^2)^lam`` (only taps above the average
    gain weight).

    Gradients (``vjp``): with ``S = sum_q w`` and ``beta_q = g (I[q] - D) / S``,
    ``dL/dalpha = sum_q beta_q``, ``dL/dlam = sum_q beta_q rho_q log sqrt(d_q^2 + eps^2)``,
    and ``x`` gets ``g w_q / S + beta_q rho'(d_q)`` at each tap, minus the
    window's ``sum_q beta_q rho'(d_q)`` spread evenly over its taps (through
    ``Itilde``).

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    alpha, lam : float or array_like
        ``alpha >= 0`` and ``lam >= 0``, finite: a scalar (one per layer) or
        ``(C,)`` (one per channel). Learnable; each gradient has the shape and
        dtype passed (a scalar gives a 0-d array).
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool` (no dilation).
    asymmetric : bool
        Use the asymmetric ``rho`` (the paper's DPP variant favouring bright detail).
    eps : float
        ``> 0``; keeps ``rho`` and its gradient finite at ``d = 0``.
    data_format : {"channels_first", "channels_last"}

    Notes
    -----
    ``Itilde`` (the paper's "linearly down-scaled" image) is chosen to be the
    plain average of the window's own taps inside the input, so ``lam = 0``,
    or a window whose taps are all equal, gives that average. Padding and
    ceil-mode overhang take no part at all: not in the sums, the weights or
    ``Itilde``. Hence ``lam = 0`` is :func:`poolkit.ops.avg_pool` with
    ``count_include_pad=False``, and the result tends to it as ``alpha``
    grows.

    The weights are computed in log space and divided by the window's
    largest weight (``D`` does not change), so they neither overflow nor
    vanish: finite inputs whose window sums stay finite give finite outputs
    for any ``alpha``, ``lam`` and ``eps``, ``alpha = 0`` included, with no
    warning. ``d^2`` is capped at a quarter of the dtype's largest value and
    ``eps^2`` is kept within the normal range (in float32, ``eps`` below
    ``1.1e-19`` acts as ``1.1e-19``). ``dL/dalpha = sum_q g (I[q] - D) / S``
    can be truly out of range: with ``alpha = 0`` and a window's weight sum
    below ``1 / max`` of the dtype (about 3e-39 in float32) it is infinite.

    A window holding a NaN or an infinity gives NaN, silently, and NaN
    gradients, which then reach ``alpha``'s and ``lam``'s. float16 is
    computed in float32. An empty batch gives an empty output and zero
    parameter gradients. The backward pass keeps two output-sized arrays
    (the log of the largest weight and the scaled weight sum) and recomputes
    ``Itilde``.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.dpp import dpp_pool1d
    >>> x = np.array([[[0.0, 0.0, 0.0, 3.0]]])
    >>> dpp_pool1d(x, 1.0, 0.0, 4)             # lam = 0: the average
    array([[[0.75]]])
    >>> dpp_pool1d(x, 0.0, 1.0, 4).round(3)    # lam = 1: the outlier weighs 3x the others
    array([[[1.5]]])
    """
    return _dpp_pool(
        x,
        alpha,
        lam,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        asymmetric=asymmetric,
        eps=eps,
        data_format=data_format,
    )[0]


@dataclass(frozen=True)
class _Param:
    value: np.ndarray  # (1 or C,) in the compute dtype
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    alpha: _Param
    lam: _Param
    asym: bool
    eps: float
    lmax: np.ndarray  # log of the window's largest weight
    s: np.ndarray  # sum of the scaled weights (>= 1)
    y: np.ndarray


def _param(op: str, name: str, value: Any, channels: int, dtype: Any) -> _Param:
    a, gdtype = as_param(op, name, value, dtype)
    if a.shape not in ((), (channels,)):
        raise PoolingInputError(
            f"{op}: {name} must be a scalar (one per layer) or shaped (C,) = ({channels},) (one per "
            f"channel), got shape {a.shape}."
        )
    if not (np.isfinite(a).all() and (a >= 0).all()):
        raise PoolingConfigError(
            f"{op}: {name} must be finite and >= 0, got {np.asarray(value).tolist()!r}. "
            f"Keep it in range, e.g. with np.maximum({name}, 0) after each update."
        )
    return _Param(a.reshape(-1), a.shape, gdtype)


def _spread(p: np.ndarray, n: int, c: int, nd: int) -> np.ndarray:
    """A per-channel (or scalar) parameter as the free broadcast view ``(N, C, 1, ...)``."""
    return np.broadcast_to(p.reshape(1, p.size, *[1] * nd), (n, c, *[1] * nd))


def _window_mean(xb: np.ndarray, taps: Any, inv: np.ndarray, oshape: Any) -> np.ndarray:
    """Itilde: the average of each window's taps inside the input."""
    m = np.zeros(oshape, xb.dtype)
    for t in taps:
        m[at_taps(t.o)] += xb[at_taps(t.i)]
    m *= inv
    return m


def _limits(dtype: np.dtype, eps: float) -> tuple[Any, Any]:
    """``eps^2`` kept normal and finite, and the cap on ``d^2`` that keeps ``d^2 + eps^2`` finite."""
    info = np.finfo(dtype)
    big = float(info.max) / 4
    return dtype.type(min(max(eps * eps, float(info.tiny)), big)), dtype.type(big)


def _squared_deviation(
    xs: np.ndarray, m: np.ndarray, asym: bool, d: np.ndarray, q: np.ndarray, limits: Any
) -> None:
    """``d = I[q] - Itilde`` (``max(0, .)`` when asymmetric) and ``q = min(d^2, big) + eps^2``."""
    eps2, big = limits
    np.subtract(xs, m, out=d)
    if asym:
        np.maximum(d, 0, out=d)
    np.multiply(d, d, out=q)
    np.minimum(q, big, out=q)
    q += eps2


def _dpp_pool(
    x: Any,
    alpha: Any,
    lam: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    asymmetric: bool = False,
    eps: float = 1e-3,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "dpp_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    asym = check_bool(op, "asymmetric", asymmetric)
    eps = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
    n, c = batch.x.shape[:2]
    dtype = batch.x.dtype
    pa = _param(op, "alpha", alpha, c, dtype)
    pl = _param(op, "lam", lam, c, dtype)
    with np.errstate(divide="ignore"):
        log_alpha = np.log(pa.value)  # -inf for alpha = 0: that weight term vanishes
    taps = taps_nd(spec.axes)
    inv = (1.0 / tap_counts(spec.axes)).astype(dtype)[None, None]
    limits = _limits(dtype, eps)
    out_shape = (n, c, *spec.output_size)
    y = batch.empty(out_shape)
    keep = [batch.empty(out_shape) for _ in range(2)] if need_ctx else [None] * 2

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, la, hl = ins  # log(alpha), lam / 2
        yb = outs[0]
        m = _window_mean(xb, taps, inv, yb.shape)
        d, q = np.empty_like(m), np.empty_like(m)
        # The largest weight: rho grows with d^2 (with max(0, d)^2 when asymmetric) as lam >= 0.
        qmax = np.zeros(yb.shape, dtype)
        for t in taps:
            o = at_taps(t.o)
            _squared_deviation(xb[at_taps(t.i)], m[o], asym, d[o], q[o], limits)
            np.maximum(qmax[o], q[o], out=qmax[o])
        lmax = np.log(qmax, out=qmax)
        lmax *= hl
        np.maximum(lmax, la, out=lmax)
        ea = np.exp(la - lmax)  # alpha / the largest weight
        s = np.zeros(yb.shape, dtype)
        yb[...] = 0
        for t in taps:
            o = at_taps(t.o)
            xs = xb[at_taps(t.i)]
            do, qo = d[o], q[o]
            _squared_deviation(xs, m[o], asym, do, qo, limits)
            np.log(qo, out=qo)
            qo *= hl
            qo -= lmax[o]
            np.exp(qo, out=qo)  # rho / the largest weight, in (0, 1]
            qo += ea[o]
            s[o] += qo
            qo *= xs
            yb[o] += qo
        yb /= s
        if outs[1] is not None:
            outs[1][...] = lmax
            outs[2][...] = s

    with np.errstate(**QUIET):
        ins = [batch.x, _spread(log_alpha, n, c, nd), _spread(pl.value / 2, n, c, nd)]
        blockwise(block, ins, [y, *keep], channels_last=batch.channels_last)
    ctx = _Ctx(batch, spec, pa, pl, asym, eps, *keep, y) if need_ctx else None
    return batch.to_user(y), ctx


def _dpp_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.y.shape).astype(batch.x.dtype, copy=False)
    n, c = batch.x.shape[:2]
    nd, dtype, asym = batch.nd, batch.x.dtype, ctx.asym
    taps = taps_nd(ctx.spec.axes)
    inv = (1.0 / tap_counts(ctx.spec.axes)).astype(dtype)[None, None]
    limits = _limits(dtype, ctx.eps)
    with np.errstate(divide="ignore"):
        log_alpha = np.log(ctx.alpha.value)
    g_alpha = np.zeros(c)
    g_lam = np.zeros(c)
    gx = batch.empty(batch.x.shape, fill=0)

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, cb, la, lb, gb, lmb, sb, yb = ins
        gxb = outs[0]
        sl = block_channels(cb)
        hl = lb / 2
        mb = _window_mean(xb, taps, inv, gb.shape)  # recomputed: cheaper than storing it
        gs = np.divide(gb, sb)
        ea = np.exp(la - lmb)
        gm = np.zeros(gb.shape, dtype)  # the gradient reaching Itilde
        d, q, h, v = (np.empty(gb.shape, dtype) for _ in range(4))
        for t in taps:
            o = at_taps(t.o)
            i = at_taps(t.i)
            xs = xb[i]
            gxs = gxb[i]
            do, qo, ho, vo = d[o], q[o], h[o], v[o]
            _squared_deviation(xs, mb[o], asym, do, qo, limits)
            np.log(qo, out=ho)  # 2 log sqrt(d^2 + eps^2)
            np.multiply(ho, hl, out=vo)
            vo -= lmb[o]
            np.exp(vo, out=vo)  # rho / the largest weight
            w = np.add(vo, ea[o])
            w *= gs[o]
            gxs += w  # g w_q / S: I[q] as the weighted value
            np.subtract(xs, yb[o], out=w)
            w *= gs[o]
            w *= vo  # beta_q rho_q (scaled)
            g_lam[sl] += channel_dot(ho, w)
            do /= qo
            do *= lb
            do *= w  # beta_q rho'(d_q) = beta_q rho_q lam d / (d^2 + eps^2) (scaled)
            gxs += do
            gm[o] -= do
        # dD/dalpha = sum_q (I[q] - D) / S = count (Itilde - D) / S, S unscaled.
        ga = np.subtract(mb, yb, out=mb)
        ga *= gs
        ga /= inv
        g_alpha[sl] += channel_dot(ga, np.exp(np.negative(lmb, out=d), out=d))
        gm *= inv
        for t in taps:
            gxs = gxb[at_taps(t.i)]
            gxs += gm[at_taps(t.o)]

    with np.errstate(**QUIET):
        ins = [
            batch.x,
            channel_index(n, c, nd),
            _spread(log_alpha, n, c, nd),
            _spread(ctx.lam.value, n, c, nd),
            g,
            ctx.lmax,
            ctx.s,
            ctx.y,
        ]
        blockwise(block, ins, [gx], channels_last=batch.channels_last)
    grads = {"x": batch.to_user(gx)}
    g_lam /= 2  # h above is 2 log sqrt(d^2 + eps^2)
    for name, p, acc in (("alpha", ctx.alpha, g_alpha), ("lam", ctx.lam, g_lam)):
        grads[name] = (acc if p.shape else acc.sum()).reshape(p.shape).astype(p.dtype)
    return grads


_aliases = define(
    dpp_pool,
    _dpp_pool,
    _dpp_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    differentiable=("x", "alpha", "lam"),
    learnable=("alpha", "lam"),
    stochastic=False,
    example=lambda x: ((x, np.full(x.shape[1], 0.5), np.full(x.shape[1], 2.0)), {"kernel_size": 2}),
)
dpp_pool1d = _aliases["dpp_pool1d"]
dpp_pool2d = _aliases["dpp_pool2d"]
dpp_pool3d = _aliases["dpp_pool3d"]
