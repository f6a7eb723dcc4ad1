"""The window engine: separable passes over strided views.

Every box-window reduction here is done one spatial axis at a time. Along
an axis, a window is a set of *taps*; tap ``k`` of every window is one
strided slice of the input (``AxisWindow.taps``), so a pass folds ``kernel``
slices into the output with an in-place ufunc. Padding is never built: a
tap's slice simply skips the outputs whose tap falls in padding. Nothing
here materialises a kernel-volume copy of the input.

Max over a box is the max over axes in turn, so it is exact to reduce the
innermost axis first and then the outer ones; the winner bookkeeping keeps
PyTorch's rule exactly (first maximum in row-major window order, a NaN wins
and the *last* NaN in row-major order is reported) because the innermost
pass picks per row and the outer pass picks the first row that holds the
maximum (or the last row holding a NaN).

Two kinds of axis:

* ``AxisWindow`` (geometry): regular sliding windows; winners stored as the
  tap offset ``k`` (a small int), gradients routed back per offset with
  ``np.add(..., where=arg == k)``, no scatter.
* :class:`GatherAxis`: windows with irregular starts (adaptive bins,
  fractional pooling); each tap is gathered with ``take_along_axis``,
  winners stored as input positions and gradients scattered with
  ``np.bincount`` (exact and deterministic, summing in output order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry import AxisWindow, adaptive_bins

Alloc = Callable[..., np.ndarray]

__all__ = [
    "GatherAxis",
    "adaptive_axis",
    "fractional_axis",
    "max_pass",
    "max_pass_backward",
    "sum_pass",
    "sum_pass_backward",
    "compose_indices",
]


def _sl(ndim: int, axis: int, start: int, stop: int, step: int = 1) -> tuple[slice, ...]:
    idx = [slice(None)] * ndim
    idx[axis] = slice(start, stop, step)
    return tuple(idx)


def _bshape(ndim: int, axis: int, n: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = n
    return tuple(shape)


def _arg_dtype(n: int) -> type:
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
    for k in range(kmax):
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
        offsets.append(shaped(np.clip(i - first, 0, max(kmax - 1, 0)).astype(_arg_dtype(kmax)), size))
    return GatherAxis(size, out, ax.index, ax.mask, lengths, tr, tuple(offsets))


def adaptive_axis(size: int, out: int, ndim: int, axis: int) -> GatherAxis:
    """Adaptive bins ``[floor(i*In/Out), ceil((i+1)*In/Out))`` as a :class:`GatherAxis`."""
    starts, stops = adaptive_bins(size, out)
    return _runs(starts, stops, size, ndim, axis, int((stops - starts).max()), True)


def fractional_axis(starts: np.ndarray, kernel: int, size: int, ndim: int, axis: int) -> GatherAxis:
    """Fixed-size windows at per-plane starts ``(N, C, out)`` (fractional max pooling)."""
    return _runs(starts, starts + kernel, size, ndim, axis, kernel, True)


def _out_shape(shape: Sequence[int], axis: int, n: int) -> tuple[int, ...]:
    s = list(shape)
    s[axis] = n
    return tuple(s)


# --------------------------------------------------------------------------- max


def max_pass(
    x: np.ndarray, axis: int, ax: AxisWindow | GatherAxis, alloc: Alloc, track: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Max over the windows of one axis; with ``track``, the winners too.

    Regular axes record the winning tap offset, gather axes the winning
    input position.
    """
    shape = _out_shape(x.shape, axis, ax.out)
    y = alloc(shape, x.dtype, -np.inf)
    if isinstance(ax, GatherAxis):
        arg = alloc(shape, _arg_dtype(ax.kernel), 0) if track else None
        for k, (idx, m) in enumerate(zip(ax.index, ax.mask)):
            xk = _gather(x, idx, axis)
            if track:
                upd = np.greater(xk, y)
                upd |= np.isnan(xk)
                if m is not None:
                    upd &= m
                np.copyto(y, xk, where=upd)
                np.copyto(arg, k, where=upd)
            else:
                np.maximum(y, xk, out=y)
        return y, arg

    nd = x.ndim
    s = ax.stride
    for o_lo, o_hi, i_lo in ax.taps:
        if o_hi <= o_lo:
            continue
        ys = y[_sl(nd, axis, o_lo, o_hi)]
        np.maximum(ys, x[_sl(nd, axis, i_lo, i_lo + (o_hi - o_lo - 1) * s + 1, s)], out=ys)
    if not track:
        return y, None
    # Winners: scanning taps from last to first and overwriting where the tap
    # equals the maximum leaves the *first* maximum; windows with no valid tap
    # keep PyTorch's first non-negative tap.
    arg = alloc(shape, _arg_dtype(ax.kernel))
    arg[...] = ax.first_tap.reshape(_bshape(nd, axis, ax.out)).astype(arg.dtype)
    for k in range(ax.kernel - 1, -1, -1):
        o_lo, o_hi, i_lo = ax.taps[k]
        if o_hi <= o_lo:
            continue
        xs = x[_sl(nd, axis, i_lo, i_lo + (o_hi - o_lo - 1) * s + 1, s)]
        np.copyto(arg[_sl(nd, axis, o_lo, o_hi)], k, where=np.equal(xs, y[_sl(nd, axis, o_lo, o_hi)]))
    if np.isnan(y).any():
        # A NaN wins and PyTorch reports the last one: scan forwards.
        for k, (o_lo, o_hi, i_lo) in enumerate(ax.taps):
            if o_hi <= o_lo:
                continue
            xs = x[_sl(nd, axis, i_lo, i_lo + (o_hi - o_lo - 1) * s + 1, s)]
            np.copyto(arg[_sl(nd, axis, o_lo, o_hi)], k, where=np.isnan(xs))
    return y, arg


def _gather(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    """``x`` at positions ``idx`` along ``axis``; ``idx`` broadcasts against the result."""
    if all(n == 1 for d, n in enumerate(idx.shape) if d != axis):
        return np.take(x, idx.reshape(-1), axis=axis)  # one table for every plane
    shape = list(x.shape)
    shape[axis] = idx.shape[axis]
    return np.take_along_axis(x, np.broadcast_to(idx, shape), axis)


def max_pass_backward(
    g: np.ndarray,
    arg: np.ndarray,
    axis: int,
    ax: AxisWindow | GatherAxis,
    in_shape: Sequence[int],
    alloc: Alloc,
) -> np.ndarray:
    """Route each output gradient to its window's winner along one axis."""
    if isinstance(ax, GatherAxis):
        return _max_gather_backward(g, arg, axis, ax, tuple(in_shape), alloc)
    nd = g.ndim
    gx = alloc(tuple(in_shape), g.dtype, 0)
    s = ax.stride
    for k, (o_lo, o_hi, i_lo) in enumerate(ax.taps):
        if o_hi <= o_lo:
            continue
        dst = gx[_sl(nd, axis, i_lo, i_lo + (o_hi - o_lo - 1) * s + 1, s)]
        osl = _sl(nd, axis, o_lo, o_hi)
        np.add(dst, g[osl], out=dst, where=np.equal(arg[osl], k))
    return gx


def _max_gather_backward(
    g: np.ndarray, arg: np.ndarray, axis: int, ax: GatherAxis, in_shape: tuple[int, ...], alloc: Alloc
) -> np.ndarray:
    """Each input sums, in output order, the gradients of the windows it won."""
    tr = ax.transpose
    assert tr is not None
    gx = alloc(in_shape, g.dtype, 0)
    for idx, off, m in zip(tr.index, ax.offsets, tr.mask):
        won = np.equal(_gather(arg, idx, axis), off)
        if m is not None:
            won &= m
        np.add(gx, _gather(g, idx, axis), out=gx, where=won)
    return gx


# --------------------------------------------------------------------------- sum


def sum_pass(x: np.ndarray, axis: int, ax: AxisWindow | GatherAxis, alloc: Alloc) -> np.ndarray:
    """Sum over the windows of one axis (padding and overhang contribute 0)."""
    shape = _out_shape(x.shape, axis, ax.out)
    y = alloc(shape, x.dtype, 0)
    if isinstance(ax, GatherAxis):
        for idx, m in zip(ax.index, ax.mask):
            np.add(y, _gather(x, idx, axis), out=y, where=True if m is None else m)
        return y
    nd = x.ndim
    s = ax.stride
    for o_lo, o_hi, i_lo in ax.taps:
        if o_hi <= o_lo:
            continue
        ys = y[_sl(nd, axis, o_lo, o_hi)]
        np.add(ys, x[_sl(nd, axis, i_lo, i_lo + (o_hi - o_lo - 1) * s + 1, s)], out=ys)
    return y


def sum_pass_backward(
    g: np.ndarray, axis: int, ax: AxisWindow | GatherAxis, in_shape: Sequence[int], alloc: Alloc
) -> np.ndarray:
    """Adjoint of :func:`sum_pass`: every tap receives its window's gradient."""
    in_shape = tuple(in_shape)
    if isinstance(ax, GatherAxis):
        assert ax.transpose is not None
        return sum_pass(g, axis, ax.transpose, alloc)
    nd = g.ndim
    gx = alloc(in_shape, g.dtype, 0)
    s = ax.stride
    for o_lo, o_hi, i_lo in ax.taps:
        if o_hi <= o_lo:
            continue
        dst = gx[_sl(nd, axis, i_lo, i_lo + (o_hi - o_lo - 1) * s + 1, s)]
        np.add(dst, g[_sl(nd, axis, o_lo, o_hi)], out=dst)
    return gx


# --------------------------------------------------------------------------- indices


def compose_indices(
    args: Sequence[np.ndarray], axes: Sequence[AxisWindow | GatherAxis], spatial: Sequence[int]
) -> np.ndarray:
    """Per-plane flat index (PyTorch's format) of each output's winner.

    ``args[j]`` is the winner array of the pass over spatial axis ``j``; the
    passes ran from the last spatial axis to the first, so the outer winners
    say which row of an inner pass to read.
    """
    nd = len(axes)
    out_shape = args[0].shape[:2] + tuple(a.out for a in axes)
    full = len(out_shape)
    coords: list[np.ndarray | None] = [None] * nd
    valid = np.ones((1,) * full, dtype=bool)
    for j in range(nd):  # outermost axis first
        ax = axes[j]
        arg = args[j]
        if j > 0:
            index = []
            for d in range(full):
                if d >= 2 and d - 2 < j:
                    index.append(np.clip(coords[d - 2], 0, spatial[d - 2] - 1))
                else:
                    index.append(np.arange(out_shape[d]).reshape(_bshape(full, d, out_shape[d])))
            arg = arg[tuple(index)]
        if isinstance(ax, GatherAxis):
            c = np.broadcast_to(ax.index[0] + arg.astype(np.int64), out_shape)
        else:
            o = np.arange(ax.out).reshape(_bshape(full, 2 + j, ax.out))
            c = ax.starts[o] + arg.astype(np.int64) * ax.dilation
            first = ax.starts[o] + ax.first_tap[o] * ax.dilation
            c = np.where(valid, c, first)
        coords[j] = c
        valid = valid & (c >= 0) & (c < spatial[j])
    flat = np.zeros(out_shape, dtype=np.int64)
    for j in range(nd):
        flat = flat * spatial[j] + coords[j]
    return flat
