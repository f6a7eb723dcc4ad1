"""Window geometry: the one place that computes output sizes and paddings.

Every sliding-window operator, every backend, the receptive-field tools and
the CLI read the frozen :class:`WindowSpec` built here; nothing else in
poolkit computes an output size, a padding, a window start or a divisor.

Rules (PyTorch's, ``aten/src/ATen/native/Pool.h``, extended):

* ``out = floor((in + lo + hi - span + (stride - 1 if ceil_mode else 0)) / stride) + 1``
  with ``span = dilation * (kernel - 1) + 1``; with ``ceil_mode`` the last
  window must start inside the input or the left padding, else it is dropped.
* Integer padding follows PyTorch's check ``padding <= kernel_size // 2``
  (PyTorch compares against the *undilated* kernel).
* ``padding="valid"`` is no padding. ``padding="same"`` is TensorFlow's rule:
  ``out = ceil(in / stride)``, total padding
  ``max((out - 1) * stride + span - in, 0)``, the odd pixel after.
* Explicit asymmetric padding per axis is a ``(lo, hi)`` pair, each side at
  most ``span // 2``.
* Windows that hang over the end in ceil mode ("overhang") are not padding:
  they are never counted by an average's divisor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import check_bool, check_int, check_real, int_tuple, is_int
from .errors import PoolingConfigError, PoolingInputError

__all__ = [
    "AxisWindow",
    "WindowSpec",
    "window_spec",
    "check_window_settings",
    "adaptive_output_size",
    "adaptive_bins",
    "adaptive_window",
    "fractional_output_size",
    "fractional_starts",
    "unpool_output_size",
]


class _cached_property:
    """``functools.cached_property`` without the lock Python 3.11's takes.

    ``torch.compile`` cannot trace that lock, and the torch operators read
    window geometry inside compiled code. Caching is per instance, in its
    ``__dict__`` (the instances are frozen dataclasses).
    """

    def __init__(self, fn: Any) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        cache = obj.__dict__
        if self.name not in cache:
            cache[self.name] = self.fn(obj)
        return cache[self.name]


@dataclass(frozen=True)
class AxisWindow:
    """Geometry of a sliding window along one spatial axis.

    ``pad_lo``/``pad_hi`` are explicit padding (counted by an average with
    ``count_include_pad=True``); ``overhang`` is what ceil mode adds past it.
    """

    size: int
    kernel: int
    stride: int
    dilation: int
    pad_lo: int
    pad_hi: int
    out: int
    ceil_mode: bool = False

    @property
    def span(self) -> int:
        """Extent of one window in input samples: ``dilation * (kernel - 1) + 1``."""
        return self.dilation * (self.kernel - 1) + 1

    @property
    def overhang(self) -> int:
        """Samples the last window reaches past the explicit right padding."""
        return max(0, (self.out - 1) * self.stride + self.span - (self.size + self.pad_lo + self.pad_hi))

    @_cached_property
    def starts(self) -> np.ndarray:
        """Input coordinate of each window's first tap (negative inside the left padding)."""
        return np.arange(self.out, dtype=np.intp) * self.stride - self.pad_lo

    @_cached_property
    def taps(self) -> tuple[tuple[int, int, int], ...]:
        """For each kernel offset ``k``: ``(o_lo, o_hi, i_lo)``.

        Outputs ``o`` in ``[o_lo, o_hi)`` read input sample
        ``i_lo + (o - o_lo) * stride`` at offset ``k``; every other output's
        tap ``k`` falls in padding or overhang. This is how operators pad
        without building a padded copy.
        """
        out = []
        s = self.stride
        for k in range(self.kernel):
            c0 = k * self.dilation - self.pad_lo  # coordinate of tap k for output 0
            o_lo = 0 if c0 >= 0 else (-c0 + s - 1) // s
            o_hi = min(self.out, (self.size - c0 + s - 1) // s) if self.size > c0 else 0
            o_hi = max(o_hi, o_lo)
            out.append((o_lo, o_hi, c0 + o_lo * s))
        return tuple(out)

    def counts(self, include_pad: bool) -> np.ndarray:
        """Taps per window inside the input (or inside input + explicit padding)."""
        coords = self.starts[:, None] + np.arange(self.kernel) * self.dilation
        lo, hi = (-self.pad_lo, self.size + self.pad_hi) if include_pad else (0, self.size)
        return ((coords >= lo) & (coords < hi)).sum(axis=1)

    @_cached_property
    def first_tap(self) -> np.ndarray:
        """Offset of each window's first tap with a non-negative coordinate.

        PyTorch's max pooling reports this position when no tap beats
        ``-inf`` (it may lie past the input when a dilated window has no
        valid tap at all).
        """
        return (np.maximum(-self.starts, 0) + self.dilation - 1) // self.dilation

    @property
    def overlapping(self) -> bool:
        """Whether neighbouring windows share input samples."""
        return self.stride < self.span and self.kernel > 1

    @property
    def tiles(self) -> bool:
        """Windows tile the input exactly: no padding, no gaps, no overlap, nothing left over."""
        return (
            self.dilation == 1
            and self.kernel == self.stride
            and self.pad_lo == 0
            and self.pad_hi == 0
            and self.out * self.kernel == self.size
        )


@dataclass(frozen=True)
class WindowSpec:
    """Frozen geometry of one pooling call over all spatial axes."""

    axes: tuple[AxisWindow, ...]
    padding_mode: str = "explicit"  # "explicit" | "same" | "valid"

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def output_size(self) -> tuple[int, ...]:
        return tuple(a.out for a in self.axes)

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(a.kernel for a in self.axes)

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(a.stride for a in self.axes)

    @property
    def dilation(self) -> tuple[int, ...]:
        return tuple(a.dilation for a in self.axes)

    @property
    def padding(self) -> tuple[tuple[int, int], ...]:
        return tuple((a.pad_lo, a.pad_hi) for a in self.axes)

    @property
    def ceil_mode(self) -> bool:
        return any(a.ceil_mode for a in self.axes)

    def divisor(self, include_pad: bool) -> np.ndarray:
        """Number of taps each window averages over, shaped like the output."""
        out = np.ones(self.output_size, dtype=np.int64)
        for axis, a in enumerate(self.axes):
            shape = [1] * self.ndim
            shape[axis] = a.out
            out = out * a.counts(include_pad).reshape(shape)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable description (used by ``poolkit shape``)."""
        return {
            "input_size": list(self.input_size),
            "output_size": list(self.output_size),
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "dilation": list(self.dilation),
            "padding": [list(p) for p in self.padding],
            "padding_mode": self.padding_mode,
            "ceil_mode": self.ceil_mode,
            "overhang": [a.overhang for a in self.axes],
            "window_span": [a.span for a in self.axes],
        }


def _parse_padding(
    op: str,
    padding: Any,
    nd: int,
    kernel: tuple[int, ...],
    span: tuple[int, ...],
    kernel_name: str = "kernel_size",
) -> tuple[str, list[tuple[int, int]] | None]:
    """Return ``(mode, pairs)``; pairs is None for ``"same"`` (computed per input)."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return "valid", [(0, 0)] * nd
        if mode == "same":
            return "same", None
        raise PoolingConfigError(
            f"{op}: padding must be an int, a sequence with one int or (lo, hi) pair per axis, "
            f"'same' or 'valid', got {padding!r}."
        )
    if isinstance(padding, np.ndarray):
        padding = padding.tolist()
    if is_int(padding) or isinstance(padding, (bool, np.bool_, float)):
        padding = [padding] * nd
    if not isinstance(padding, Sequence):
        raise PoolingConfigError(
            f"{op}: padding must be an int, a sequence with one int or (lo, hi) pair per axis, "
            f"'same' or 'valid', got {padding!r}."
        )
    if len(padding) == 1 and nd > 1 and not isinstance(padding[0], Sequence):
        padding = list(padding) * nd
    if len(padding) != nd:
        example = "((0, 1),)" if nd == 1 else "(" + ", ".join(["(0, 1)"] * nd) + ")"
        raise PoolingConfigError(
            f"{op}: padding must have one entry per spatial axis ({nd}), got {padding!r}. "
            f"For asymmetric padding give one (lo, hi) pair per axis, e.g. padding={example}."
        )
    pairs = []
    for axis, entry in enumerate(padding):
        if isinstance(entry, Sequence) and not isinstance(entry, str):
            if len(entry) != 2:
                raise PoolingConfigError(
                    f"{op}: padding for axis {axis} must be an int or a (lo, hi) pair, got {entry!r}."
                )
            lo = check_int(op, "padding", entry[0], 0)
            hi = check_int(op, "padding", entry[1], 0)
            limit = span[axis] // 2
            if lo > limit or hi > limit:
                raise PoolingConfigError(
                    f"{op}: padding ({lo}, {hi}) on axis {axis} exceeds half the window span "
                    f"({span[axis]} // 2 = {limit}); a larger pad would create windows made only "
                    f"of padding. Use at most {limit} on each side, or padding='same'."
                )
            pairs.append((lo, hi))
        else:
            p = check_int(op, "padding", entry, 0)
            if p > kernel[axis] // 2:
                raise PoolingConfigError(
                    f"{op}: padding={p} on axis {axis} is more than half of {kernel_name}="
                    f"{kernel[axis]} (PyTorch's rule: padding <= {kernel_name} // 2 = {kernel[axis] // 2}). "
                    f"Lower the padding, use padding='same', or give an explicit (lo, hi) pair."
                )
            pairs.append((p, p))
    return "explicit", pairs


def window_spec(
    input_size: Sequence[int],
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    *,
    op: str = "pool",
    names: Mapping[str, str] | None = None,
) -> WindowSpec:
    """Compute the geometry of a pooling call.

    Parameters
    ----------
    input_size : sequence of int
        Spatial size of the input, one entry per axis.
    kernel_size, stride, dilation : int or sequence of int
        PyTorch's meaning; ``stride=None`` means ``kernel_size``.
    padding : int, sequence, "same" or "valid"
        An int per axis (symmetric), a ``(lo, hi)`` pair per axis, or a string.
    ceil_mode : bool
        Round the output size up (PyTorch's rule).
    op : str
        Operator name used in error messages.
    names : mapping, optional
        The caller's names for the arguments, for error messages (Keras
        layers: ``{"kernel_size": "pool_size", "stride": "strides",
        "dilation": "dilation_rate"}``).

    Examples
    --------
    >>> spec = window_spec((112, 112), 3, 2, 1)
    >>> spec.output_size, spec.padding
    ((56, 56), ((1, 1), (1, 1)))
    >>> window_spec((5,), 2, 2, 1, ceil_mode=True).output_size   # burn#5791
    (3,)
    >>> window_spec((7,), 3, 2, "same").padding
    ((1, 1),)
    """
    input_size = tuple(int(v) for v in input_size)
    nd = len(input_size)
    for axis, n in enumerate(input_size):
        if n < 1:
            raise PoolingInputError(
                f"{op}: spatial axis {axis} of the input has size {n}; pooling needs at least one "
                f"sample per spatial axis (got spatial size {input_size})."
            )
    names = dict(names or {})
    kn, sn, dn = (names.get(a, a) for a in ("kernel_size", "stride", "dilation"))
    k = int_tuple(op, kn, kernel_size, nd, 1)
    if stride is None or (isinstance(stride, Sequence) and not isinstance(stride, str) and len(stride) == 0):
        s = k
    else:
        s = int_tuple(op, sn, stride, nd, 1)
    d = int_tuple(op, dn, dilation, nd, 1)
    ceil = check_bool(op, "ceil_mode", ceil_mode)
    span = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    mode, pairs = _parse_padding(op, padding, nd, k, span, kn)
    if mode == "same" and ceil:
        raise PoolingConfigError(
            f"{op}: ceil_mode=True cannot be combined with padding='same', which fixes the output "
            f"size to ceil(input / stride). Drop ceil_mode or pass explicit padding."
        )
    axes = []
    for axis in range(nd):
        n, ki, si, di, sp = input_size[axis], k[axis], s[axis], d[axis], span[axis]
        if mode == "same":
            out = -(-n // si)
            total = max((out - 1) * si + sp - n, 0)
            lo, hi = total // 2, total - total // 2
        else:
            lo, hi = pairs[axis]
            numer = n + lo + hi - sp + (si - 1 if ceil else 0)
            out = numer // si + 1
            if ceil and out > 0 and (out - 1) * si >= n + lo:
                out -= 1
        if out < 1:
            raise PoolingInputError(
                f"{op}: the window does not fit the input along spatial axis {axis}: window span "
                f"{sp} ({kn}={ki}, {dn}={di}) is larger than the padded input "
                f"{n} + {lo} + {hi} = {n + lo + hi}. Use a smaller {kn} or {dn}, more "
                f"padding, or padding='same'."
            )
        axes.append(AxisWindow(n, ki, si, di, lo, hi, out, ceil))
    return WindowSpec(tuple(axes), mode)


_BIG = 1 << 30  # a notional input large enough for any window: only the settings are checked


def check_window_settings(
    op: str,
    nd: int,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    names: Mapping[str, str] | None = None,
) -> None:
    """Raise :func:`window_spec`'s errors for settings that are wrong on their own.

    Layers call it at construction, before any input is seen; errors that
    depend on the input's size (a window larger than the input) come later.
    """
    window_spec((_BIG,) * nd, kernel_size, stride, padding, dilation, ceil_mode, op=op, names=names)


# --------------------------------------------------------------------------- adaptive


def adaptive_output_size(op: str, input_size: Sequence[int], output_size: Any) -> tuple[int, ...]:
    """Resolve ``output_size`` (int, tuple, ``None`` entries keep the axis)."""
    nd = len(input_size)
    if output_size is None:
        raise PoolingConfigError(f"{op}: output_size is required, got None. Pass e.g. output_size=1.")
    if isinstance(output_size, np.ndarray):
        output_size = output_size.tolist()
    if isinstance(output_size, Sequence) and not isinstance(output_size, str):
        if len(output_size) != nd:
            raise PoolingConfigError(
                f"{op}: output_size must be an int or a sequence of {nd} entries (int or None), "
                f"got {output_size!r}."
            )
        entries = list(output_size)
    else:
        entries = [output_size] * nd
    out = []
    for axis, v in enumerate(entries):
        if v is None:
            out.append(int(input_size[axis]))
        else:
            v = check_int(op, "output_size", v)
            if v < 1:
                raise PoolingConfigError(
                    f"{op}: output_size must be >= 1 on every axis, got {v} on axis {axis}. "
                    f"Use None to keep an axis unchanged."
                )
            out.append(v)
    for axis, n in enumerate(input_size):
        if n < 1:
            raise PoolingInputError(
                f"{op}: spatial axis {axis} of the input has size {n}; adaptive pooling needs at "
                f"least one sample per axis."
            )
    return tuple(out)


def adaptive_bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Bins ``[floor(i * size / out), ceil((i + 1) * size / out))`` (PyTorch, Keras).

    Examples
    --------
    >>> starts, stops = adaptive_bins(5, 3)
    >>> starts.tolist(), stops.tolist()
    ([0, 1, 3], [2, 4, 5])
    """
    i = np.arange(out, dtype=np.int64)
    starts = (i * size) // out
    stops = -((-(i + 1) * size) // out)
    return starts.astype(np.intp), stops.astype(np.intp)


def adaptive_window(size: int, out: int) -> AxisWindow | None:
    """The sliding window equal to adaptive pooling's bins, or None if there is none.

    When every bin has the same length ``k`` and the starts step by a constant
    ``s`` (always so when ``size % out == 0``, and e.g. 50 -> 7 gives k=8, s=7),
    the bins are a plain window with ``kernel=k, stride=s`` and no padding.

    Examples
    --------
    >>> ax = adaptive_window(50, 7)
    >>> ax.kernel, ax.stride
    (8, 7)
    >>> adaptive_window(5, 3) is None   # bins [0, 2), [1, 4), [3, 5)
    True
    """
    starts, stops = adaptive_bins(size, out)
    lengths = stops - starts
    steps = np.diff(starts)
    if (lengths != lengths[0]).any() or (out > 1 and ((steps != steps[0]).any() or steps[0] < 1)):
        return None
    k = int(lengths[0])
    s = int(steps[0]) if out > 1 else k
    return AxisWindow(size, k, s, 1, 0, 0, out, False)


# --------------------------------------------------------------------------- fractional


def fractional_output_size(
    op: str,
    input_size: Sequence[int],
    kernel_size: tuple[int, ...],
    output_size: Any,
    output_ratio: Any,
) -> tuple[int, ...]:
    """Output size of fractional max pooling (exactly one of size and ratio)."""
    nd = len(input_size)
    if (output_size is None) == (output_ratio is None):
        raise PoolingConfigError(
            f"{op}: pass exactly one of output_size and output_ratio, got output_size="
            f"{output_size!r} and output_ratio={output_ratio!r}."
        )
    if output_size is not None:
        out = int_tuple(op, "output_size", output_size, nd)
        for v in out:
            if v < 1:
                raise PoolingConfigError(f"{op}: output_size must be >= 1 on every axis, got {out}.")
    else:
        if isinstance(output_ratio, Sequence) and not isinstance(output_ratio, str):
            ratios = list(output_ratio)
            if len(ratios) != nd:
                raise PoolingConfigError(
                    f"{op}: output_ratio must be a number or {nd} numbers, got {output_ratio!r}."
                )
        else:
            ratios = [output_ratio] * nd
        ratios = [
            check_real(op, "output_ratio", r, low=0.0, low_inclusive=False, high=1.0, high_inclusive=False)
            for r in ratios
        ]
        out = tuple(int(n * r) for n, r in zip(input_size, ratios))
        for axis, v in enumerate(out):
            if v < 1:
                raise PoolingInputError(
                    f"{op}: output_ratio={ratios[axis]} gives an empty output on axis {axis} "
                    f"(int({input_size[axis]} * {ratios[axis]}) = 0). Use a larger ratio or output_size."
                )
    for axis in range(nd):
        if out[axis] + kernel_size[axis] - 1 > input_size[axis]:
            raise PoolingInputError(
                f"{op}: output_size {out[axis]} with kernel_size {kernel_size[axis]} needs at least "
                f"{out[axis] + kernel_size[axis] - 1} input samples on axis {axis} (output + kernel - 1), "
                f"got {input_size[axis]}. Use a smaller output_size or kernel_size."
            )
    return out


def fractional_starts(size: int, out: int, kernel: int, u: np.ndarray) -> np.ndarray:
    """Window starts of PyTorch's fractional max pooling for samples ``u`` in [0, 1).

    ``alpha = (size - kernel) / (out - 1)``; ``start_i = int((i + u) * alpha) - int(u * alpha)``
    for ``i < out - 1`` and ``start_{out-1} = size - kernel``, computed in the
    floating type of ``u`` as PyTorch's kernel does. Returns shape ``u.shape + (out,)``.
    """
    u = np.asarray(u)
    starts = np.empty(u.shape + (out,), dtype=np.intp)
    if out > 1:
        dt = u.dtype.type
        alpha = dt(size - kernel) / dt(out - 1)
        i = np.arange(out - 1, dtype=u.dtype)
        first = ((i + u[..., None]).astype(u.dtype) * alpha).astype(np.int64)
        starts[..., :-1] = first - (u[..., None] * alpha).astype(np.int64)
    starts[..., -1] = size - kernel
    return starts


# --------------------------------------------------------------------------- unpool


def unpool_output_size(
    op: str,
    input_size: Sequence[int],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_size: Any,
) -> tuple[int, ...]:
    """PyTorch's ``_unpool_output_size``: default ``(in - 1) * stride + kernel - 2 * padding``.

    A given ``output_size`` (spatial only, or with the leading batch/channel
    axes) must lie strictly within ``default +- stride`` on every axis.
    """
    nd = len(input_size)
    default = tuple((n - 1) * s + k - 2 * p for n, k, s, p in zip(input_size, kernel_size, stride, padding))
    if output_size is None:
        out = default
    else:
        if isinstance(output_size, np.ndarray):
            output_size = output_size.tolist()
        if not isinstance(output_size, Sequence) or isinstance(output_size, str):
            output_size = [output_size] * nd
        output_size = list(output_size)
        if len(output_size) > nd:
            output_size = output_size[-nd:]
        out = int_tuple(op, "output_size", output_size, nd, 1)
        for axis in range(nd):
            lo, hi = default[axis] - stride[axis], default[axis] + stride[axis]
            if not lo < out[axis] < hi:
                raise PoolingInputError(
                    f"{op}: output_size {out} is not reachable from input size {tuple(input_size)}: "
                    f"on axis {axis} it must lie strictly between {lo} and {hi} "
                    f"(default {default[axis]})."
                )
    for axis, v in enumerate(out):
        if v < 1:
            raise PoolingInputError(
                f"{op}: the unpooled size on axis {axis} would be {v}. Check kernel_size, stride and "
                f"padding, or pass output_size."
            )
    return tuple(int(v) for v in out)
