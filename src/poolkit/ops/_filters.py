"""Learned window filters shared by gated, tree and detail-preserving pooling.

Filter shapes (shared or per channel), the window dot product
``sum_k w_k x_tap_k`` over a block and its backward, a stable sigmoid, and
layout helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PoolingInputError
from ._input import Batch
from ._taps import TapND, at_taps

__all__ = [
    "QUIET",
    "Filters",
    "as_param",
    "check_filters",
    "tap_layout",
    "filter_grads",
    "channel_index",
    "block_channels",
    "for_block",
    "window_dots",
    "window_dots_backward",
    "channel_dot",
    "gate",
    "to_layout",
    "from_layout",
]

# Non-finite inputs give the documented NaN/inf results without NumPy warnings; underflow
# (saturated gates, exp(-large)) is exact enough at 0.
QUIET = {"under": "ignore", "over": "ignore", "invalid": "ignore"}


@dataclass(frozen=True)
class Filters:
    """A learned filter argument: ``value`` as ``(J, Cw, K)`` in the compute dtype.

    ``Cw`` is 1 (one filter for every channel) or ``C`` (one per channel);
    ``shape``/``dtype`` are what the caller passed (the gradient's).
    """

    value: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    per_channel: bool


def as_param(op: str, name: str, value: Any, dtype: Any) -> tuple[np.ndarray, np.dtype]:
    """A real array argument in the compute ``dtype``, and the dtype its gradient takes."""
    a = np.asarray(value)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise PoolingInputError(
            f"{op}: {name} must be a real-valued array, got dtype {a.dtype}. Convert with "
            f"np.asarray({name}, dtype=np.float32)."
        )
    gdtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(dtype)
    return a.astype(dtype, copy=False), gdtype


def check_filters(
    op: str, name: str, value: Any, kernel: tuple[int, ...], channels: int, dtype: Any, lead: str | None
) -> Filters:
    """Validate ``value`` shaped ``(*lead, *kernel)`` or ``(*lead, C, *kernel)``.

    ``lead`` names one leading filter axis (e.g. ``"L"``) or is None (a single filter).
    """
    a, gdtype = as_param(op, name, value, dtype)
    nl = 0 if lead is None else 1
    pre = "" if lead is None else f"{lead}, "
    shared = f"({pre}{', '.join(map(str, kernel))})"
    per = f"({pre}{channels}, {', '.join(map(str, kernel))})"
    per_channel = a.ndim == nl + len(kernel) + 1
    ok = a.ndim in (nl + len(kernel), nl + len(kernel) + 1) and a.shape[a.ndim - len(kernel) :] == kernel
    if ok and per_channel:
        ok = a.shape[nl] == channels
    if not ok:
        raise PoolingInputError(
            f"{op}: {name} must have shape {shared} (shared by every channel) or {per} (one per "
            f"channel), with kernel_size={kernel} and C={channels}, got shape {a.shape}."
        )
    j = 1 if lead is None else a.shape[0]
    flat = a.reshape(j, channels if per_channel else 1, int(np.prod(kernel)))
    return Filters(flat, a.shape, gdtype, per_channel)


def tap_layout(filters: Sequence[Filters], nd: int) -> np.ndarray:
    """Stack filters (channels broadcast to a common count) as ``(J, K, 1, Cw, 1, ...)``.

    Entry ``[j, k]`` then broadcasts against a block's ``(Nb, Cb, *out)`` views
    once its channel axis is cut like the block (:func:`for_block`).
    """
    cw = max(f.value.shape[1] for f in filters)
    stacked = np.concatenate(
        [np.broadcast_to(f.value, (f.value.shape[0], cw, f.value.shape[2])) for f in filters]
    )
    j, _, k = stacked.shape
    return np.ascontiguousarray(np.moveaxis(stacked, 2, 1)).reshape(j, k, 1, cw, *[1] * nd)


def filter_grads(acc: np.ndarray, filters: Sequence[Filters]) -> list[np.ndarray]:
    """Per-channel sums ``(J, C, K)`` back to each argument's own shape and dtype."""
    out, j0 = [], 0
    for f in filters:
        part = acc[j0 : j0 + f.value.shape[0]]
        j0 += f.value.shape[0]
        if not f.per_channel:
            part = part.sum(axis=1)
        out.append(part.reshape(f.shape).astype(f.dtype))
    return out


def channel_index(n: int, c: int, nd: int) -> np.ndarray:
    """``(N, C, 1, ...)`` channel numbers (a free broadcast view); ``blockwise`` cuts it like the data,
    so a block learns which channels it holds (:func:`block_channels`)."""
    return np.broadcast_to(np.arange(c).reshape(1, c, *[1] * nd), (n, c, *[1] * nd))


def block_channels(cb: np.ndarray) -> slice:
    first = cb[0].reshape(-1)
    return slice(int(first[0]), int(first[-1]) + 1)


def for_block(taps_w: np.ndarray, sl: slice) -> np.ndarray:
    return taps_w[:, :, :, sl] if taps_w.shape[3] > 1 else taps_w


def window_dots(
    xb: np.ndarray, taps: Sequence[TapND], wb: np.ndarray, oshape: Sequence[int]
) -> list[np.ndarray]:
    """``r_j = sum_k wb[j, k] x_k`` over each window's taps inside the input (padding counts as 0)."""
    r = [np.zeros(oshape, xb.dtype) for _ in range(wb.shape[0])]
    tmp = np.empty(oshape, xb.dtype)
    for t in taps:
        o = at_taps(t.o)
        xs = xb[at_taps(t.i)]
        tv = tmp[o]
        for j, rj in enumerate(r):
            np.multiply(xs, wb[j, t.flat], out=tv)
            rj[o] += tv
    return r


def window_dots_backward(
    xb: np.ndarray,
    taps: Sequence[TapND],
    wb: np.ndarray,
    coefs: Sequence[np.ndarray],
    gxb: np.ndarray,
    acc: np.ndarray,
    sl: slice,
) -> None:
    """Adjoint of :func:`window_dots` for upstream ``coefs[j]`` (one per filter).

    ``gx_k += sum_j coefs[j] wb[j, k]`` into ``gxb``; ``acc[j, sl, k] += sum coefs[j] x_k`` over
    the block's samples and windows (per channel, float64).
    """
    tmp = np.empty_like(coefs[0])
    for t in taps:
        o = at_taps(t.o)
        i = at_taps(t.i)
        xs = xb[i]
        gxs = gxb[i]
        tv = tmp[o]
        for j, c in enumerate(coefs):
            cj = c[o]
            acc[j, sl, t.flat] += channel_dot(cj, xs)
            np.multiply(cj, wb[j, t.flat], out=tv)
            gxs += tv


def channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum(a * b)`` over every axis but the channel axis 1, without an ``a * b`` temporary."""
    sp = "defgh"[: a.ndim - 2]
    return np.einsum(f"nc{sp},nc{sp}->c", a, b)


def gate(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sigmoid(z)``, ``1 - sigmoid(z)`` and ``sigmoid'(z)`` without overflow, each accurate when
    saturated: with ``e = exp(-|z|)`` they are ``1/(1+e)`` or ``e/(1+e)``, and ``e/(1+e)^2``."""
    e = np.abs(z)
    np.negative(e, out=e)
    np.exp(e, out=e)
    a = (z >= 0).astype(z.dtype)  # arithmetic, not a masked select
    a *= 1 - e  # 1 - e where z >= 0, else 0
    inv = 1 / (1 + e)
    s = (e + a) * inv
    sc = (1 - a) * inv
    e *= inv
    e *= inv
    return s, sc, e


def to_layout(batch: Batch, a: np.ndarray) -> np.ndarray:
    """Channels-first view -> a batched array in the user's layout (no copy)."""
    return np.moveaxis(a, 1, -1) if batch.channels_last else a


def from_layout(batch: Batch, a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, 1) if batch.channels_last else a
