"""Base of poolkit's pooling modules: settings as attributes, checked at construction.

Also the checks and parameter helpers the modules' constructors share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..._validate import check_choice
from ...errors import PoolingConfigError
from ...geometry import check_window_settings as check_window
from ...ops._input import DATA_FORMATS

__all__ = ["PoolModule", "WindowModule", "check_window", "check_generator", "clamp_straight_through"]


class PoolModule(torch.nn.Module):
    """Calls ``function`` with the tensors named in ``tensors`` and the settings named in ``settings``,
    read from attributes, as keyword arguments.

    Subclasses set the attributes in ``__init__`` (PyTorch's names, so code
    reading ``m.kernel_size`` keeps working), checked with the functional's
    own checks (:meth:`_set_window`, :meth:`_set_format`); ``described``
    names further attributes for the repr.
    """

    function: ClassVar[Callable[..., Any]]
    settings: ClassVar[tuple[str, ...]]
    tensors: ClassVar[tuple[str, ...]] = ()
    described: ClassVar[tuple[str, ...]] = ()
    nd: int

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments ``forward`` passes to ``function`` after ``x``."""
        return {name: getattr(self, name) for name in (*self.tensors, *self.settings)}

    def forward(self, x: torch.Tensor) -> Any:
        return type(self).function(x, **self.arguments())

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in (*self.settings, *self.described))

    def _set_window(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        dilation: Any = 1,
    ) -> str:
        """Check window settings (``check_window``, rank ``nd``) and store them, ``stride=None`` as the
        kernel size (as torch.nn's pooling layers store it). Returns the name for further messages."""
        name = type(self).__name__
        check_window(name, self.nd, kernel_size, stride, padding, dilation, ceil_mode)
        self.kernel_size, self.padding, self.ceil_mode = kernel_size, padding, ceil_mode
        self.stride = kernel_size if stride is None else stride
        return name

    def _set_format(self, data_format: Any) -> None:
        self.data_format = check_choice(type(self).__name__, "data_format", data_format, DATA_FORMATS)


class WindowModule(PoolModule):
    """A module whose only settings are the window (no dilation) and the data format."""

    settings = ("kernel_size", "stride", "padding", "ceil_mode", "data_format")

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        self._set_window(kernel_size, stride, padding, ceil_mode)
        self._set_format(data_format)


def check_generator(name: str, generator: Any) -> Any:
    """None (torch's global generator) or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise PoolingConfigError(
            f"{name}: generator must be None (torch's global generator) or a torch.Generator, got "
            f"{generator!r}."
        )
    return generator


def clamp_straight_through(p: torch.Tensor, low: float, high: float | None = None) -> torch.Tensor:
    """``p`` clamped to ``[low, high]`` in value, with the identity's gradient.

    A parameter an optimizer pushes past an end then acts as that end, and keeps a gradient that
    can bring it back (a plain clamp would give it 0 there and leave it stuck).
    """
    return p + (p.clamp(low, high) - p).detach()
