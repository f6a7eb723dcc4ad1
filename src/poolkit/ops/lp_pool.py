"""Power-average (Lp) pooling, correct for negative inputs and any p > 0."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_real
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import Winners, max_passes, max_passes_backward, sum_passes, sum_passes_backward
from ._input import Batch, check_grad, infer_ndim, prepare

__all__ = ["lp_pool", "lp_pool1d", "lp_pool2d", "lp_pool3d"]


def lp_pool(
    x: Any,
    norm_type: float,
    kernel_size: Any,
    stride: Any = None,
    ceil_mode: bool = False,
    *,
    padding: Any = 0,
    dilation: Any = 1,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Lp pooling: ``y = (sum over the window of |x|^p)^(1/p)``.

    ``norm_type=inf`` is the max of ``|x|``. Argument order follows
    ``torch.nn.functional.lp_pool2d(input, norm_type, kernel_size, stride,
    ceil_mode)``; ``padding`` and ``dilation`` are extensions (padding
    contributes 0 to the sum).

    Notes
    -----
    poolkit uses ``|x|``: PyTorch raises ``x`` itself to the power, which
    gives NaN for negative inputs with non-integer ``p`` (pytorch#184037)
    and a signed sum for odd ``p``. Where PyTorch is defined (``x >= 0``, or
    even integer ``p``) the two agree, except in ceil-mode windows that hang
    past the input: PyTorch rescales those sums by ``kernel_volume /
    taps_inside``, poolkit returns the plain sum of the taps inside.

    Gradient: ``dy/dx_i = sign(x_i) |x_i|^(p-1) * y / S`` with ``S`` the window
    sum; it is 0 where ``S = 0`` (pytorch#6765) and at ``x_i = 0``. For
    ``p=inf`` the gradient goes to the first largest ``|x|`` (max pooling's
    rule) times its sign.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import lp_pool1d
    >>> lp_pool1d(np.array([[[3.0, -4.0, 1.0, 0.0]]]), 2, 2)
    array([[[5., 1.]]])
    >>> lp_pool1d(np.array([[[-3.0, 2.0]]]), 0.5, 2)   # PyTorch: nan
    array([[[9.89897949]]])
    """
    return _lp_pool(
        x,
        norm_type,
        kernel_size,
        stride,
        ceil_mode,
        padding=padding,
        dilation=dilation,
        data_format=data_format,
    )[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    p: float
    scale: np.ndarray | None  # y / S, 0 where S = 0
    winners: Winners | None  # p = inf: the max passes' winners
    out_shape: tuple[int, ...]


def _lp_pool(
    x: Any,
    norm_type: Any,
    kernel_size: Any,
    stride: Any = None,
    ceil_mode: bool = False,
    *,
    padding: Any = 0,
    dilation: Any = 1,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "lp_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    p = check_real(op, "norm_type", norm_type, low=0.0, low_inclusive=False, allow_inf=True)
    nd = infer_ndim(op, x, ndim, kernel_size, stride, dilation)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, dilation, ceil_mode, op=op)
    cl = batch.channels_last
    if math.isinf(p):
        y, winners = max_passes(batch.x, spec.axes, batch.empty, need_ctx, cl, pre=np.abs)
        ctx = _Ctx(batch, spec, p, None, winners, y.shape) if need_ctx else None
        return batch.to_user(y), ctx

    def power(block: np.ndarray) -> np.ndarray:
        a = np.abs(block)
        if p == 2.0:
            return np.multiply(a, a, out=a)
        return a if p == 1.0 else np.power(a, a.dtype.type(p), out=a)

    s = sum_passes(batch.x, spec.axes, batch.empty, (), cl, pre=power)
    y = s.copy() if p == 1.0 else np.sqrt(s) if p == 2.0 else np.power(s, s.dtype.type(1.0 / p))
    ctx = None
    if need_ctx:
        scale = np.divide(y, s, out=s, where=s > 0)  # reuses S's memory
        ctx = _Ctx(batch, spec, p, scale, None, y.shape)
    return batch.to_user(y), ctx


def _times_signed_power(w: np.ndarray, x: np.ndarray, e: float) -> None:
    """``w *= sign(x) * |x|^e`` in place, with 0 at ``x = 0`` (also for ``e < 0``)."""
    t = np.abs(x)
    if e == 0.0:
        np.sign(x, out=t)
    else:
        if e < 0.0:  # |x|^e is infinite at 0, where the gradient is defined as 0
            np.power(t, t.dtype.type(e), out=t, where=t > 0)
        elif e != 1.0:
            np.power(t, t.dtype.type(e), out=t)
        np.copysign(t, x, out=t)
    np.multiply(w, t, out=w)


def _times_sign(w: np.ndarray, x: np.ndarray) -> None:
    np.multiply(w, np.sign(x), out=w)


def _lp_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    cl = batch.channels_last
    if ctx.winners is not None:  # p = inf: max of |x|
        gx = max_passes_backward(
            g, ctx.winners, ctx.spec.axes, batch.empty, cl, post=_times_sign, post_ins=[batch.x]
        )
        return {"x": batch.to_user(gx)}
    # dy/dS = y / (p S); dS/dx = p sign(x) |x|^(p-1): the p cancels.
    w = np.multiply(g, ctx.scale)
    e = ctx.p - 1.0
    gx = sum_passes_backward(
        w,
        ctx.spec.axes,
        batch.empty,
        (),
        cl,
        post=lambda gb, xb: _times_signed_power(gb, xb, e),
        post_ins=[batch.x],
    )
    return {"x": batch.to_user(gx)}


_aliases = define(
    lp_pool,
    _lp_pool,
    _lp_pool_backward,
    family="classic",
    backends=("numpy", "torch", "keras"),
    example=lambda x: ((x,), {"norm_type": 2.0, "kernel_size": 2}),
)
lp_pool1d = _aliases["lp_pool1d"]
lp_pool2d = _aliases["lp_pool2d"]
lp_pool3d = _aliases["lp_pool3d"]
