"""Modules for blur, max-blur, spectral, wavelet and median pooling (no parameters)."""

from __future__ import annotations

from typing import Any

from ..._validate import check_choice
from ...geometry import adaptive_output_size
from ...ops.blur import blur_plan
from ...ops.wavelet import WAVELETS
from .. import functional as F
from ._base import PoolModule, WindowModule, check_window

__all__ = [
    *(f"BlurPool{n}d" for n in (1, 2, 3)),
    *(f"MaxBlurPool{n}d" for n in (1, 2, 3)),
    *(f"SpectralPool{n}d" for n in (1, 2, 3)),
    *(f"WaveletPool{n}d" for n in (1, 2, 3)),
    *(f"MedianPool{n}d" for n in (1, 2, 3)),
]

_BIG = 1 << 20  # a notional input large enough for any filter: only the settings are checked


# --------------------------------------------------------------------------- blur


class _BlurPool(PoolModule):
    nd: int
    settings = ("filt_size", "stride", "pad_mode", "padding", "data_format")

    def __init__(
        self,
        filt_size: Any = 3,
        stride: Any = 2,
        pad_mode: str = "reflect",
        *,
        padding: Any = "antialiased",
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        blur_plan(name, (_BIG,) * self.nd, filt_size, stride, pad_mode, padding)
        self.filt_size, self.stride, self.pad_mode, self.padding = filt_size, stride, pad_mode, padding
        self._set_format(data_format)


class BlurPool1d(_BlurPool):
    """Anti-aliased down-sampling over one spatial axis (see :class:`BlurPool2d`)."""

    nd, function = 1, staticmethod(F.blur_pool1d)


class BlurPool2d(_BlurPool):
    """BlurPool: binomial blur with a stride (Zhang, ICML 2019), antialiased-cnns' ``BlurPool``.

    ``BlurPool2d(filt_size=3, stride=2)`` is antialiased-cnns'
    ``BlurPool(C, filt_size=3, stride=2)`` (reflection padding; no
    ``channels`` needed, the filter is the same for every channel) and
    ``pad_mode="constant", padding=(f - 1) // 2`` is kornia's ``BlurPool2D``.
    See :func:`poolkit.torch.functional.blur_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import BlurPool2d
    >>> BlurPool2d(filt_size=3, stride=2)(torch.randn(1, 4, 7, 8)).shape
    torch.Size([1, 4, 4, 4])
    """

    nd, function = 2, staticmethod(F.blur_pool2d)


class BlurPool3d(_BlurPool):
    """Anti-aliased down-sampling over three spatial axes (see :class:`BlurPool2d`)."""

    nd, function = 3, staticmethod(F.blur_pool3d)


class _MaxBlurPool(PoolModule):
    nd: int
    settings = ("kernel_size", "filt_size", "stride", "pad_mode", "ceil_mode", "padding", "data_format")

    def __init__(
        self,
        kernel_size: Any = 2,
        filt_size: Any = 3,
        stride: Any = 2,
        pad_mode: str = "reflect",
        *,
        ceil_mode: bool = False,
        padding: Any = "antialiased",
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_window(name, self.nd, kernel_size, 1, 0, 1, ceil_mode)
        blur_plan(name, (_BIG,) * self.nd, filt_size, stride, pad_mode, padding)
        self.kernel_size, self.filt_size, self.stride = kernel_size, filt_size, stride
        self.pad_mode, self.ceil_mode, self.padding = pad_mode, ceil_mode, padding
        self._set_format(data_format)


class MaxBlurPool1d(_MaxBlurPool):
    """Max pooling (stride 1) then blur pooling over one spatial axis (see :class:`MaxBlurPool2d`)."""

    nd, function = 1, staticmethod(F.max_blur_pool1d)


class MaxBlurPool2d(_MaxBlurPool):
    """MaxBlurPool: ``MaxPool(kernel_size, stride=1)``, then ``BlurPool(filt_size, stride)`` (Zhang, ICML 2019).

    The arguments are :func:`poolkit.torch.functional.max_blur_pool`'s:
    ``kernel_size`` is the max-pooling window, ``filt_size`` the binomial
    filter, ``stride`` the blur's sub-sampling. So ``MaxBlurPool2d(kernel_size=3,
    stride=2)`` max-pools 3x3 windows at stride 1 and blurs with the 3-tap
    filter at stride 2 (antialiased-cnns' ``MaxPool2d(3, 1)`` +
    ``BlurPool(C, filt_size=3, stride=2)``). kornia's
    ``MaxBlurPool2D(kernel_size=k, stride=s, max_pool_size=m)`` names the
    blur ``kernel_size``: it is ``MaxBlurPool2d(kernel_size=m, filt_size=k,
    stride=s, pad_mode="constant", padding=(k - 1) // 2)``.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import MaxBlurPool2d
    >>> MaxBlurPool2d(kernel_size=3, stride=2)(torch.randn(1, 4, 9, 9)).shape
    torch.Size([1, 4, 4, 4])
    """

    nd, function = 2, staticmethod(F.max_blur_pool2d)


class MaxBlurPool3d(_MaxBlurPool):
    """Max pooling (stride 1) then blur pooling over three spatial axes (see :class:`MaxBlurPool2d`)."""

    nd, function = 3, staticmethod(F.max_blur_pool3d)


# --------------------------------------------------------------------------- spectral, wavelet


class _SpectralPool(PoolModule):
    nd: int
    settings = ("output_size", "data_format")

    def __init__(self, output_size: Any, *, data_format: str = "channels_first") -> None:
        super().__init__()
        name = type(self).__name__
        adaptive_output_size(name, (_BIG,) * self.nd, output_size)
        self.output_size = output_size
        self._set_format(data_format)


class SpectralPool1d(_SpectralPool):
    """Spectral pooling over one spatial axis (see :class:`SpectralPool2d`)."""

    nd, function = 1, staticmethod(F.spectral_pool1d)


class SpectralPool2d(_SpectralPool):
    """Spectral pooling to ``output_size``: the centred low frequencies of the DFT (Rippel et al., NeurIPS 2015).

    ``output_size`` is per axis at most the input size (``None`` keeps an
    axis; larger is refused at call time). See
    :func:`poolkit.torch.functional.spectral_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import SpectralPool2d
    >>> SpectralPool2d((3, 4))(torch.randn(1, 2, 8, 8)).shape
    torch.Size([1, 2, 3, 4])
    """

    nd, function = 2, staticmethod(F.spectral_pool2d)


class SpectralPool3d(_SpectralPool):
    """Spectral pooling over three spatial axes (see :class:`SpectralPool2d`)."""

    nd, function = 3, staticmethod(F.spectral_pool3d)


class _WaveletPool(PoolModule):
    nd: int
    settings = ("wavelet", "data_format")

    def __init__(self, *, wavelet: str = "haar", data_format: str = "channels_first") -> None:
        super().__init__()
        name = type(self).__name__
        self.wavelet = check_choice(name, "wavelet", wavelet, WAVELETS)
        self._set_format(data_format)


class WaveletPool1d(_WaveletPool):
    """Wavelet pooling over one spatial axis (see :class:`WaveletPool2d`)."""

    nd, function = 1, staticmethod(F.wavelet_pool1d)


class WaveletPool2d(_WaveletPool):
    """Wavelet pooling: the half-resolution Haar reconstruction (Williams & Li, ICLR 2018).

    Halves every spatial axis (``ceil(n / 2)``); a constant ``c`` becomes
    ``2c`` in 2-D (the paper's orthonormal transform). See
    :func:`poolkit.torch.functional.wavelet_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import WaveletPool2d
    >>> WaveletPool2d()(torch.ones(1, 1, 4, 5))
    tensor([[[[2., 2., 2.],
              [2., 2., 2.]]]])
    """

    nd, function = 2, staticmethod(F.wavelet_pool2d)


class WaveletPool3d(_WaveletPool):
    """Wavelet pooling over three spatial axes (see :class:`WaveletPool2d`)."""

    nd, function = 3, staticmethod(F.wavelet_pool3d)


# --------------------------------------------------------------------------- median


class _MedianPool(WindowModule):
    """Median pooling: window settings only."""


class MedianPool1d(_MedianPool):
    """Median pooling over one spatial axis (see :class:`MedianPool2d`)."""

    nd, function = 1, staticmethod(F.median_pool1d)


class MedianPool2d(_MedianPool):
    """Median pooling: the lower median of each window's taps inside the input.

    timm's ``MedianPool2d(k, stride, padding, same)`` pads by reflection and
    takes the median of all ``k * k`` samples; here padding is not a tap, so
    border windows take the median of what they cover. See
    :func:`poolkit.torch.functional.median_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import MedianPool2d
    >>> MedianPool2d(3, stride=1, padding=1)(torch.arange(9.0).reshape(1, 1, 3, 3))
    tensor([[[[1., 2., 2.],
              [3., 4., 4.],
              [4., 5., 5.]]]])
    """

    nd, function = 2, staticmethod(F.median_pool2d)


class MedianPool3d(_MedianPool):
    """Median pooling over three spatial axes (see :class:`MedianPool2d`)."""

    nd, function = 3, staticmethod(F.median_pool3d)
