"""Base of poolkit's pooling modules: settings as attributes, checked at construction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ...geometry import check_window_settings as check_window

__all__ = ["PoolModule", "check_window"]


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
