"""Whole-window taps, for operators that are not separable over axes.

SoftPool, LSE, LIP, stochastic, gated/tree and detail-preserving pooling
weigh each tap by something that depends on the whole window, so they loop
over the window's taps (the product of each axis's taps) instead of running
one pass per axis. Tap ``k`` of every window is still one strided view of
the input, so a loop over taps touches output-sized views and never builds
a kernel-volume copy; run it inside :func:`poolkit.ops._engine.blockwise` to
keep the views in cache.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..geometry import AxisWindow
from ._axes import plan

__all__ = ["TapND", "taps_nd", "at_taps", "tap_counts"]


@dataclass(frozen=True)
class TapND:
    """One tap of every window: offsets ``k`` per axis, ``flat`` its row-major number.

    ``o`` are the output slices whose window has this tap inside the input,
    ``i`` the matching strided input slices (one per spatial axis).
    """

    k: tuple[int, ...]
    flat: int
    o: tuple[slice, ...]
    i: tuple[slice, ...]


@lru_cache(maxsize=256)
def _taps(axes: tuple[AxisWindow, ...]) -> tuple[TapND, ...]:
    per_axis = [plan(ax).taps for ax in axes]
    kernel = [ax.kernel for ax in axes]
    out = []
    for combo in itertools.product(*per_axis):
        k = tuple(t.k for t in combo)
        flat = int(np.ravel_multi_index(k, kernel)) if k else 0
        out.append(TapND(k, flat, tuple(t.o for t in combo), tuple(t.i for t in combo)))
    return tuple(out)


def taps_nd(axes: Sequence[AxisWindow]) -> tuple[TapND, ...]:
    """Every tap with at least one valid output, in row-major window order."""
    return _taps(tuple(axes))


def at_taps(slices: Sequence[slice]) -> tuple[slice, ...]:
    """Index for a channels-first ``(N, C, *spatial)`` array: all of N and C, then ``slices``."""
    return (slice(None), slice(None), *slices)


def tap_counts(axes: Sequence[AxisWindow]) -> np.ndarray:
    """Number of taps inside the input for each window, shaped like the spatial output."""
    out = np.ones([ax.out for ax in axes], dtype=np.int64)
    for a, ax in enumerate(axes):
        shape = [1] * len(axes)
        shape[a] = ax.out
        out = out * ax.counts(False).reshape(shape)
    return out
