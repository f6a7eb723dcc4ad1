"""Axis structures for the window engine: how the windows of one axis read their input.

Two kinds of axis:

* :class:`~poolkit.geometry.AxisWindow`: regular sliding windows. Tap ``k``
  of every window is one strided slice of the input (:func:`plan` lists
  them, and how a backward pass writes each input position once).
* :class:`GatherAxis`: windows with irregular starts (adaptive bins,
  fractional pooling); each tap is a gather, and the transposed structure
  (the run of windows holding each input) lets backward passes gather
  instead of scatter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import numpy as np

from ..geometry import AxisWindow, adaptive_bins

Alloc = Callable[..., np.ndarray]
Axis = Union[AxisWindow, "GatherAxis"]

__all__ = [
    "Alloc",
    "Axis",
    "GatherAxis",
    "Tap",
    "Plan",
    "adaptive_axis",
    "fractional_axis",
    "gather",
    "plan",
    "at",
    "bshape",
    "out_shape",
    "arg_dtype",
    "first_tap_init",
    "has_empty_windows",
]


def bshape(ndim: int, axis: int, n: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = n
    return tuple(shape)


def arg_dtype(n: int) -> type:
    return np.int8 if n < 127 else np.int16 if n < 32767 else np.int32


@dataclass(frozen=True)
class GatherAxis:
    """Windows with irregular starts along one axis.

    ``index[k]`` holds, for every output, the input position of tap ``k``
    (shaped to broadcast against the pass output, so ``index[0]`` are the
    window starts); ``mask[k]`` says which outputs own tap ``k`` (``None``:
    all). Positions of masked-out taps are clamped into the window, so a
    max needs no mask. ``transpose`` is the structure seen from the input
    side: for each input, the run of outputs whose window holds it (a run,
    because window starts and ends never decrease), with ``offsets[t]`` the
    input's tap offset in the window of output ``index[t]``; backward
    passes gather through it instead of scattering.
    """

    size: int
    out: int
    index: tuple[np.ndarray, ...]
    mask: tuple[np.ndarray | None, ...]
    lengths: np.ndarray
    transpose: GatherAxis | None = None
    offsets: tuple[np.ndarray, ...] = ()

    @property
    def kernel(self) -> int:
        return len(self.index)

    @property
    def per_plane(self) -> bool:
        """Whether the windows differ per (batch, channel) plane."""
        return any(n != 1 for n in self.index[0].shape[:2])

    def planes(self, b: tuple[slice, slice]) -> GatherAxis:
        """The same windows for a block of (batch, channel) planes."""
        if not self.per_plane:
            return self

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[b]

        return GatherAxis(
            self.size,
            self.out,
            tuple(cut(a) for a in self.index),
            tuple(cut(a) for a in self.mask),
            self.lengths[b] if self.lengths.ndim > 1 else self.lengths,
            None if self.transpose is None else self.transpose.planes(b),
            tuple(cut(a) for a in self.offsets),
        )


def _runs(
    starts: np.ndarray, stops: np.ndarray, size: int, nd: int, axis: int, kmax: int, transpose: bool
) -> GatherAxis:
    """A :class:`GatherAxis` from window bounds ``[starts, stops)`` along the last dim.

    ``starts``/``stops`` have shape ``lead + (out,)``, ``lead`` being ``()``
    (the same windows for every plane) or ``(N, C)``; neither decreases.
    """
    out = starts.shape[-1]
    lead = starts.shape[:-1]
    lengths = stops - starts

    def shaped(a: np.ndarray, n: int) -> np.ndarray:
        a = np.moveaxis(a, -1, 0).reshape((n, *lead, *([1] * (nd - len(lead) - 1))))
        return np.moveaxis(a, 0, axis)

    index, mask = [], []
    for k in range(max(kmax, 1)):
        index.append(shaped(np.minimum(starts + k, np.maximum(stops - 1, starts)).astype(np.intp), out))
        m = lengths > k
        mask.append(None if m.all() else shaped(m, out))
    ax = GatherAxis(size, out, tuple(index), tuple(mask), lengths)
    if not transpose:
        return ax
    # Input i lies in the windows of outputs [#(stops <= i), #(starts <= i)).
    i = np.arange(size)
    if lead:
        o_hi = (starts[..., None, :] <= i[:, None]).sum(-1)
        o_lo = (stops[..., None, :] <= i[:, None]).sum(-1)
    else:
        o_hi = np.searchsorted(starts, i, side="right")
        o_lo = np.searchsorted(stops, i, side="right")
    run = np.maximum(o_hi - o_lo, 0)
    tr = _runs(o_lo, o_lo + run, out, nd, axis, int(run.max()) if run.size else 0, False)
    offsets = []
    for t in range(tr.kernel):
        o = np.clip(o_lo + t, 0, max(out - 1, 0))
        first = np.take_along_axis(starts, o, -1) if lead else starts[o]
        offsets.append(shaped(np.clip(i - first, 0, max(kmax - 1, 0)).astype(arg_dtype(kmax)), size))
    return GatherAxis(size, out, ax.index, ax.mask, lengths, tr, tuple(offsets))


def adaptive_axis(size: int, out: int, ndim: int, axis: int) -> GatherAxis:
    """Adaptive bins ``[floor(i*In/Out), ceil((i+1)*In/Out))`` as a :class:`GatherAxis`."""
    starts, stops = adaptive_bins(size, out)
    return _runs(starts, stops, size, ndim, axis, int((stops - starts).max()), True)


def fractional_axis(starts: np.ndarray, kernel: int, size: int, ndim: int, axis: int) -> GatherAxis:
    """Fixed-size windows at per-plane starts ``(N, C, out)`` (fractional max pooling)."""
    return _runs(starts, starts + kernel, size, ndim, axis, kernel, True)


def gather(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    """``x`` at positions ``idx`` along ``axis`` (a new array); ``idx`` broadcasts against it."""
    if all(n == 1 for d, n in enumerate(idx.shape) if d != axis):
        return np.take(x, idx.reshape(-1), axis=axis)  # one table for every plane
    shape = list(x.shape)
    shape[axis] = idx.shape[axis]
    return np.take_along_axis(x, np.broadcast_to(idx, shape), axis)


def out_shape(shape: Sequence[int], axis: int, n: int) -> tuple[int, ...]:
    s = list(shape)
    s[axis] = n
    return tuple(s)


# --------------------------------------------------------------------------- regular axes
#
# A backward pass writes every input position once ("write" the first tap
# of each residue class modulo the stride, zero what it does not reach, then
# "add" the taps that overlap it) instead of zero-filling and accumulating.


@dataclass(frozen=True)
class Tap:
    k: int
    o: slice  # the outputs this tap serves
    i: slice  # the input samples they read (strided)


@dataclass(frozen=True)
class Plan:
    taps: tuple[Tap, ...]  # taps with at least one valid output, in window order
    uncovered: tuple[slice, ...]  # outputs the first tap does not serve
    writes: tuple[Tap, ...]  # backward: first tap of each residue class writes...
    zeros: tuple[slice, ...]  # ...positions no first tap writes are zeroed...
    adds: tuple[Tap, ...]  # ...and the other taps accumulate


@lru_cache(maxsize=512)
def plan(ax: AxisWindow) -> Plan:
    """The taps of ``ax`` as strided slices, and the write/zero/add order of its backward pass."""
    s = ax.stride
    taps = tuple(
        Tap(k, slice(o_lo, o_hi), slice(i_lo, i_lo + (o_hi - o_lo - 1) * s + 1, s))
        for k, (o_lo, o_hi, i_lo) in enumerate(ax.taps)
        if o_hi > o_lo
    )
    first = taps[0].o if taps else slice(0, ax.out)
    uncovered = tuple(sl for sl in (slice(0, first.start), slice(first.stop, ax.out)) if sl.stop > sl.start)
    writes, adds, zeros = [], [], []
    by_class: dict[int, list[Tap]] = {}
    for t in taps:
        by_class.setdefault(t.i.start % s, []).append(t)
    for r in range(min(s, ax.size)):
        n = len(range(r, ax.size, s))  # samples of residue class r
        group = by_class.get(r, [])
        if not group:
            zeros.append(slice(r, ax.size, s))
            continue
        head = group[0]
        writes.append(head)
        adds.extend(group[1:])
        q_lo = (head.i.start - r) // s
        q_hi = q_lo + (head.o.stop - head.o.start)
        if q_lo > 0:
            zeros.append(slice(r, r + (q_lo - 1) * s + 1, s))
        if q_hi < n:
            zeros.append(slice(r + q_hi * s, ax.size, s))
    return Plan(taps, uncovered, tuple(writes), tuple(zeros), tuple(adds))


def at(nd: int, axis: int, sl: slice) -> tuple[slice, ...]:
    """Index selecting ``sl`` along ``axis`` of an ``nd``-dimensional array."""
    idx = [slice(None)] * nd
    idx[axis] = sl
    return tuple(idx)


def first_tap_init(arg: np.ndarray, ax: AxisWindow, axis: int) -> None:
    """Winners before any tap: PyTorch's first non-negative tap of each window."""
    arg[...] = ax.first_tap.reshape(bshape(arg.ndim, axis, ax.out)).astype(arg.dtype)


def has_empty_windows(ax: Axis) -> bool:
    """Whether some window of this axis has no tap inside the input (dilation + padding)."""
    if isinstance(ax, GatherAxis):
        return False
    return not bool((ax.starts + ax.first_tap * ax.dilation < ax.size).all())
