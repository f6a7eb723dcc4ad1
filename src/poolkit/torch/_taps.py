"""Tap loops over strided views, their adjoint, and the window reductions built on them.

A *tap* is one kernel offset: the strided view of a padded input that every
window reads at that offset (output-shaped and sharing memory: no
kernel-volume copy). Operators loop over taps and accumulate; backward
passes spread output-shaped terms back with :class:`TapAdjoint`
(slice-adds, no scatter: deterministic, and differentiable again).

:func:`window_sum` and :func:`window_max` use PyTorch's pooling kernels,
except where :func:`poolkit.torch._core.portable` rules a kernel out;
:func:`first_max` is PyTorch's max-pooling winner rule, for the portable
adaptive and fractional paths.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from ..geometry import WindowSpec
from ._core import (
    cpu_fast_path,
    crop_output,
    divisor,
    host_empty,
    host_zeros,
    pad_pairs,
    pad_to_windows,
    portable,
)

__all__ = [
    "MAX_POOL",
    "AVG_POOL",
    "tap_index",
    "tap_views",
    "tap_ranges",
    "dense_taps",
    "taps",
    "TapAdjoint",
    "flat_taps",
    "tap_select_adjoint",
    "unpad",
    "inside_mask",
    "tap_bias",
    "window_sum",
    "window_sum_adjoint",
    "native_padding",
    "native_window",
    "padded_size",
    "window_mean",
    "window_mean_adjoint",
    "native_avg_adjoint",
    "tiling",
    "window_max",
    "window_peak",
    "first_max",
    "Polyphase",
]

MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def tap_index(spec: WindowSpec) -> list[tuple[slice, ...]]:
    """For each kernel offset (row-major), the index of its strided view into a padded tensor.

    The tensor must be padded by :func:`~poolkit.torch._core.pad_to_windows`
    (or be its shape, as :class:`TapAdjoint`'s buffer); each view has the
    output's spatial shape.
    """
    out = []
    for k in itertools.product(*(range(ax.kernel) for ax in spec.axes)):
        idx = [slice(None), slice(None)]
        for a, ax in enumerate(spec.axes):
            start = k[a] * ax.dilation
            idx.append(slice(start, start + (ax.out - 1) * ax.stride + 1, ax.stride))
        out.append(tuple(idx))
    return out


def tap_ranges(spec: WindowSpec) -> list[tuple[tuple[slice, ...], tuple[slice, ...]] | None]:
    """For each kernel offset (row-major, as :func:`tap_index`): the outputs whose tap lies inside
    the input and the input samples they read, as ``(out_index, in_index)``; None where every
    output's tap falls in padding or overhang.

    Zero padding without a padded copy: a loop over ``x[in_index]`` into ``y[out_index]`` adds
    exactly the terms the padded taps would, and its adjoint writes an unpadded gradient.
    """
    out: list[tuple[tuple[slice, ...], tuple[slice, ...]] | None] = []
    for k in itertools.product(*(range(ax.kernel) for ax in spec.axes)):
        oi: list[slice] = [slice(None), slice(None)]
        ii: list[slice] = [slice(None), slice(None)]
        for a, ax in enumerate(spec.axes):
            o_lo, o_hi, i_lo = ax.taps[k[a]]
            oi.append(slice(o_lo, o_hi))
            ii.append(slice(i_lo, i_lo + (o_hi - o_lo - 1) * ax.stride + 1, ax.stride))
        empty = any(ax.taps[k[a]][0] >= ax.taps[k[a]][1] for a, ax in enumerate(spec.axes))
        out.append(None if empty else (tuple(oi), tuple(ii)))
    return out


def tap_views(xp: torch.Tensor, spec: WindowSpec) -> list[torch.Tensor]:
    """The strided view of ``xp`` (padded by ``pad_to_windows``) that each kernel offset reads."""
    return [xp[idx] for idx in tap_index(spec)]


def dense_taps(xp: torch.Tensor, spec: WindowSpec) -> Iterator[torch.Tensor]:
    """:func:`tap_views`, each copied into one reused contiguous buffer on eager CPU calls.

    PyTorch's CPU kernels vectorise contiguous operands only: an operation
    reading a strided tap view runs several times slower than the copy and
    the operation on the copy together. Each yielded tensor is valid until
    the next one (consume it in the loop body). Where autograd records
    operations on ``xp`` (double backward), or off the eager CPU path, the
    views themselves are yielded.
    """
    views = tap_views(xp, spec)
    if (torch.is_grad_enabled() and xp.requires_grad) or not cpu_fast_path(xp) or not views:
        yield from views
        return
    buf = torch.empty_like(views[0], memory_format=torch.contiguous_format)
    for v in views:
        yield v if v.is_contiguous() else buf.copy_(v)


def taps(
    spec: WindowSpec, *padded: torch.Tensor | None
) -> Iterator[tuple[tuple[slice, ...], tuple[torch.Tensor | None, ...]]]:
    """For each kernel offset: its index and the strided view of each of ``padded`` (None stays None)."""
    for idx in tap_index(spec):
        yield idx, tuple(None if t is None else t[idx] for t in padded)


def unpad(xp: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """The input part of a tensor padded by ``pad_to_windows`` (a view)."""
    return xp[(slice(None), slice(None), *(slice(ax.pad_lo, ax.pad_lo + ax.size) for ax in spec.axes))]


def flat_taps(
    spec: WindowSpec, plane: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat index of each window's first tap in a plane of spatial size ``plane`` whose origin is
    the padded input's (the padded plane; the input's own plane needs the padding subtracted),
    and each tap's offset from it."""
    strides = [math.prod(plane[j + 1 :]) for j in range(len(plane))]
    base = torch.zeros(spec.output_size, dtype=torch.int64, device=device)
    for j, ax in enumerate(spec.axes):
        shape = [1] * spec.ndim
        shape[j] = ax.out
        base = base + (torch.arange(ax.out, device=device) * (ax.stride * strides[j])).reshape(shape)
    offs = [
        sum(k[j] * strides[j] for j in range(spec.ndim))
        for k in itertools.product(*(range(ax.kernel) for ax in spec.axes))
    ]
    return base, torch.tensor(offs, dtype=torch.int64, device=device)


def tap_select_adjoint(g: torch.Tensor, arg: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """The gradient of selecting one tap per window: ``g`` added at tap ``arg`` of its window
    (row-major, :func:`tap_index` order; ``arg`` equal to the tap count selects nothing).

    On eager CPU calls without double backward, one ``scatter_add_`` straight into the input's
    plane (deterministic on the CPU), which needs every selected tap inside the input (the
    callers, stochastic and median pooling, never select padding); elsewhere a
    :class:`TapAdjoint` loop (deterministic on every device, differentiable again).
    """
    kernel = math.prod(spec.kernel_size)
    if torch.is_grad_enabled() or not cpu_fast_path(g):
        return TapAdjoint(spec, g).add_all(g * (arg == t).to(g.dtype) for t in range(kernel)).result()
    n, c = g.shape[:2]
    size = tuple(ax.size for ax in spec.axes)
    base, offs = flat_taps(spec, size, g.device)  # over the unpadded plane: shifted by the padding
    shift = sum(ax.pad_lo * math.prod(size[j + 1 :]) for j, ax in enumerate(spec.axes))
    which = host_empty(arg.shape, torch.int64).copy_(arg).clamp_(max=kernel - 1)
    flat = torch.take(offs, which, out=host_empty(arg.shape, torch.int64)).add_(base).sub_(shift)
    flat.clamp_(0, max(math.prod(size) - 1, 0))  # windows selecting nothing add 0: anywhere will do
    src = torch.where(arg < kernel, g, torch.zeros((), dtype=g.dtype, device=g.device))
    buf = host_zeros((n, c, *size), g.dtype)
    buf.view(n, c, -1).scatter_add_(2, flat.reshape(n, c, -1), src.reshape(n, c, -1))
    return buf


class TapAdjoint:
    """The adjoint of a tap loop: output-shaped terms summed into an input-shaped gradient.

    Each term is added into its tap's view of a buffer shaped like the padded
    input (:func:`tap_index`), one tap after another: deterministic (no
    scatter), and recorded by autograd when grad mode is on, so a backward
    pass written with it supports double backward. ``like`` gives the batch
    and channel sizes, the dtype and the device. Views of the buffer are
    taken at each add: one made before the buffer joined the graph could not
    be written in place.
    """

    def __init__(self, spec: WindowSpec, like: torch.Tensor) -> None:
        self.spec = spec
        padded = padded_size(spec)
        self.padded = torch.zeros((*like.shape[:2], *padded), dtype=like.dtype, device=like.device)

    def add(self, idx: tuple[slice, ...], value: torch.Tensor) -> None:
        self.padded[idx].add_(value)

    def add_all(self, terms: Iterable[torch.Tensor]) -> TapAdjoint:
        """Add one term per tap, in :func:`tap_index` order."""
        for idx, term in zip(tap_index(self.spec), terms):
            self.add(idx, term)
        return self

    def result(self) -> torch.Tensor:
        """The gradient for the unpadded input (padding and overhang dropped)."""
        return unpad(self.padded, self.spec)


def inside_mask(spec: WindowSpec, like: torch.Tensor, inside: Any, outside: Any) -> torch.Tensor:
    """``(1, 1, *padded)`` in ``like``'s dtype and device: ``inside`` on the input, ``outside`` in the
    padding and overhang."""
    fill = torch.full((1, 1, *spec.input_size), inside, dtype=like.dtype, device=like.device)
    return pad_to_windows(fill, spec, outside)


def tap_bias(spec: WindowSpec, like: torch.Tensor) -> torch.Tensor | None:
    """0 inside the input, -inf in padding and overhang (None without either).

    Added to an exponent it gives padding taps a weight of exactly 0 without
    a per-tap mask, whatever the padded value and the window maximum are.
    """
    return inside_mask(spec, like, 0.0, -math.inf) if any(pad_pairs(spec)) else None


def window_sum(x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """Sum over each window (padding and overhang contribute 0).

    PyTorch's average pooling times the window volume, except with dilation
    and on portable 3-D calls (``avg_pool3d``'s CUDA backward has no
    deterministic version), which add the tap views.
    """
    nd = spec.ndim
    xp = pad_to_windows(x, spec, 0.0)
    if all(ax.dilation == 1 for ax in spec.axes) and not (nd == 3 and portable(x)):
        # mean * volume rather than divisor_override=1: ONNX's AveragePool has no divisor override
        return AVG_POOL[nd](xp, spec.kernel_size, spec.stride) * math.prod(spec.kernel_size)
    total = None
    for v in tap_views(xp, spec):
        total = v if total is None else total + v
    assert total is not None
    return total


_AVG_BACKWARD = {2: torch.ops.aten.avg_pool2d_backward, 3: torch.ops.aten.avg_pool3d_backward}


def window_sum_adjoint(w: torch.Tensor, spec: WindowSpec, like: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`window_sum`: each input position gets the sum of ``w`` over its windows.

    PyTorch's average-pooling backward (a gather per input position,
    deterministic on every device; differentiable again) except with
    dilation and on portable 3-D calls, which add ``w`` into tap views.
    """
    nd = spec.ndim
    if any(ax.dilation != 1 for ax in spec.axes) or (nd == 3 and portable(like)):
        return TapAdjoint(spec, like).add_all(itertools.repeat(w)).result()
    padded = list(padded_size(spec))
    k, s = list(spec.kernel_size), list(spec.stride)
    g = w * math.prod(k)  # the kernel divides by the volume
    if nd == 1:  # there is no 1-D kernel: a 2-D one with a unit axis
        g, padded, k, s = g.unsqueeze(2), [1, *padded], [1, *k], [1, *s]
    shape = (*like.shape[:2], *padded)
    dummy = torch.empty(shape, dtype=g.dtype, device=g.device)  # only its shape is read
    gp = _AVG_BACKWARD[max(nd, 2)](g, dummy, k, s, [0] * len(k), False, True, None)
    return unpad(gp.squeeze(2) if nd == 1 else gp, spec)


def native_padding(spec: WindowSpec) -> tuple[int, ...] | None:
    """Symmetric padding PyTorch's pooling kernels accept (at most half the undilated kernel), else None."""
    pads = []
    for ax in spec.axes:
        if ax.pad_lo != ax.pad_hi or ax.pad_lo > ax.kernel // 2:
            return None
        pads.append(ax.pad_lo)
    return tuple(pads)


def native_window(spec: WindowSpec) -> tuple[int, ...] | None:
    """The padding with which PyTorch's average-pooling kernels compute ``spec``'s windows, else None.

    :func:`native_padding`, no dilation, and every axis at least a kernel
    long (``avg_pool3d``'s check); ``ceil_mode`` is passed as it is: the
    kernels share poolkit's rule for the last window.
    """
    pads = native_padding(spec)
    if pads is None or any(ax.dilation != 1 or ax.size < ax.kernel for ax in spec.axes):
        return None
    return pads


def padded_size(spec: WindowSpec) -> tuple[int, ...]:
    """Spatial size of the input padded by :func:`~poolkit.torch._core.pad_to_windows` (padding and
    ceil-mode overhang)."""
    return tuple(ax.size + ax.pad_lo + ax.pad_hi + ax.overhang for ax in spec.axes)


def window_mean(x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """Mean over each window's taps inside the input (padding and overhang are not counted).

    PyTorch's average pooling with ``count_include_pad=False`` where it
    computes these windows (:func:`native_window`; not on portable 3-D calls),
    so no padded copy is made; else :func:`window_sum` over the divisor.
    """
    pads = native_window(spec)
    if pads is None or (spec.ndim == 3 and portable(x)):
        s = window_sum(x, spec)
        return s / divisor(spec, False, s)
    args: tuple[Any, ...] = (spec.kernel_size, spec.stride, pads, spec.ceil_mode, False)
    return AVG_POOL[spec.ndim](x, *args)


def window_mean_adjoint(w: torch.Tensor, spec: WindowSpec, like: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`window_mean`: each input position gets ``sum w / n`` over its windows.

    Returns a new tensor shaped like ``like`` (callers may update it in place).
    """
    pads = native_window(spec)
    if pads is None or (spec.ndim == 3 and portable(like)):
        return window_sum_adjoint(w / divisor(spec, False, w), spec, like)
    return native_avg_adjoint(w, spec, pads, False, like)


def native_avg_adjoint(
    w: torch.Tensor, spec: WindowSpec, pads: tuple[int, ...], include_pad: bool, like: torch.Tensor
) -> torch.Tensor:
    """PyTorch's average-pooling backward for ``spec``'s windows with ``pads`` (:func:`native_window`):
    a new tensor shaped (and laid out) like ``like``."""
    k, s, p = list(spec.kernel_size), list(spec.stride), list(pads)
    if spec.ndim == 1:  # there is no 1-D kernel: a 2-D one with a unit axis
        g = torch.ops.aten.avg_pool2d_backward(
            w.unsqueeze(2), like.unsqueeze(2), [1, *k], [1, *s], [0, *p], spec.ceil_mode, include_pad, None
        )
        return g.squeeze(2)
    if like.is_contiguous() and not torch.is_grad_enabled() and cpu_fast_path(like):
        # into huge-page memory (the kernel writes every element: its own allocation faults in 4 KiB pages)
        out = host_empty(like.shape, like.dtype)
        return _AVG_BACKWARD[spec.ndim].grad_input(
            w, like, k, s, p, spec.ceil_mode, include_pad, None, grad_input=out
        )
    return _AVG_BACKWARD[spec.ndim](w, like, k, s, p, spec.ceil_mode, include_pad, None)


def tiling(spec: WindowSpec, *tensors: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Shapes that split input-shaped ``tensors`` into their windows, where the windows tile the input.

    When every axis has ``kernel == stride``, no padding or dilation and a
    size that is a multiple of the kernel, and the tensors are contiguous,
    ``t.view(split)`` is ``(N, C, out_1, k_1, out_2, k_2, ...)`` and
    ``y.view(spread)`` gives an output-shaped ``y`` unit axes in between:
    per-window values then broadcast over their windows' inputs with no
    pooling kernel. Else None.
    """
    if not all(t.is_contiguous() for t in tensors):
        return None
    split: list[int] = []
    spread: list[int] = []
    for ax in spec.axes:
        if (
            ax.kernel != ax.stride
            or ax.dilation != 1
            or ax.pad_lo
            or ax.pad_hi
            or ax.out * ax.kernel != ax.size
        ):
            return None
        split += [ax.out, ax.kernel]
        spread += [ax.out, 1]
    n, c = tensors[0].shape[:2]
    return (n, c, *split), (n, c, *spread)


def window_max(x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """Maximum over each window's taps inside the input (padding is -inf); NaN propagates.

    PyTorch's max pooling (its backward is deterministic on every device):
    the gradient goes to each window's first maximum.
    """
    xp = pad_to_windows(x, spec, -math.inf)
    return crop_output(MAX_POOL[spec.ndim](xp, spec.kernel_size, spec.stride, 0, spec.dilation), spec)


def window_peak(x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """Each window's maximum value (no winner, no gradient; NaN propagates): separable passes.

    For the shifts of the softmax-type operators: max is separable, so one
    ``torch.maximum`` per tap and axis over strided views of the previous
    pass. On the CPU that is several times faster than the max-pooling
    kernel, whose winner tracking is not needed there.
    """
    with torch.no_grad():
        m = pad_to_windows(x, spec, -math.inf)
        for j, ax in enumerate(spec.axes):
            d, span = 2 + j, (ax.out - 1) * ax.stride + 1
            acc = None
            for t in range(ax.kernel):
                v = m.narrow(d, t * ax.dilation, span)
                if ax.stride > 1:
                    v = v[(slice(None),) * d + (slice(None, None, ax.stride),)]
                acc = v if acc is None else torch.maximum(acc, v)
            assert acc is not None
            m = acc
        return m


def first_max(v: torch.Tensor, dim: int) -> torch.Tensor:
    """Index along ``dim`` (kept, size 1) of PyTorch's max-pooling winner among ``v``'s entries.

    The kernels keep a running maximum from ``-inf`` and take an entry when
    ``value > max or isnan(value)``: the last NaN if there is one, else the
    first maximum (the first entry when all are ``-inf``). Ties never split.
    """
    nan = torch.isnan(v)
    last_nan = (v.shape[dim] - 1) - nan.flip(dim).to(torch.int32).argmax(dim, keepdim=True)
    first = torch.where(nan, torch.full_like(v, -math.inf), v).argmax(dim, keepdim=True)
    return torch.where(nan.any(dim, keepdim=True), last_nan, first)


_T = TypeVar("_T")

# Output elements per batch chunk of the CPU tap loops: a chunk's working buffers stay in the cache
# between the many passes each tap makes over them (about 3x faster per pass than streaming the
# whole batch through memory), while the per-op overhead of more chunks stays small.
CHUNK = 1 << 18


def batch_chunks(out: Sequence[int]) -> list[slice]:
    """Batch slices of about ``CHUNK`` output elements (at least one sample each), for eager-CPU
    loops that make many passes over each chunk (DPP, stochastic, gated, tree, S3 and max-blur's
    stride-1 maximum)."""
    n, per = int(out[0]), max(1, math.prod(int(v) for v in out[1:]))
    step = max(1, CHUNK // per)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def per_chunk(make: Callable[[int], _T]) -> Callable[[slice], _T]:
    """A getter of ``make(n)``'s buffers for a batch chunk of ``n`` samples, reused from chunk to
    chunk and made anew only when a chunk's length changes (only the last one can be shorter)."""
    made: dict[int, _T] = {}

    def get(b: slice) -> _T:
        n = b.stop - b.start
        if n not in made:
            made.clear()
            made[n] = make(n)
        return made[n]

    return get


def chunk_buffers(
    out: Sequence[int], dtype: torch.dtype, count: int
) -> Callable[[slice], list[torch.Tensor]]:
    """:func:`per_chunk` of ``count`` buffers shaped like a batch chunk of the output ``out``."""
    return per_chunk(lambda n: [host_empty((n, *out[1:]), dtype) for _ in range(count)])


class Polyphase:
    """The input split by stride phase, for tap loops on eager CPU calls.

    Along an axis with stride ``s``, tap ``k`` of output ``o`` reads input
    ``s o + k d - p``: every tap reads one phase ``r = (k d - p) mod s`` (the
    samples ``r, r + s, ...``) at outputs shifted by a whole number of phase
    samples. :meth:`chunks` copies each phase a tap reads into a dense buffer,
    a batch chunk at a time (``prod(stride)`` strided copies together the size
    of the chunk, where a loop over strided tap views copies ``prod(kernel_size)``
    of them), so every tap is a unit-stride slice of a phase;
    :meth:`gradient_chunks` interleaves phase-shaped gradients back into an
    input-shaped one (:meth:`merge_into`).

    ``taps[t]`` is ``(out_index, phase, phase_index)`` for tap ``t`` (row-major,
    as :func:`tap_ranges`), or None where every output's tap falls in padding
    or overhang.
    """

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.taps: list[tuple[tuple[slice, ...], tuple[int, ...], tuple[slice, ...]] | None] = []
        for rng in tap_ranges(spec):
            if rng is None:
                self.taps.append(None)
                continue
            oi, ii = rng
            phase = tuple(sl.start % ax.stride for sl, ax in zip(ii[2:], spec.axes))
            pi = [slice(None), slice(None)]
            for sl, o, ax in zip(ii[2:], oi[2:], spec.axes):
                q = sl.start // ax.stride
                pi.append(slice(q, q + o.stop - o.start))
            self.taps.append((oi, phase, tuple(pi)))
        self.phases = sorted({tap[1] for tap in self.taps if tap is not None})

    def _index(self, phase: tuple[int, ...]) -> tuple[slice, ...]:
        return (
            slice(None),
            slice(None),
            *(slice(r, None, ax.stride) for r, ax in zip(phase, self.spec.axes)),
        )

    def chunks(
        self, x: torch.Tensor, out: Sequence[int], writable: bool = False
    ) -> Iterator[tuple[slice, dict[tuple[int, ...], torch.Tensor]]]:
        """Each batch chunk of ``x`` (:func:`batch_chunks` of the output shape ``out``) and its
        phases, split into buffers reused from chunk to chunk (valid until the next one). At unit
        strides the phase is the chunk of ``x`` itself, unless ``writable`` asks for a copy."""
        copy = writable or any(ax.stride > 1 for ax in self.spec.axes)
        bufs = per_chunk(lambda n: self.buffers(x[:n]))
        for b in batch_chunks(out):
            if not copy:
                yield b, {p: x[b] for p in self.phases}
            else:
                yield b, {p: v.copy_(x[b][self._index(p)]) for p, v in bufs(b).items()}

    def gradient_chunks(
        self, x: torch.Tensor, out: Sequence[int], gx: torch.Tensor, split: bool = True
    ) -> Iterator[
        tuple[slice, dict[tuple[int, ...], torch.Tensor] | None, dict[tuple[int, ...], torch.Tensor]]
    ]:
        """:meth:`chunks` for a backward: each batch chunk, its phases (None unless ``split``) and
        its zeroed phase-shaped gradient, which is interleaved into ``gx[b]`` (a :meth:`gradient`)
        when the caller moves on to the next chunk, while it is still cached."""
        grads = per_chunk(lambda n: self.buffers(x[:n]))
        for b, phases in self.chunks(x, out) if split else ((b, None) for b in batch_chunks(out)):
            gph = grads(b)
            for v in gph.values():
                v.zero_()
            yield b, phases, gph
            self.merge_into(gph, gx[b])

    def buffers(self, like: torch.Tensor) -> dict[tuple[int, ...], torch.Tensor]:
        """Phase-shaped buffers for ``like``."""
        return {p: host_empty(like[self._index(p)].shape, like.dtype) for p in self.phases}

    def gradient(self, like: torch.Tensor) -> torch.Tensor:
        """An input-shaped buffer for :meth:`merge_into`, zeroed where phases no tap reads lie."""
        every = len(self.phases) == math.prod(ax.stride for ax in self.spec.axes)
        return host_empty(like.shape, like.dtype, zero=not every)

    def merge_into(self, parts: dict[tuple[int, ...], torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """Write ``parts`` at their phases of ``out`` (a batch slice of a :meth:`gradient`)."""
        for p, v in parts.items():
            out[self._index(p)].copy_(v)
        return out
