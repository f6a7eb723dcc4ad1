"""Shared plumbing for the torch backend: input checks, layouts, geometry on tensors.

Everything here is plain torch on static shapes, so functions built on it
trace under ``torch.compile(fullgraph=True)`` and ``torch.export``; the
geometry itself is :mod:`poolkit.geometry`, the same frozen spec the NumPy
reference reads.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._validate import check_choice
from ..errors import PoolingConfigError, PoolingInputError
from ..geometry import WindowSpec
from ..ops._input import DATA_FORMATS, check_rank, float_dtype_error, infer_ndim

__all__ = [
    "Prepared",
    "prepare",
    "infer_ndim",
    "pad_pairs",
    "pad_to_windows",
    "tap_views",
    "window_sum",
    "divisor",
    "as_generator",
    "aliases",
    "param_tensor",
]


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


def tap_views(xp: torch.Tensor, spec: WindowSpec) -> Iterator[tuple[tuple[int, ...], torch.Tensor]]:
    """For each kernel offset (row-major), the strided view of a padded input it reads.

    ``xp`` must be padded by :func:`pad_to_windows`; each view has the
    output's shape. Views share memory with ``xp``: no kernel-volume copy.
    """
    for k in itertools.product(*(range(ax.kernel) for ax in spec.axes)):
        idx: list[Any] = [slice(None), slice(None)]
        for a, ax in enumerate(spec.axes):
            start = k[a] * ax.dilation
            idx.append(slice(start, start + (ax.out - 1) * ax.stride + 1, ax.stride))
        yield k, xp[tuple(idx)]


def window_sum(x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """Sum over each window (padding and overhang contribute 0)."""
    nd = spec.ndim
    xp = pad_to_windows(x, spec, 0.0)
    if all(ax.dilation == 1 for ax in spec.axes):
        # mean * volume rather than divisor_override=1: ONNX's AveragePool has no divisor override
        pool = (
            torch.nn.functional.avg_pool1d,
            torch.nn.functional.avg_pool2d,
            torch.nn.functional.avg_pool3d,
        )[nd - 1]
        return pool(xp, spec.kernel_size, spec.stride) * math.prod(spec.kernel_size)
    total = None
    for _, v in tap_views(xp, spec):
        total = v if total is None else total + v
    assert total is not None
    return total


def divisor(spec: WindowSpec, include_pad: bool, like: torch.Tensor) -> torch.Tensor:
    """Taps averaged by each window (PyTorch's rule), shaped ``(1, 1, *out)``, never 0."""
    d = spec.divisor(include_pad).clip(1, None)
    return torch.as_tensor(d, dtype=like.dtype, device=like.device).reshape((1, 1, *d.shape))


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
        return value.to(device=like.device, dtype=like.dtype) if value.dtype != like.dtype else value
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


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


class _Shape:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape, self.ndim = shape, len(shape)


def nd_of(op: str, x: Any, ndim: int | None, *hints: Any) -> int:
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
    return infer_ndim(op, _Shape(tuple(getattr(x, "shape", ()))), None)  # raises the shared message
