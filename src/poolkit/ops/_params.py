"""Learnable operator parameters: a scalar or one value per channel, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PoolingConfigError, PoolingInputError

__all__ = ["ChannelParam", "channel_param"]


@dataclass(frozen=True)
class ChannelParam:
    """A validated scalar-or-per-channel parameter (GeM's ``p``, LSE's ``r``).

    ``value`` is ``(C,)`` in the compute dtype; ``scalar`` is the value as a
    float when one number was passed (engines use it for fast paths).
    """

    value: np.ndarray
    scalar: float | None
    shape: tuple[int, ...]
    grad_dtype: Any  # None: the user passed a Python/NumPy scalar, its gradient is a float

    def blocks(self, lead: tuple[int, int], nd: int) -> np.ndarray:
        """``(N, C, 1, ...)`` broadcast view, sliced for free by :func:`blockwise`."""
        c = self.value.shape[0]
        return np.broadcast_to(self.value.reshape(1, c, *[1] * nd), (*lead, *[1] * nd))

    def column(self, nd: int) -> np.ndarray:
        """``(1, C, 1, ...)`` view for output-sized arithmetic."""
        return self.value.reshape(1, -1, *[1] * nd)

    def grad(self, per_position: np.ndarray) -> Any:
        """Reduce ``(N, C, *spatial)`` contributions to the parameter's own shape and type."""
        per_channel = per_position.sum(axis=(0, *range(2, per_position.ndim)), dtype=np.float64)
        if self.grad_dtype is None:
            return float(per_channel.sum())
        total = per_channel.sum() if self.shape == () else per_channel
        return np.asarray(total, dtype=self.grad_dtype)


def channel_param(op: str, name: str, value: Any, channels: int, dtype: Any, hint: str) -> ChannelParam:
    """Validate a positive, finite scalar or ``(C,)`` array parameter.

    ``hint`` ends the message for a value out of range (what a typical value is).
    """
    if isinstance(value, (bool, np.bool_)):
        raise PoolingConfigError(f"{op}: {name} must be a real number or an array of them, got {value!r}.")
    is_array = isinstance(value, np.ndarray)
    a = np.asarray(value)
    if a.dtype.kind not in "iuf":
        raise PoolingConfigError(
            f"{op}: {name} must be a positive real number or an array of {channels} of them "
            f"(one per channel), got {value!r}."
        )
    if a.ndim != 0 and a.shape != (channels,):
        raise PoolingInputError(
            f"{op}: {name} must be a scalar or have shape ({channels},) (one value per channel of x), "
            f"got shape {a.shape}. Pass one value, or one per channel."
        )
    vals = a.astype(np.float64)
    bad = vals[~(np.isfinite(vals) & (vals > 0))]
    if bad.size:
        raise PoolingConfigError(f"{op}: {name} must be > 0 and finite, got {float(bad.flat[0])!r}. {hint}")
    grad_dtype = None
    if is_array:
        grad_dtype = a.dtype if a.dtype.kind == "f" else np.dtype(np.float64)
    scalar = float(vals) if a.ndim == 0 else None
    return ChannelParam(
        np.broadcast_to(vals, (channels,)).astype(dtype), scalar, a.shape if is_array else (), grad_dtype
    )
