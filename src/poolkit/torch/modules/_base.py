"""Base of poolkit's pooling modules: settings as attributes, checked at construction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ...geometry import window_spec

__all__ = ["PoolModule", "check_window"]

_BIG = 1 << 30  # a notional input large enough for any window: only the settings are checked


def check_window(
    op: str, nd: int, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool
) -> None:
    """Raise the geometry's errors for settings that are wrong on their own (not input-dependent)."""
    window_spec((_BIG,) * nd, kernel_size, stride, padding, dilation, ceil_mode, op=op)


class PoolModule(torch.nn.Module):
    """Calls ``function`` with the settings named in ``settings``, read from attributes.

    Subclasses set the attributes in ``__init__`` (PyTorch's names, so code
    reading ``m.kernel_size`` keeps working) and call :meth:`_check`.
    """

    function: ClassVar[Callable[..., Any]]
    settings: ClassVar[tuple[str, ...]]

    def forward(self, x: torch.Tensor) -> Any:
        return type(self).function(x, **{name: getattr(self, name) for name in self.settings})

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self.settings)
