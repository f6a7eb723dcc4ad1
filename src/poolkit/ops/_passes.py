"""One-axis passes of the window engine: max and sum, forward and backward.

A pass folds the taps of one axis into its output with in-place ufuncs.
Three facts about NumPy on this machine shape the code (measured on
25M-element float32 arrays):

* masked operations (``copyto(where=)``, ``np.where``, ufuncs with
  ``where=``) cost 5-10x a plain pass, so winners are tracked with int8
  arithmetic (:func:`take_if`) and masks enter as multiplications;
* ``np.maximum``/``np.greater`` lose their SIMD loops on views strided in
  every axis (26 ms against 6 ms), while strided ``copyto`` and ``add`` do
  not, so such taps are compared through a dense copy;
* fresh memory costs a page fault per page, so outputs are written once.

Winner rule (PyTorch's, for non-NaN data): the first maximum in row-major
window order. A pass takes taps in window order and a tap wins only by a
strict increase; run innermost axis first, the passes compose to the
row-major rule (the inner pass picks the first maximum of each row, the
outer one the first row holding the maximum). NaNs are left to
:func:`max_pass_nan`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._axes import Alloc, Axis, GatherAxis, arg_dtype, at, first_tap_init, gather, out_shape, plan

__all__ = [
    "max_pass",
    "max_pass_nan",
    "max_pass_backward",
    "sum_pass",
    "sum_pass_backward",
    "take_if",
]


def _unit_stride(a: np.ndarray) -> bool:
    """Whether some axis of ``a`` is contiguous (NumPy's comparison loops then vectorise)."""
    return a.size <= 1 or any(st == a.itemsize and n > 1 for st, n in zip(a.strides, a.shape))


def _new(
    alloc: Alloc, out: np.ndarray | None, shape: tuple[int, ...], dtype: Any, fill: Any = None
) -> np.ndarray:
    if out is None:
        return alloc(shape, dtype, fill)
    if fill is not None:
        out[...] = fill
    return out


def take_if(a: np.ndarray, k: int, cond: np.ndarray) -> None:
    """Record tap ``k`` where it became the window's best.

    Taps arrive in window order, so the winner is the last tap that became
    the best: the largest ``k`` with ``cond``. Every ``k`` seen here is at
    least the window's initial value, hence ``a = max(a, k * cond)``.
    """
    if k == 1 and a.dtype == np.int8:
        np.maximum(a, cond.view(np.int8), out=a)
    else:
        np.maximum(a, np.multiply(cond, a.dtype.type(k)), out=a)


class _Dense:
    """Hands out dense copies of taps strided in every axis (one reused buffer)."""

    def __init__(self, alloc: Alloc, shape: tuple[int, ...], axis: int) -> None:
        self.alloc, self.shape, self.axis = alloc, shape, axis
        self.buffer: np.ndarray | None = None

    def __call__(self, view: np.ndarray, o: slice) -> np.ndarray:
        if _unit_stride(view):
            return view
        if self.buffer is None:
            self.buffer = self.alloc(self.shape, view.dtype)
        dense = self.buffer[at(self.buffer.ndim, self.axis, o)]
        np.copyto(dense, view)
        return dense


def max_pass(
    x: np.ndarray,
    axis: int,
    ax: Axis,
    alloc: Alloc,
    track: bool,
    out: np.ndarray | None = None,
    arg_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Max over the windows of one axis; with ``track``, each window's winning tap."""
    shape = out_shape(x.shape, axis, ax.out)
    if isinstance(ax, GatherAxis):
        return _max_gather(x, axis, ax, alloc, track, shape, out, arg_out)
    nd = x.ndim
    p = plan(ax)
    y = _new(alloc, out, shape, x.dtype, None if p.taps else -np.inf)
    arg = None
    if track:
        arg = _new(alloc, arg_out, shape, arg_dtype(ax.kernel))
        first_tap_init(arg, ax, axis)
    if p.taps:
        head = p.taps[0]
        np.copyto(y[at(nd, axis, head.o)], x[at(nd, axis, head.i)])
    for sl in p.uncovered:
        y[at(nd, axis, sl)] = -np.inf
    dense = _Dense(alloc, shape, axis)
    for t in p.taps[1:]:
        o = at(nd, axis, t.o)
        ys = y[o]
        xs = dense(x[at(nd, axis, t.i)], t.o)
        if arg is not None:
            take_if(arg[o], t.k, np.greater(xs, ys))
        np.maximum(ys, xs, out=ys)
    return y, arg


def _max_gather(
    x: np.ndarray,
    axis: int,
    ax: GatherAxis,
    alloc: Alloc,
    track: bool,
    shape: tuple[int, ...],
    out: np.ndarray | None,
    arg_out: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    y = _new(alloc, out, shape, x.dtype)
    y[...] = gather(x, ax.index[0], axis)
    arg = _new(alloc, arg_out, shape, arg_dtype(ax.kernel), 0) if track else None
    for k in range(1, ax.kernel):
        xk = gather(x, ax.index[k], axis)  # masked-out taps repeat the window's last sample: harmless
        if arg is not None:
            take_if(arg, k, np.greater(xk, y))
        np.maximum(y, xk, out=y)
        del xk
    return y, arg


def max_pass_nan(x: np.ndarray, y: np.ndarray, axis: int, ax: Axis, arg: np.ndarray) -> None:
    """Winners under PyTorch's full rule, for passes run innermost axis first.

    First maximum, but a NaN wins and the last NaN is kept. Slow (masked
    operations); used only when a NaN reached the output.
    """
    nd = x.ndim
    if isinstance(ax, GatherAxis):
        arg[...] = 0
        pairs = [
            (k, slice(None), gather(x, idx, axis), m) for k, (idx, m) in enumerate(zip(ax.index, ax.mask))
        ]
    else:
        first_tap_init(arg, ax, axis)
        pairs = [(t.k, t.o, x[at(nd, axis, t.i)], None) for t in plan(ax).taps]
    # Last tap first, overwriting on equality, leaves the first maximum...
    for k, o, xs, m in reversed(pairs):
        hit = np.equal(xs, y[at(nd, axis, o)])
        if m is not None:
            hit &= m
        np.copyto(arg[at(nd, axis, o)], k, where=hit)
    # ...then NaNs in window order, so the last NaN wins.
    for k, o, xs, m in pairs:
        hit = np.isnan(xs)
        if m is not None:
            hit &= m
        np.copyto(arg[at(nd, axis, o)], k, where=hit)


def max_pass_backward(
    g: np.ndarray,
    arg: np.ndarray,
    axis: int,
    ax: Axis,
    in_shape: Sequence[int],
    alloc: Alloc,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Route each output gradient to its window's winner along one axis."""
    in_shape = tuple(in_shape)
    if isinstance(ax, GatherAxis):
        return _max_gather_backward(g, arg, axis, ax, in_shape, alloc, out)

    def piece(o: tuple[slice, ...], k: int, dst: np.ndarray | None) -> np.ndarray:
        return np.multiply(g[o], np.equal(arg[o], k), out=dst)

    return _write_once(_new(alloc, out, in_shape, g.dtype), axis, plan(ax), piece)


def _write_once(gx: np.ndarray, axis: int, p: Any, piece: Any) -> np.ndarray:
    """Fill ``gx`` from per-tap pieces: write each residue class's first tap, zero the rest, add the others.

    ``piece(o, k, dst)`` is tap ``k``'s contribution for outputs ``o``,
    written into ``dst`` when given.
    """
    nd = gx.ndim
    for t in p.writes:
        piece(at(nd, axis, t.o), t.k, gx[at(nd, axis, t.i)])
    for sl in p.zeros:
        gx[at(nd, axis, sl)] = 0
    for t in p.adds:
        dst = gx[at(nd, axis, t.i)]
        np.add(dst, piece(at(nd, axis, t.o), t.k, None), out=dst)
    return gx


def _max_gather_backward(
    g: np.ndarray,
    arg: np.ndarray,
    axis: int,
    ax: GatherAxis,
    in_shape: tuple[int, ...],
    alloc: Alloc,
    out: np.ndarray | None,
) -> np.ndarray:
    """Each input sums, in output order, the gradients of the windows it won."""
    tr = ax.transpose
    assert tr is not None
    gx = _new(alloc, out, in_shape, g.dtype, 0)
    for idx, off, m in zip(tr.index, ax.offsets, tr.mask):
        won = np.equal(gather(arg, idx, axis), off)
        if m is not None:
            won &= m
        gk = gather(g, idx, axis)
        np.multiply(gk, won, out=gk)
        np.add(gx, gk, out=gx)
        del gk, won  # free before the next tap allocates its own
    return gx


# --------------------------------------------------------------------------- sum


def sum_pass(x: np.ndarray, axis: int, ax: Axis, alloc: Alloc, out: np.ndarray | None = None) -> np.ndarray:
    """Sum over the windows of one axis (padding and overhang contribute 0)."""
    shape = out_shape(x.shape, axis, ax.out)
    nd = x.ndim
    y = _new(alloc, out, shape, x.dtype)
    if isinstance(ax, GatherAxis):
        y[...] = gather(x, ax.index[0], axis)
        if ax.mask[0] is not None:  # inputs no window holds (transposed structures only)
            np.multiply(y, ax.mask[0], out=y)
        for idx, m in zip(ax.index[1:], ax.mask[1:]):
            xk = gather(x, idx, axis)
            if m is not None:
                np.multiply(xk, m, out=xk)
            np.add(y, xk, out=y)
            del xk
        return y
    p = plan(ax)
    if not p.taps:
        y[...] = 0
        return y
    head = p.taps[0]
    np.copyto(y[at(nd, axis, head.o)], x[at(nd, axis, head.i)])
    for sl in p.uncovered:
        y[at(nd, axis, sl)] = 0
    for t in p.taps[1:]:
        ys = y[at(nd, axis, t.o)]
        np.add(ys, x[at(nd, axis, t.i)], out=ys)
    return y


def sum_pass_backward(
    g: np.ndarray,
    axis: int,
    ax: Axis,
    in_shape: Sequence[int],
    alloc: Alloc,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Adjoint of :func:`sum_pass`: every tap receives its window's gradient."""
    in_shape = tuple(in_shape)
    if isinstance(ax, GatherAxis):
        assert ax.transpose is not None
        return sum_pass(g, axis, ax.transpose, alloc, out)

    def piece(o: tuple[slice, ...], k: int, dst: np.ndarray | None) -> np.ndarray:
        if dst is None:
            return g[o]
        np.copyto(dst, g[o])
        return dst

    return _write_once(_new(alloc, out, in_shape, g.dtype), axis, plan(ax), piece)
