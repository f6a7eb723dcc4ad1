"""Modules for the learned pooling operators: gated, tree and detail-preserving pooling.

Their learnable filters and coefficients are ``nn.Parameter``s: one set for
the layer (``channels=None``) or one per channel (``channels=C``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..._validate import check_bool, check_int, check_real, int_tuple
from .. import functional as F
from ._base import PoolModule, clamp_straight_through

__all__ = [
    *(f"GatedPool{n}d" for n in (1, 2, 3)),
    *(f"TreePool{n}d" for n in (1, 2, 3)),
    *(f"DPPPool{n}d" for n in (1, 2, 3)),
]


class _Window(PoolModule):
    """Window settings (no dilation), checked at construction; ``kernel`` is the kernel as a tuple."""

    settings = ("kernel_size", "stride", "padding", "ceil_mode", "data_format")

    def _window(self, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool, data_format: str) -> str:
        name = self._set_window(kernel_size, stride, padding, ceil_mode)
        self.kernel = int_tuple(name, "kernel_size", kernel_size, self.nd, 1)
        self._set_format(data_format)
        return name

    def _channels(self, name: str, channels: Any) -> tuple[int, ...]:
        """``()`` for one set of parameters per layer, ``(C,)`` for one per channel."""
        if channels is None:
            return ()
        return (check_int(name, "channels", channels, 1),)


class _GatedPool(_Window):
    tensors = ("weight",)

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        channels: int | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._window(kernel_size, stride, padding, ceil_mode, data_format)
        self.channels = channels
        self.weight = torch.nn.Parameter(torch.zeros(*self._channels(name, channels), *self.kernel))


class GatedPool1d(_GatedPool):
    """Gated max-average pooling (Lee et al. 2016) over one spatial axis."""

    nd, function = 1, staticmethod(F.gated_pool1d)


class GatedPool2d(_GatedPool):
    """Gated max-average pooling (Lee, Gallagher, Tu, AISTATS 2016): ``s max + (1 - s) avg``.

    ``weight`` (the gate filter: ``kernel_size`` shaped, or
    ``(channels, *kernel_size)`` with ``channels=C``) starts at 0, so an
    untrained layer outputs ``(max + avg) / 2``.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import GatedPool2d
    >>> m = GatedPool2d(2, channels=3)
    >>> m.weight.shape, m(torch.rand(1, 3, 8, 8)).shape
    (torch.Size([3, 2, 2]), torch.Size([1, 3, 4, 4]))
    """

    nd, function = 2, staticmethod(F.gated_pool2d)


class GatedPool3d(_GatedPool):
    """Gated max-average pooling (Lee et al. 2016) over three spatial axes."""

    nd, function = 3, staticmethod(F.gated_pool3d)


class _TreePool(_Window):
    tensors, described = ("leaves", "gates"), ("depth", "channels")

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        depth: int = 2,
        channels: int | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._window(kernel_size, stride, padding, ceil_mode, data_format)
        self.depth = check_int(name, "depth", depth, 1)
        self.channels = channels
        n_leaves = 2 ** (self.depth - 1)
        per = self._channels(name, channels)
        self.leaves = torch.nn.Parameter(torch.empty(n_leaves, *per, *self.kernel))
        self.gates = torch.nn.Parameter(torch.empty(n_leaves - 1, *per, *self.kernel))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Leaves: the average filter ``1 / K`` plus noise of 10% of it (torch's global generator),
        so leaves differ and the gates get a gradient; gates: 0 (every gate at 1/2)."""
        k = math.prod(self.kernel)
        with torch.no_grad():
            self.leaves.copy_(1.0 / k + torch.randn_like(self.leaves) * (0.1 / k))
            self.gates.zero_()


class TreePool1d(_TreePool):
    """Tree pooling (Lee et al. 2016) over one spatial axis."""

    nd, function = 1, staticmethod(F.tree_pool1d)


class TreePool2d(_TreePool):
    """Tree pooling (Lee, Gallagher, Tu, AISTATS 2016): learned leaf filters mixed by a tree of gates.

    ``depth`` levels: ``2**(depth - 1)`` leaves and one fewer gates, each a
    filter of the kernel's shape (``(channels, *kernel_size)`` each with
    ``channels=C``). Initialised as :meth:`reset_parameters` says: the tree
    starts near average pooling.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import TreePool2d
    >>> m = TreePool2d(2, depth=2)
    >>> m.leaves.shape, m.gates.shape
    (torch.Size([2, 2, 2]), torch.Size([1, 2, 2]))
    """

    nd, function = 2, staticmethod(F.tree_pool2d)


class TreePool3d(_TreePool):
    """Tree pooling (Lee et al. 2016) over three spatial axes."""

    nd, function = 3, staticmethod(F.tree_pool3d)


class _DPPPool(_Window):
    settings = ("kernel_size", "stride", "padding", "ceil_mode", "asymmetric", "eps", "data_format")
    described = ("channels",)

    def __init__(
        self,
        kernel_size: Any,
        channels: int | None,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        asymmetric: bool = False,
        eps: float = 1e-3,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._window(kernel_size, stride, padding, ceil_mode, data_format)
        self.channels = channels
        self.asymmetric = check_bool(name, "asymmetric", asymmetric)
        self.eps = check_real(name, "eps", eps, low=0.0, low_inclusive=False)
        per = self._channels(name, channels)
        self.alpha = torch.nn.Parameter(torch.empty(per))
        self.lam = torch.nn.Parameter(torch.empty(per))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``alpha = 1`` and ``lam = 1``: weights ``1 + |d|``, a mild preference for detail."""
        with torch.no_grad():
            self.alpha.fill_(1.0)
            self.lam.fill_(1.0)

    def arguments(self) -> dict[str, Any]:
        """``alpha`` and ``lam`` enter clamped at 0 (straight-through), so they stay valid whatever the
        optimizer does to the raw parameters."""
        clamped = {name: clamp_straight_through(getattr(self, name), 0.0) for name in ("alpha", "lam")}
        return {**clamped, **super().arguments()}


class DPPPool1d(_DPPPool):
    """Detail-preserving pooling (Saeedan et al. 2018) over one spatial axis."""

    nd, function = 1, staticmethod(F.dpp_pool1d)


class DPPPool2d(_DPPPool):
    """Detail-preserving pooling (Saeedan, Weber, Goesele, Roth, CVPR 2018).

    ``alpha`` and ``lam`` are parameters of shape ``(channels,)`` (or ``()``
    with ``channels=None``: one per layer), both initialised to 1. They must
    be ``>= 0``: the forward pass clamps them at 0 with a straight-through
    gradient, so an optimizer step past 0 acts as 0 and can come back.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import DPPPool2d
    >>> m = DPPPool2d(2, 3)
    >>> m.alpha.shape, m(torch.rand(1, 3, 8, 8)).shape
    (torch.Size([3]), torch.Size([1, 3, 4, 4]))
    """

    nd, function = 2, staticmethod(F.dpp_pool2d)


class DPPPool3d(_DPPPool):
    """Detail-preserving pooling (Saeedan et al. 2018) over three spatial axes."""

    nd, function = 3, staticmethod(F.dpp_pool3d)
