"""The window engine: separable passes over strided views, block by block.

A box window is reduced one spatial axis at a time (:mod:`._passes`); tap
``k`` of every window is one strided slice of the input, so nothing here
builds a padded copy or a kernel-volume copy of the input. The drivers
below run the passes over every spatial axis:

* max passes run innermost axis first, which keeps PyTorch's tie rule
  (first maximum in row-major window order); sum passes run outer axes
  first on channels-last data (measured 1.5x faster there: the passes over
  the axes next to C then work on data already shrunk) and innermost first
  otherwise;
* over blocks of about ``_BLOCK_BYTES`` of (batch, channel) planes, so a
  block's intermediates stay in cache and are written straight into the
  final outputs (3x faster than whole-tensor passes here).

When a NaN reaches a max output the winners are recomputed, innermost axis
first, with the exact NaN rule (a NaN wins; the last NaN is reported).
:class:`Winners` records which order its arrays follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._axes import (
    Alloc,
    Axis,
    GatherAxis,
    adaptive_axis,
    arg_dtype,
    bshape,
    fractional_axis,
    has_empty_windows,
    out_shape,
)
from ._passes import max_pass, max_pass_backward, max_pass_nan, sum_pass, sum_pass_backward

__all__ = [
    "set_num_threads",
    "get_num_threads",
    "GatherAxis",
    "Winners",
    "adaptive_axis",
    "fractional_axis",
    "blockwise",
    "max_passes",
    "max_passes_backward",
    "sum_passes",
    "sum_passes_backward",
    "compose_indices",
]

_BLOCK_BYTES = 1024 * 1024
_THREADS = 1
_POOL: ThreadPoolExecutor | None = None


def set_num_threads(n: int) -> None:
    """Run the engine's blocks on ``n`` threads (NumPy releases the GIL in its loops).

    The default is 1, like NumPy's own ufuncs. Results do not depend on the
    thread count: blocks are independent and write disjoint outputs.
    """
    global _THREADS, _POOL
    from .._validate import check_int

    n = check_int("set_num_threads", "n", n, 1)
    if n != _THREADS and _POOL is not None:
        _POOL.shutdown(wait=True)
        _POOL = None
    _THREADS = n


def get_num_threads() -> int:
    """The number of threads :func:`set_num_threads` set (1 by default)."""
    return _THREADS


@dataclass(frozen=True)
class Winners:
    """Per-axis winning taps of a max reduction and the order its passes ran in."""

    args: tuple[np.ndarray, ...]
    order: tuple[int, ...]


def _inner_first(nd: int) -> tuple[int, ...]:
    return tuple(reversed(range(nd)))


def _sum_order(nd: int, channels_last: bool) -> tuple[int, ...]:
    return tuple(range(nd)) if channels_last else _inner_first(nd)


def pass_input_shape(
    lead: Sequence[int], axes: Sequence[Axis], order: Sequence[int], j: int
) -> tuple[int, ...]:
    """Input shape of the pass over spatial axis ``j``: axes reduced before it are at output size."""
    done = set(order[: list(order).index(j)])
    return (*lead, *(ax.out if i in done else ax.size for i, ax in enumerate(axes)))


def output_shape(lead: Sequence[int], axes: Sequence[Axis]) -> tuple[int, ...]:
    return (*lead, *(ax.out for ax in axes))


def blockwise(
    fn: Callable[[list[Any], list[Any], Sequence[Any]], None],
    ins: Sequence[np.ndarray | None],
    outs: Sequence[np.ndarray | None],
    *,
    channels_last: bool,
    axes: Sequence[Any] = (),
) -> None:
    """Call ``fn(in_blocks, out_blocks, block_axes)`` over blocks of (batch, channel) planes.

    Every array shares the leading ``(N, C)`` axes (``None`` entries pass
    through). Channels-first data is cut into groups of planes of about
    ``_BLOCK_BYTES`` (measured on the largest array); channels-last data into
    groups of samples. Per-plane window tables (fractional pooling) are cut
    with the block.
    """
    arrays = [a for a in (*ins, *outs) if a is not None]
    n, c = arrays[0].shape[:2]
    if n * c == 0:
        return
    plane = max(int(np.prod(a.shape[2:], dtype=np.int64)) * a.itemsize for a in arrays)
    if channels_last or plane * c <= _BLOCK_BYTES:
        per = max(1, _BLOCK_BYTES // max(plane * c, 1))
        blocks = [(slice(i, min(i + per, n)), slice(None)) for i in range(0, n, per)]
    else:
        per = max(1, _BLOCK_BYTES // max(plane, 1))
        blocks = [(slice(i, i + 1), slice(k, min(k + per, c))) for i in range(n) for k in range(0, c, per)]
    per_plane = any(isinstance(a, GatherAxis) and a.per_plane for a in axes)
    for b in blocks:
        block_axes = [a.planes(b) if isinstance(a, GatherAxis) else a for a in axes] if per_plane else axes
        fn(
            [None if a is None else a[b] for a in ins],
            [None if o is None else o[b] for o in outs],
            block_axes,
        )


# --------------------------------------------------------------------------- max


def max_passes(
    x: np.ndarray,
    axes: Sequence[Axis],
    alloc: Alloc,
    track: bool,
    channels_last: bool = False,
    pre: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, Winners | None]:
    """Max over every spatial axis of ``pre(x)`` (``pre`` applied block by block).

    Returns the result and, with ``track``, the :class:`Winners`.
    """
    nd = len(axes)
    lead = x.shape[:2]
    order = _inner_first(nd)
    y = alloc(output_shape(lead, axes), x.dtype)
    args: list[Any] = [None] * nd
    if track:
        for j in order:
            shape = out_shape(pass_input_shape(lead, axes, order, j), 2 + j, axes[j].out)
            args[j] = alloc(shape, arg_dtype(axes[j].kernel))

    def chain(ins: list[Any], outs: list[Any], bax: Sequence[Any]) -> None:
        cur = ins[0] if pre is None else pre(ins[0])
        for p, j in enumerate(order):
            cur, _ = max_pass(cur, 2 + j, bax[j], alloc, track, outs[0] if p == nd - 1 else None, outs[1 + j])

    blockwise(chain, [x], [y, *args], channels_last=channels_last, axes=axes)
    if not track:
        return y, None
    if np.isnan(y).any():
        return y, _nan_winners(x if pre is None else pre(x), axes, alloc)
    return y, Winners(tuple(args), order)


def _nan_winners(x: np.ndarray, axes: Sequence[Axis], alloc: Alloc) -> Winners:
    """Winners under the full NaN rule (whole tensors, innermost axis first; slow, rare)."""
    nd = len(axes)
    order = _inner_first(nd)
    inputs, outputs = {}, {}
    cur = x
    for j in order:
        inputs[j] = cur
        cur = max_pass(cur, 2 + j, axes[j], alloc, False)[0]
        outputs[j] = cur
    args = []
    for j in range(nd):
        arg = alloc(outputs[j].shape, arg_dtype(axes[j].kernel))
        max_pass_nan(inputs[j], outputs[j], 2 + j, axes[j], arg)
        args.append(arg)
    return Winners(tuple(args), order)


def max_passes_backward(
    g: np.ndarray,
    winners: Winners,
    axes: Sequence[Axis],
    alloc: Alloc,
    channels_last: bool = False,
    post: Callable[..., None] | None = None,
    post_ins: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Adjoint of :func:`max_passes`: every gradient to its window's winner.

    ``post(gx_block, *post_in_blocks)`` then updates each block of the
    result in place.
    """
    nd = len(axes)
    lead = g.shape[:2]
    order = winners.order
    in_shape = (*lead, *(ax.size for ax in axes))
    if post is None and _few_outputs(axes):
        return _scatter_winners(
            g, compose_indices(winners, axes, in_shape[2:]), in_shape, alloc, channels_last
        )
    gx = alloc(in_shape, g.dtype)

    def chain(ins: list[Any], outs: list[Any], bax: Sequence[Any]) -> None:
        cur = ins[0]
        blead = cur.shape[:2]
        for p, j in enumerate(reversed(order)):
            shape = pass_input_shape(blead, bax, order, j)
            cur = max_pass_backward(
                cur, ins[1 + j], 2 + j, bax[j], shape, alloc, outs[0] if p == nd - 1 else None
            )
        if post is not None:
            post(outs[0], *ins[1 + nd :])

    blockwise(chain, [g, *winners.args, *post_ins], [gx], channels_last=channels_last, axes=axes)
    return gx


def _few_outputs(axes: Sequence[Axis]) -> bool:
    """Scatter beats streaming passes when windows are few: at most 1/16 of the inputs.

    Only when every window holds a valid tap (else PyTorch's reported
    position for an empty window could alias a real sample).
    """
    n_in = int(np.prod([ax.size for ax in axes]))
    n_out = int(np.prod([ax.out for ax in axes]))
    return n_out * 16 <= n_in and not any(has_empty_windows(ax) for ax in axes)


def _scatter_winners(
    g: np.ndarray, flat: np.ndarray, in_shape: tuple[int, ...], alloc: Alloc, channels_last: bool
) -> np.ndarray:
    """``gx[plane, flat] += g`` into zeros; ``np.add.at`` keeps output order for shared winners."""
    n, c = in_shape[:2]
    size = int(np.prod(in_shape[2:]))
    gx = alloc(in_shape, g.dtype, 0)
    tail = [1] * (flat.ndim - 2)
    if channels_last:
        phys = np.moveaxis(gx, 1, -1)
        target = (np.arange(n).reshape(n, 1, *tail) * size + flat) * c + np.arange(c).reshape(1, c, *tail)
    else:
        phys = gx
        target = np.arange(n * c).reshape(n, c, *tail) * size + flat
    np.add.at(phys.reshape(-1), target.reshape(-1), g.reshape(-1))
    return gx


def compose_indices(winners: Winners, axes: Sequence[Axis], spatial: Sequence[int]) -> np.ndarray:
    """Per-plane flat index (PyTorch's format, int64) of each output's winner.

    The pass over axis ``j`` still has the axes reduced after it at full
    size, so passes are resolved from the last one back: later winners say
    which row of an earlier pass to read.
    """
    nd = len(axes)
    order = winners.order
    lead = tuple(winners.args[0].shape[:2])
    outs = tuple(ax.out for ax in axes)
    shape = lead + outs
    if 0 in shape:
        return np.zeros(shape, dtype=np.int64)
    full = len(shape)
    it = np.int64 if int(np.prod(spatial)) >= 2**31 - 1 else np.int32
    grid = [np.arange(o, dtype=it).reshape(bshape(full, 2 + i, o)) for i, o in enumerate(outs)]
    coords: dict[int, np.ndarray] = {}
    for p in reversed(range(nd)):
        j = order[p]
        arg = winners.args[j]
        later = order[p + 1 :]
        if later:
            dims = arg.shape[2:]
            lin: Any = 0
            for i in range(nd):
                pos = np.clip(coords[i], 0, spatial[i] - 1) if i in later else grid[i]
                lin = lin * dims[i] + pos
            lin = np.broadcast_to(lin, shape).reshape(*lead, -1)
            arg = np.take_along_axis(arg.reshape(*lead, -1), lin, axis=2).reshape(shape)
        ax = axes[j]
        if isinstance(ax, GatherAxis):
            c = ax.index[0].astype(it) + arg
        else:
            c = ax.starts.astype(it)[grid[j]] + arg.astype(it) * it(ax.dilation)
        coords[j] = np.broadcast_to(c, shape)
    empty = [i for i, ax in enumerate(axes) if has_empty_windows(ax)]
    if empty:
        # A window with no tap inside the input on some axis: PyTorch reports
        # the first non-negative tap on every axis.
        hole = np.zeros((1,) * full, dtype=bool)
        for i in empty:
            ax = axes[i]
            hole = hole | (ax.starts + ax.first_tap * ax.dilation >= ax.size)[grid[i]]
        for i, ax in enumerate(axes):
            first = (ax.starts + ax.first_tap * ax.dilation).astype(it)[grid[i]]
            coords[i] = np.where(hole, first, coords[i])
    flat = coords[0].astype(np.int64)
    for j in range(1, nd):
        flat *= spatial[j]
        flat += coords[j]
    return flat


# --------------------------------------------------------------------------- sum


def sum_passes(
    x: np.ndarray,
    axes: Sequence[Axis],
    alloc: Alloc,
    divisors: Sequence[Any] = (),
    channels_last: bool = False,
    pre: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Window sums of ``pre(x)`` over every spatial axis; pass ``j`` is divided by ``divisors[j]``."""
    nd = len(axes)
    order = _sum_order(nd, channels_last)
    y = alloc(output_shape(x.shape[:2], axes), x.dtype)
    divisors = list(divisors) or [None] * nd

    def chain(ins: list[Any], outs: list[Any], bax: Sequence[Any]) -> None:
        cur = ins[0] if pre is None else pre(ins[0])
        for p, j in enumerate(order):
            cur = sum_pass(cur, 2 + j, bax[j], alloc, outs[0] if p == nd - 1 else None)
            if divisors[j] is not None:
                np.divide(cur, divisors[j], out=cur)

    blockwise(chain, [x], [y], channels_last=channels_last, axes=axes)
    return y


def sum_passes_backward(
    g: np.ndarray,
    axes: Sequence[Axis],
    alloc: Alloc,
    divisors: Sequence[Any] = (),
    channels_last: bool = False,
    post: Callable[..., None] | None = None,
    post_ins: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Adjoint of :func:`sum_passes` (``post`` as in :func:`max_passes_backward`)."""
    nd = len(axes)
    order = _sum_order(nd, channels_last)
    gx = alloc((*g.shape[:2], *(ax.size for ax in axes)), g.dtype)
    divisors = list(divisors) or [None] * nd

    def chain(ins: list[Any], outs: list[Any], bax: Sequence[Any]) -> None:
        cur = ins[0]
        blead = cur.shape[:2]
        for p, j in enumerate(reversed(order)):
            if divisors[j] is not None:
                cur = np.divide(cur, divisors[j])
            shape = pass_input_shape(blead, bax, order, j)
            cur = sum_pass_backward(cur, 2 + j, bax[j], shape, alloc, outs[0] if p == nd - 1 else None)
        if post is not None:
            post(outs[0], *ins[1:])

    blockwise(chain, [g, *post_ins], [gx], channels_last=channels_last, axes=axes)
    return gx
