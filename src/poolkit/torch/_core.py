"""Shared plumbing for the torch backend: input checks, layouts, geometry, dtypes and parameters.

Everything here is plain torch on static shapes, so functions built on it
trace under ``torch.compile(fullgraph=True)`` and ``torch.export``; the
geometry itself is :mod:`poolkit.geometry`, the same frozen spec the NumPy
reference reads. Tap loops and window reductions are in :mod:`._taps`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validate import check_choice
from ..errors import PoolingConfigError, PoolingInputError
from ..geometry import WindowSpec, window_spec
from ..ops._input import DATA_FORMATS, check_rank, float_dtype_error, infer_ndim
from ..ops._params import channel_param as _check_channel_param

__all__ = [
    "Prepared",
    "prepare",
    "Shaped",
    "infer_ndim",
    "nd_of",
    "windowed",
    "pad_pairs",
    "pad_to_windows",
    "crop_output",
    "divisor",
    "compute_dtype",
    "upcast",
    "needs_grad",
    "generic_grads",
    "zero_nonfinite",
    "as_generator",
    "param_tensor",
    "real_tensor",
    "channel_param",
    "aliases",
    "portable",
    "force_portable",
    "generic_paths",
    "all_finite",
    "in_graph",
    "cpu_fast_path",
    "host_empty",
    "host_zeros",
]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Prepared:
    """A checked input: ``x`` is a channels-first view ``(N, C, *spatial)``."""

    x: torch.Tensor
    nd: int
    batched: bool
    channels_last: bool
    dtype: torch.dtype

    @property
    def spatial(self) -> tuple[int, ...]:
        # int(): under the legacy (TorchScript) exporter sizes are traced tensors; geometry wants ints
        return tuple(int(n) for n in self.x.shape[2:])

    def to_user(self, y: torch.Tensor) -> torch.Tensor:
        """Channels-first result -> the user's layout and batch axis."""
        if self.channels_last:
            y = y.movedim(1, -1)
        if not self.batched:
            y = y.squeeze(0)
        return y

    def from_user(self, a: torch.Tensor) -> torch.Tensor:
        """An array in the user's layout (indices, masks) -> channels-first."""
        if not self.batched:
            a = a.unsqueeze(0)
        return a.movedim(-1, 1) if self.channels_last else a


def prepare(
    x: Any, *, op: str, nd: int, data_format: str = "channels_first", allow_unbatched: bool = True
) -> Prepared:
    """Check ``x`` (a floating tensor of the right rank) and view it channels-first."""
    data_format = check_choice(op, "data_format", data_format, DATA_FORMATS)
    channels_last = data_format == "channels_last"
    if not isinstance(x, torch.Tensor):
        raise PoolingInputError(
            f"{op} expects a torch.Tensor, got {type(x).__name__}. Use torch.as_tensor(x), or poolkit.ops for "
            f"NumPy arrays."
        )
    if not x.is_floating_point():
        kind = "complex" if x.is_complex() else str(x.dtype).replace("torch.", "")
        raise float_dtype_error(op, kind, "x", "float()")
    batched = check_rank(op, x.shape, nd, channels_last, allow_unbatched, what="tensor")
    if not batched:
        x = x.unsqueeze(0)
    if channels_last:
        x = x.movedim(-1, 1)
    return Prepared(x, nd, batched, channels_last, x.dtype)


class Shaped:
    """A stand-in with only ``shape`` and ``ndim``, for NumPy-side checks that read no values."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape, self.ndim = shape, len(shape)


def nd_of(op: str, x: Any, ndim: int | None, *hints: Any, variants: bool = True) -> int:
    """Spatial rank, as :func:`poolkit.ops._input.infer_ndim` decides it (without NumPy calls on tensors,
    which ``torch.compile`` cannot trace)."""
    if ndim is not None:
        return ndim
    for h in hints:
        if isinstance(h, (tuple, list)) and len(h) > 0:
            return len(h)
    rank = x.dim() if isinstance(x, torch.Tensor) else len(getattr(x, "shape", ()))
    if rank >= 3:
        return rank - 2
    # raises the shared message
    return infer_ndim(op, Shaped(tuple(getattr(x, "shape", ()))), None, variants=variants)


def windowed(
    op: str,
    x: Any,
    ndim: int | None,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    data_format: str = "channels_first",
    dilation: Any = 1,
) -> tuple[Prepared, WindowSpec]:
    """The prologue of a sliding-window operator: rank, checked input and window geometry."""
    nd = nd_of(op, x, ndim, kernel_size, stride, dilation)
    p = prepare(x, op=op, nd=nd, data_format=data_format)
    return p, window_spec(p.spatial, kernel_size, stride, padding, dilation, ceil_mode, op=op)


# --------------------------------------------------------------------------- geometry on tensors


def pad_pairs(spec: WindowSpec, extra_hi: bool = True) -> list[int]:
    """``F.pad`` argument (last axis first) for the spec's padding, plus the ceil overhang."""
    out: list[int] = []
    for ax in reversed(spec.axes):
        out += [ax.pad_lo, ax.pad_hi + (ax.overhang if extra_hi else 0)]
    return out


def pad_to_windows(x: torch.Tensor, spec: WindowSpec, value: float) -> torch.Tensor:
    """Pad so that every window lies inside: explicit padding plus the ceil-mode overhang."""
    pads = pad_pairs(spec)
    if not any(pads):
        return x
    return torch.nn.functional.pad(x, pads, value=value)


def crop_output(y: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """The spec's output (the leading windows) of a result computed on more windows."""
    if tuple(y.shape[2:]) == spec.output_size:
        return y
    return y[(slice(None), slice(None), *(slice(0, o) for o in spec.output_size))]


def divisor(spec: WindowSpec, include_pad: bool, like: torch.Tensor) -> torch.Tensor:
    """Taps averaged by each window (PyTorch's rule), shaped ``(1, 1, *out)``, never 0."""
    d = spec.divisor(include_pad).clip(1, None)
    return torch.as_tensor(d, dtype=like.dtype, device=like.device).reshape((1, 1, *d.shape))


# --------------------------------------------------------------------------- dtypes, autograd


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype poolkit computes in: float32 for float16/bfloat16, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def upcast(x: torch.Tensor, cpu_only: bool = False) -> torch.Tensor:
    """``x`` in :func:`compute_dtype`; with ``cpu_only`` half precision is kept off the CPU (PyTorch's
    pooling kernels accumulate in float32 there themselves)."""
    if cpu_only and x.device.type != "cpu":
        return x
    return x.to(compute_dtype(x.dtype))


def needs_grad(*tensors: Any) -> bool:
    """Whether autograd will differentiate through any of ``tensors``."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def generic_grads(
    y: torch.Tensor, inputs: Sequence[torch.Tensor], needs: Sequence[bool], g: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """A custom Function's gradients by autograd through a generic formulation ``y`` of its
    ``inputs``: one per input, None where ``needs`` (``ctx.needs_input_grad``) is false; recorded
    when grad mode is on (a double backward)."""
    wanted = [t for t, want in zip(inputs, needs) if want]
    grads = iter(torch.autograd.grad(y, wanted, g, create_graph=torch.is_grad_enabled(), allow_unused=True))
    return tuple(next(grads) if want else None for want in needs)


def zero_nonfinite(t: torch.Tensor) -> torch.Tensor:
    """``t`` with NaN and infinities replaced by 0 (gradients of windows that pass none)."""
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


# --------------------------------------------------------------------------- arguments


def as_generator(op: str, rng: Any, device: torch.device) -> torch.Generator | None:
    """``None`` (torch's global generator), an int seed, or a ``torch.Generator``."""
    if rng is None or isinstance(rng, torch.Generator):
        return rng
    if isinstance(rng, int) and not isinstance(rng, bool):
        g = torch.Generator(device=device)
        g.manual_seed(rng)
        return g
    raise PoolingConfigError(
        f"{op}: rng must be None (torch's global generator), an int seed or a torch.Generator, got {rng!r}."
    )


def param_tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A learnable argument (float, array or tensor) as a tensor on ``like``'s device and dtype."""
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=like.dtype)  # no copy when both already match
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def real_tensor(op: str, name: str, value: torch.Tensor) -> None:
    """Raise unless ``value`` holds real numbers (not complex, not bool)."""
    if value.is_complex() or value.dtype == torch.bool:
        raise PoolingInputError(
            f"{op}: {name} must be a real-valued tensor, got dtype {value.dtype}. Convert with "
            f"{name}.float()."
        )


def channel_param(op: str, name: str, value: Any, x: torch.Tensor, nd: int, hint: str) -> torch.Tensor:
    """A learnable positive scalar-or-per-channel argument (GeM's ``p``, LSE's ``r``) broadcasting
    against ``(N, C, *out)``.

    Floats and arrays are validated as the NumPy operator does
    (:func:`poolkit.ops._params.channel_param`: > 0, finite); a tensor's
    values are not read (that would be a host sync), only its shape.
    """
    c = int(x.shape[1])
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise PoolingConfigError(
                f"{op}: {name} must be a positive real number or a tensor of {c} of them (one per channel), "
                f"got a {str(value.dtype).replace('torch.', '')} tensor."
            )
        if value.dim() != 0 and tuple(value.shape) != (c,):
            raise PoolingInputError(
                f"{op}: {name} must be a scalar or have shape ({c},) (one value per channel of x), got shape "
                f"{tuple(value.shape)}. Pass one value, or one per channel."
            )
        t = param_tensor(value, x)
    else:
        param = _check_channel_param(op, name, value, c, np.float64, hint)
        data: Any = param.scalar if param.scalar is not None else param.value
        t = torch.as_tensor(data, dtype=x.dtype, device=x.device)
    return t if t.dim() == 0 else t.reshape(1, c, *[1] * nd)


def aliases(
    public: Callable[..., Any], impl: Callable[..., Any], ndims: Sequence[int]
) -> dict[str, Callable[..., Any]]:
    """``max_pool2d`` etc.: ``public``'s signature with the spatial rank fixed."""
    out = {}
    for nd in ndims:
        name = f"{public.__name__}{nd}d"

        def alias(*args: Any, _nd: int = nd, _name: str = name, **kwargs: Any) -> Any:
            return impl(*args, ndim=_nd, op=_name, **kwargs)

        functools.update_wrapper(alias, public)
        alias.__name__ = alias.__qualname__ = name
        alias.__signature__ = inspect.signature(public)  # type: ignore[attr-defined]
        summary = (inspect.getdoc(public) or "").splitlines()[0].rstrip(".")
        alias.__doc__ = (
            f"{summary}, for {nd}-D spatial inputs.\n\nSee :func:`{public.__module__}.{public.__name__}`."
        )
        del alias.__wrapped__
        out[name] = alias
    return out


# --------------------------------------------------------------------------- portable paths


class _Switch:
    """A process-wide flag, set for the duration of a ``with`` block (tests, trying a path)."""

    def __init__(self) -> None:
        self.on = False

    @contextlib.contextmanager
    def __call__(self, enabled: bool = True) -> Iterator[None]:
        previous, self.on = self.on, enabled
        try:
            yield
        finally:
            self.on = previous


_FORCE_PORTABLE = _Switch()
_FORCE_GENERIC = _Switch()


def force_portable(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Make :func:`portable` true for every call inside the block (tests, or to try the paths on a CPU)."""
    return _FORCE_PORTABLE(enabled)


def portable(x: torch.Tensor) -> bool:
    """Whether to avoid the native kernels whose CUDA backward throws in deterministic mode.

    True when ``x`` will be differentiated on an accelerator under
    ``torch.use_deterministic_algorithms(True)`` (``avg_pool3d``, adaptive
    average and max pooling, fractional max pooling have no deterministic
    backward there), or inside :func:`force_portable`. Callers then take
    pure-torch paths whose backward is deterministic (docs/torch.md).
    """
    if _FORCE_PORTABLE.on:
        return True
    return x.device.type != "cpu" and torch.are_deterministic_algorithms_enabled() and needs_grad(x)


# --------------------------------------------------------------------------- CPU fast paths


def generic_paths(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Make :func:`cpu_fast_path` false inside the block: operators then take the paths they take on
    accelerators and in compiled or exported graphs (tests)."""
    return _FORCE_GENERIC(enabled)


def finite_bound(t: torch.Tensor) -> float | None:
    """The largest magnitude in ``t``, or None where a value is not finite: one reduction (NaN
    propagates), read on the host, so for :func:`cpu_fast_path` calls only."""
    if t.numel() == 0:
        return 0.0
    low, high = (float(v) for v in torch.aminmax(t.detach()))
    return max(-low, high) if math.isfinite(low) and math.isfinite(high) else None


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite (:func:`finite_bound`)."""
    return finite_bound(t) is not None


def cpu_fast_path(x: torch.Tensor) -> bool:
    """Whether an operator may take its eager-CPU formulation for ``x``.

    These paths read a value on the host (SoftPool, LIP and LSE shift their
    exponents by each plane's maximum and check that no window's weights
    underflowed, else they shift by each window's; gated, stochastic, max-blur
    and DPP check that their windows are finite), allocate in NumPy's memory
    (:func:`host_empty`), or use kernels that are deterministic on the CPU only
    (``scatter_add_`` in the mixed, stochastic, median and S3 gradients). Accelerators, compiled graphs, tracing and
    export take the generic paths, which need neither.
    """
    if _FORCE_GENERIC.on or x.device.type != "cpu" or x.numel() == 0:
        return False
    return not in_graph()


def in_graph() -> bool:
    """Whether the call is being compiled, traced or scripted (a graph, not eager execution)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


# NumPy advises the kernel to back allocations from 4 MiB up with huge pages; PyTorch's CPU
# allocator does not, and on a first touch of 4 KiB pages a fresh input-sized buffer can cost
# more than the arithmetic written into it (measured here: 43 ms against 12 ms to fill 100 MB).
_HOST_DTYPES = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}
_HUGE = 1 << 22


def host_empty(shape: Sequence[int], dtype: torch.dtype, zero: bool = False) -> torch.Tensor:
    """A new contiguous CPU tensor for :func:`cpu_fast_path` formulations, in NumPy-allocated memory
    where it is large (huge pages), else PyTorch's; zeroed with ``zero``.

    Only for tensors that stay on the CPU path (buffers, outputs and gradients
    of eager CPU calls): such a tensor shares the array's memory, which cannot
    be resized.
    """
    shape = tuple(int(v) for v in shape)
    np_dtype = _HOST_DTYPES.get(dtype)
    if np_dtype is None or int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize < _HUGE:
        return torch.zeros(shape, dtype=dtype) if zero else torch.empty(shape, dtype=dtype)
    return torch.from_numpy((np.zeros if zero else np.empty)(shape, np_dtype))


def host_ufunc(name: str, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``torch.<name>(t, out=out)`` (``log``, ``exp``, ...) for :func:`cpu_fast_path` buffers
    outside autograd, through NumPy's ufunc when PyTorch runs on one thread: NumPy's SIMD loops
    run float32 ``log`` and ``exp`` about 2.7x and 1.8x faster than PyTorch's on one core here
    (float64 2.9x and 2.0x). With more threads PyTorch's kernel (which parallelises; NumPy's
    does not), and for dtypes NumPy lacks."""
    if torch.get_num_threads() == 1 and t.dtype in (torch.float32, torch.float64) and out.dtype == t.dtype:
        getattr(np, name)(t.detach().numpy(), out=out.detach().numpy())
        return out
    return getattr(torch, name)(t, out=out)


def host_zeros(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """:func:`host_empty` filled with zeros (the kernel's zero pages: no pass of our own)."""
    return host_empty(shape, dtype, zero=True)
