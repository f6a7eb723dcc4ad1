"""Modules for GeM, LSE, SoftPool and LIP pooling: learnable powers, sharpness and logit networks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._validate import check_bool, check_int, check_real
from ...errors import PoolingConfigError
from .. import functional as F
from ._base import PoolModule, WindowModule

__all__ = [
    *(f"GeMPool{n}d" for n in (1, 2, 3)),
    "GlobalGeMPool",
    *(f"LSEPool{n}d" for n in (1, 2, 3)),
    *(f"SoftPool{n}d" for n in (1, 2, 3)),
    *(f"LIPPool{n}d" for n in (1, 2, 3)),
    "LIPLogit",
]


def _learnable(
    module: nn.Module, op: str, name: str, value: Any, channels: Any, learnable: Any
) -> tuple[int | None, bool]:
    """Register ``name`` as an ``nn.Parameter`` (or, not learnable, a buffer): shape () or (channels,)."""
    v = check_real(op, name, value, low=0.0, low_inclusive=False)
    if channels is not None:
        channels = check_int(op, "channels", channels, 1)
    learnable = check_bool(op, "learnable", learnable)
    data = torch.full((channels,), v) if channels is not None else torch.tensor(v)
    if learnable:
        module.register_parameter(name, nn.Parameter(data))
    else:
        module.register_buffer(name, data)
    return channels, learnable


# --------------------------------------------------------------------------- GeM


class _GeMPool(PoolModule):
    settings = ("kernel_size", "stride", "padding", "ceil_mode", "eps", "data_format")
    tensors, described = ("p",), ("channels", "learnable")
    p: torch.Tensor

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        p: float = 3.0,
        eps: float = 1e-6,
        channels: int | None = None,
        learnable: bool = True,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._set_window(kernel_size, stride, padding, ceil_mode)
        self.eps = check_real(name, "eps", eps, low=0.0, low_inclusive=False)
        self._set_format(data_format)
        self.channels, self.learnable = _learnable(self, name, "p", p, channels, learnable)


class GeMPool1d(_GeMPool):
    """Windowed GeM pooling over one spatial axis; ``p`` an ``nn.Parameter`` (see :class:`GeMPool2d`)."""

    nd, function = 1, staticmethod(F.gem_pool1d)


class GeMPool2d(_GeMPool):
    """Windowed GeM pooling ``((1/|R|) sum max(x, eps)^p)^(1/p)`` with a learnable power.

    ``p`` is an ``nn.Parameter`` initialised to ``p`` (3.0, the paper's
    initial value), learned by default as in cirtorch's ``GeM``; one value
    shared by all channels, or one per channel with ``channels=C``.
    ``learnable=False`` keeps it fixed (a buffer, still in the
    ``state_dict``). The parameter is not clamped: an optimizer step that
    makes it non-positive gives NaN. See :func:`poolkit.torch.functional.gem_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import GeMPool2d
    >>> m = GeMPool2d(kernel_size=2, p=3.0, channels=8)
    >>> m(torch.rand(1, 8, 6, 6)).shape, m.p.shape
    (torch.Size([1, 8, 3, 3]), torch.Size([8]))
    """

    nd, function = 2, staticmethod(F.gem_pool2d)


class GeMPool3d(_GeMPool):
    """Windowed GeM pooling over three spatial axes; ``p`` an ``nn.Parameter`` (see :class:`GeMPool2d`)."""

    nd, function = 3, staticmethod(F.gem_pool3d)


class GlobalGeMPool(PoolModule):
    """Global GeM pooling, ``(N, C, *spatial) -> (N, C)``, with a learnable power (cirtorch's ``GeM``).

    ``p`` as in :class:`GeMPool2d` (shared, or one per channel with
    ``channels=C``); any spatial rank.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import GlobalGeMPool
    >>> GlobalGeMPool(p=3.0)(torch.rand(2, 16, 7, 7)).shape
    torch.Size([2, 16])
    """

    settings = ("eps", "keepdims", "data_format")
    function = staticmethod(F.global_gem_pool)
    tensors, described = ("p",), ("channels", "learnable")
    p: torch.Tensor

    def __init__(
        self,
        p: float = 3.0,
        eps: float = 1e-6,
        *,
        channels: int | None = None,
        learnable: bool = True,
        keepdims: bool = False,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.eps = check_real(name, "eps", eps, low=0.0, low_inclusive=False)
        self.keepdims = check_bool(name, "keepdims", keepdims)
        self._set_format(data_format)
        self.channels, self.learnable = _learnable(self, name, "p", p, channels, learnable)


# --------------------------------------------------------------------------- LSE


class _LSEPool(PoolModule):
    settings = ("kernel_size", "stride", "padding", "ceil_mode", "data_format")
    tensors, described = ("r",), ("channels", "learnable")
    r: torch.Tensor

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        r: float = 10.0,
        channels: int | None = None,
        learnable: bool = True,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._set_window(kernel_size, stride, padding, ceil_mode)
        self._set_format(data_format)
        self.channels, self.learnable = _learnable(self, name, "r", r, channels, learnable)


class LSEPool1d(_LSEPool):
    """Log-sum-exp pooling over one spatial axis with a learnable sharpness ``r`` (see :class:`LSEPool2d`)."""

    nd, function = 1, staticmethod(F.lse_pool1d)


class LSEPool2d(_LSEPool):
    """Log-sum-exp pooling ``m + (1/r) log((1/n) sum exp(r (x - m)))`` with a learnable sharpness.

    ``r`` is an ``nn.Parameter`` (10.0: timm's ``LsePlus2d`` default), shared
    or one per channel with ``channels=C``; ``learnable=False`` fixes it.
    See :func:`poolkit.torch.functional.lse_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import LSEPool2d
    >>> LSEPool2d(2, r=10.0)(torch.rand(1, 3, 4, 4)).shape
    torch.Size([1, 3, 2, 2])
    """

    nd, function = 2, staticmethod(F.lse_pool2d)


class LSEPool3d(_LSEPool):
    """Log-sum-exp pooling over three spatial axes with a learnable sharpness ``r`` (see :class:`LSEPool2d`)."""

    nd, function = 3, staticmethod(F.lse_pool3d)


# --------------------------------------------------------------------------- SoftPool


class _SoftPool(WindowModule):
    """SoftPool: window settings only."""


class SoftPool1d(_SoftPool):
    """SoftPool over one spatial axis (see :class:`SoftPool2d`)."""

    nd, function = 1, staticmethod(F.soft_pool1d)


class SoftPool2d(_SoftPool):
    """SoftPool: softmax-weighted window averages (Stergiou et al., ICCV 2021), stable for large inputs.

    A pure-PyTorch replacement for the reference's CUDA extension: any
    device, no build step, finite for +-1e4 in float32, and the output size
    is the usual pooling geometry for any kernel and stride. See
    :func:`poolkit.torch.functional.soft_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import SoftPool2d
    >>> SoftPool2d(2)(torch.full((1, 1, 4, 4), 1e4)).unique()
    tensor([10000.])
    """

    nd, function = 2, staticmethod(F.soft_pool2d)


class SoftPool3d(_SoftPool):
    """SoftPool over three spatial axes (see :class:`SoftPool2d`)."""

    nd, function = 3, staticmethod(F.soft_pool3d)


# --------------------------------------------------------------------------- LIP


class _Gate(nn.Module):
    """``coeff * sigmoid(x)``: sebgao/LIP's ``SoftGate``, bounding the logits to (0, coeff)."""

    def __init__(self, coeff: float = 12.0) -> None:
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * self.coeff

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


class LIPLogit(nn.Sequential):
    """LIP's logit module ``G(x) = 12 * sigmoid(InstanceNorm(conv_1x1(x)))`` (Gao, Wang, Wu, ICCV 2019).

    A 1x1 convolution (``channels -> channels``, no bias), an affine
    instance norm and a gate bounding the logits to (0, 12), as in the
    paper's logit modules (sebgao/LIP's ``SimplifiedLIP`` uses a 3x3
    convolution; pass your own module to :class:`LIPPool2d` for that). The
    convolution starts at zero, as sebgao/LIP's ``init_layer`` does, so the
    logits start constant and LIP starts as average pooling.
    """

    def __init__(self, channels: int, ndim: int = 2) -> None:
        super().__init__(
            _CONV[ndim](channels, channels, 1, bias=False),
            _NORM[ndim](channels, affine=True),
            _Gate(12.0),
        )
        nn.init.zeros_(self[0].weight)


class _LIPPool(PoolModule):
    settings = ("kernel_size", "stride", "padding", "ceil_mode", "data_format")

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        channels: int | None = None,
        logit: nn.Module | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._set_window(kernel_size, stride, padding, ceil_mode)
        self._set_format(data_format)
        if logit is None:
            if channels is None:
                raise PoolingConfigError(
                    f"{name}: the default logit network (1x1 conv, instance norm, 12 * sigmoid) needs the "
                    f"number of input channels: pass channels=C, or your own logit=nn.Module."
                )
            logit = LIPLogit(check_int(name, "channels", channels, 1), self.nd)
        elif not isinstance(logit, nn.Module):
            raise PoolingConfigError(
                f"{name}: logit must be an nn.Module mapping x (channels-first) to a logit map of its shape, "
                f"got {type(logit).__name__}."
            )
        elif channels is not None:
            check_int(name, "channels", channels, 1)
        self.channels = channels
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cl = self.data_format == "channels_last"
        axis = 1 if x.dim() == self.nd + 2 else 0
        xf = x.movedim(-1, axis) if cl else x
        y = type(self).function(
            xf, self.logit(xf), self.kernel_size, self.stride, self.padding, self.ceil_mode
        )
        return y.movedim(axis, -1) if cl else y


class LIPPool1d(_LIPPool):
    """Local importance pooling over one spatial axis (see :class:`LIPPool2d`)."""

    nd, function = 1, staticmethod(F.lip_pool1d)


class LIPPool2d(_LIPPool):
    """Local importance pooling: window averages weighted by ``exp(G(x))`` (Gao, Wang, Wu, ICCV 2019).

    ``G`` is ``logit``: by default :class:`LIPLogit` (a 1x1 convolution,
    instance norm and ``12 * sigmoid``, built for ``channels`` input
    channels and starting as average pooling); any ``nn.Module`` taking
    ``x`` channels-first (as torch layers do, whatever ``data_format``) and
    returning a logit map of its shape may replace it, e.g.
    ``logit=nn.Identity()`` gives SoftPool. The paper's layer is
    ``LIPPool2d(3, 2, 1, channels=C)``. See
    :func:`poolkit.torch.functional.lip_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import LIPPool2d
    >>> m = LIPPool2d(3, 2, 1, channels=8)
    >>> m(torch.randn(2, 8, 9, 9)).shape, sum(p.numel() for p in m.parameters())
    (torch.Size([2, 8, 5, 5]), 80)
    """

    nd, function = 2, staticmethod(F.lip_pool2d)


class LIPPool3d(_LIPPool):
    """Local importance pooling over three spatial axes (see :class:`LIPPool2d`)."""

    nd, function = 3, staticmethod(F.lip_pool3d)
