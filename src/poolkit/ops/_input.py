"""Input checks and layout handling shared by every NumPy operator.

Operators compute on a channels-first *view* ``(N, C, *spatial)`` of the
user's array, whatever its memory layout; results are allocated in the
user's layout so channels-last inputs give channels-last outputs without a
transpose copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_choice
from ..errors import PoolingInputError

__all__ = [
    "Batch",
    "prepare",
    "infer_ndim",
    "axis_names",
    "check_grad",
    "check_rank",
    "float_dtype_error",
    "DATA_FORMATS",
]

_LETTERS = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
DATA_FORMATS = ("channels_first", "channels_last")


def axis_names(nd: int, channels_last: bool = False, batched: bool = True) -> str:
    sp = _LETTERS.get(nd, tuple(f"S{i}" for i in range(nd)))
    names = (*sp, "C") if channels_last else ("C", *sp)
    if batched:
        names = ("N", *names)
    return "(" + ", ".join(names) + ")"


def infer_ndim(op: str, x: Any, ndim: int | None, *hints: Any, variants: bool = True) -> int:
    """Spatial rank: fixed by the alias, else the length of a tuple setting, else ``x.ndim - 2``."""
    if ndim is not None:
        return ndim
    for h in hints:
        if isinstance(h, (Sequence, np.ndarray)) and not isinstance(h, str) and len(h) > 0:
            return len(h)
    rank = np.ndim(x)
    if rank < 3:
        also = f" or call the {op}1d/{op}2d/{op}3d variant, which takes unbatched input" if variants else ""
        raise PoolingInputError(
            f"{op} expects an array shaped (N, C, *spatial) with at least one spatial axis, got "
            f"shape {np.shape(x)}. Add batch and channel axes with x[None, None]{also}."
        )
    return rank - 2


@dataclass(frozen=True)
class Batch:
    """A checked input: ``x`` is a channels-first view in the compute dtype."""

    x: np.ndarray
    nd: int
    batched: bool
    channels_last: bool
    dtype: np.dtype
    op: str

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])

    def empty(self, shape: Sequence[int], dtype: Any = None, fill: Any = None) -> np.ndarray:
        """A new channels-first view ``shape`` whose memory follows the user's layout."""
        dtype = self.x.dtype if dtype is None else dtype
        shape = tuple(shape)
        phys = (shape[0], *shape[2:], shape[1]) if self.channels_last else shape
        if fill is None:
            arr = np.empty(phys, dtype)
        elif fill == 0:
            arr = np.zeros(phys, dtype)  # calloc: the kernel's zeroed pages, no extra fill pass
        else:
            arr = np.full(phys, fill, dtype)
        return np.moveaxis(arr, -1, 1) if self.channels_last else arr

    def zeros(self, shape: Sequence[int], dtype: Any = None) -> np.ndarray:
        return self.empty(shape, dtype, 0)

    def to_user(self, y: np.ndarray, cast: bool = True) -> np.ndarray:
        """Channels-first result -> the user's layout, batch axis and dtype."""
        if self.channels_last:
            y = np.moveaxis(y, 1, -1)
        if not self.batched:
            y = y[0]
        if cast and y.dtype != self.dtype:
            y = y.astype(self.dtype)
        return y

    def from_user(self, a: Any, name: str, shape_cf: Sequence[int], dtype: Any = None) -> np.ndarray:
        """An array given in the user's layout (a gradient, indices) -> channels-first view."""
        a = np.asarray(a)
        expect_cf = tuple(shape_cf)
        expect = expect_cf if not self.channels_last else (expect_cf[0], *expect_cf[2:], expect_cf[1])
        if not self.batched:
            expect = expect[1:]
        if a.shape != expect:
            raise PoolingInputError(
                f"{self.op}: {name} must have shape {expect} (the shape of the output), got {a.shape}."
            )
        if not self.batched:
            a = a[None]
        if self.channels_last:
            a = np.moveaxis(a, -1, 1)
        if dtype is not None and a.dtype != dtype:
            a = a.astype(dtype)
        return a


def _has_alias(name: str) -> bool:
    from ..registry import resolve

    try:
        resolve(name)
    except ValueError:
        return False
    return True


def float_dtype_error(
    op: str, kind: str, name: str = "x", convert: str = "astype(np.float32)"
) -> PoolingInputError:
    """The error for a non-floating input; ``kind`` is the dtype's name or "complex"."""
    return PoolingInputError(
        f"{op} expects a floating-point {name} (float16, float32 or float64), got dtype {kind}. "
        f"Convert with {name}.{convert}"
        + (" (or pool the real and imaginary parts separately)." if kind == "complex" else ".")
    )


def check_float(op: str, x: np.ndarray, name: str = "x") -> None:
    if not np.issubdtype(x.dtype, np.floating):
        kind = "complex" if np.issubdtype(x.dtype, np.complexfloating) else x.dtype.name
        raise float_dtype_error(op, kind, name)


def check_rank(
    op: str,
    shape: Sequence[int],
    nd: int,
    channels_last: bool,
    allow_unbatched: bool = True,
    what: str = "array",
) -> bool:
    """Whether ``shape`` is batched; raise the rank error (for any backend) if it fits neither form."""
    rank = len(shape)
    if rank == nd + 2:
        return True
    if rank == nd + 1 and allow_unbatched:
        return False
    want = f"a {nd + 2}-D {what} shaped {axis_names(nd, channels_last)}"
    if allow_unbatched:
        want += f" or a {nd + 1}-D unbatched {what} {axis_names(nd, channels_last, False)}"
    if rank == nd:
        fix = " Add batch and channel axes with x[None, None]."
    elif rank > nd + 2 or rank < nd:
        other = rank - 2
        base = op[:-2] if op[-2:-1].isdigit() else op
        fix = f" For a {other}-D spatial input use {base}{other}d." if _has_alias(f"{base}{other}d") else ""
    else:
        fix = ""
    raise PoolingInputError(f"{op} expects {want}, got shape {tuple(shape)}.{fix}")


def prepare(
    x: Any,
    *,
    op: str,
    nd: int,
    data_format: str = "channels_first",
    accumulate: bool = False,
    allow_unbatched: bool = True,
) -> Batch:
    """Check ``x`` and return a :class:`Batch`.

    ``accumulate=True`` computes float16 inputs in float32 (sums, means).
    """
    data_format = check_choice(op, "data_format", data_format, DATA_FORMATS)
    channels_last = data_format == "channels_last"
    x = np.asarray(x)
    check_float(op, x)
    batched = check_rank(op, x.shape, nd, channels_last, allow_unbatched)
    if not batched:
        x = x[None]
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    dtype = x.dtype
    if accumulate and dtype == np.float16:
        x = x.astype(np.float32)
    return Batch(x, nd, batched, channels_last, dtype, op)


def check_grad(batch: Batch, grad: Any, shape_cf: Sequence[int], name: str = "grad_output") -> np.ndarray:
    """Validate an upstream gradient and return it as a channels-first view."""
    g = batch.from_user(grad, name, shape_cf)
    if not np.issubdtype(g.dtype, np.floating):
        g = g.astype(batch.x.dtype)
    return g
