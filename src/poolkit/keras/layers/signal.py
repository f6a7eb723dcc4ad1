"""Keras layers for blur, max-blur, spectral, wavelet and median pooling (no weights).

Settings and defaults are those of the :mod:`poolkit.torch` modules, in
Keras' names (``strides``, ``pool_size``); each is checked at construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._validate import check_choice
from ...geometry import adaptive_output_size, check_window_settings, window_spec
from ...ops.blur import blur_plan
from ...ops.wavelet import WAVELETS
from .. import functional as F
from .._core import layout_of
from ..functional.signal import spectral_sizes
from ._base import KERAS_NAMES, PoolLayer, serializable
from .smooth import Window

__all__ = [
    *(f"BlurPool{n}D" for n in (1, 2, 3)),
    *(f"MaxBlurPool{n}D" for n in (1, 2, 3)),
    *(f"SpectralPool{n}D" for n in (1, 2, 3)),
    *(f"WaveletPool{n}D" for n in (1, 2, 3)),
    *(f"MedianPool{n}D" for n in (1, 2, 3)),
]

_BIG = 1 << 20  # a notional input large enough for any filter: only the settings are checked


class _Shaped(PoolLayer):
    """Output shape from the function's geometry on the static spatial sizes; checked in ``build``."""

    def _output_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def build(self, input_shape: Sequence[Any]) -> None:
        layout_of(type(self).__name__, tuple(input_shape), self.nd, self.data_format)
        self.compute_output_shape(input_shape)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, ...]:
        layout = self._layout_for(input_shape)
        spatial = layout.spatial(input_shape)
        out = (None,) * layout.nd if None in spatial else self._output_spatial(tuple(spatial))
        return layout.shape(input_shape[0], input_shape[layout.channel_axis], out)


# --------------------------------------------------------------------------- blur


class _BlurPool(_Shaped):
    config_keys = ("filt_size", "strides", "pad_mode", "padding", "data_format")

    def __init__(
        self,
        filt_size: Any = 3,
        strides: Any = 2,
        pad_mode: str = "reflect",
        padding: Any = "antialiased",
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        self.filt_size, self.strides, self.pad_mode, self.padding = filt_size, strides, pad_mode, padding
        self._plan((_BIG,) * self.nd)

    def _plan(self, spatial: Sequence[int]) -> Any:
        return blur_plan(
            type(self).__name__, spatial, self.filt_size, self.strides, self.pad_mode, self.padding
        )

    def _output_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return self._plan(spatial)[1].output_size


@serializable
class BlurPool1D(_BlurPool):
    """As :class:`BlurPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.blur_pool1d)


@serializable
class BlurPool2D(_BlurPool):
    """BlurPool: binomial blur with a stride (Zhang, ICML 2019), antialiased-cnns' ``BlurPool``, 2-D.

    ``BlurPool2D(filt_size=3, strides=2, pad_mode="reflect",
    padding="antialiased", data_format=None)``: antialiased-cnns'
    ``BlurPool(C, filt_size=3, stride=2)`` (the filter is the same for every
    channel: no channel count needed); ``pad_mode="constant", padding=(f - 1) // 2``
    is kornia's ``BlurPool2D``.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> tuple(pk.BlurPool2D(filt_size=3, strides=2)(keras.ops.ones((1, 7, 8, 4))).shape)
    (1, 4, 4, 4)
    """

    nd, function = 2, staticmethod(F.blur_pool2d)


@serializable
class BlurPool3D(_BlurPool):
    """As :class:`BlurPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.blur_pool3d)


class _MaxBlurPool(_Shaped):
    config_keys = ("pool_size", "filt_size", "strides", "pad_mode", "padding", "data_format", "ceil_mode")

    def __init__(
        self,
        pool_size: Any = 2,
        filt_size: Any = 3,
        strides: Any = 2,
        pad_mode: str = "reflect",
        padding: Any = "antialiased",
        data_format: str | None = None,
        ceil_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        check_window_settings(name, self.nd, pool_size, 1, 0, 1, ceil_mode, KERAS_NAMES)
        self.pool_size, self.filt_size, self.strides = pool_size, filt_size, strides
        self.pad_mode, self.padding, self.ceil_mode = pad_mode, padding, ceil_mode
        blur_plan(name, (_BIG,) * self.nd, filt_size, strides, pad_mode, padding)

    def _output_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        name = type(self).__name__
        m = window_spec(spatial, self.pool_size, 1, 0, 1, self.ceil_mode, op=name, names=KERAS_NAMES)
        return blur_plan(name, m.output_size, self.filt_size, self.strides, self.pad_mode, self.padding)[
            1
        ].output_size


@serializable
class MaxBlurPool1D(_MaxBlurPool):
    """As :class:`MaxBlurPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.max_blur_pool1d)


@serializable
class MaxBlurPool2D(_MaxBlurPool):
    """MaxBlurPool: ``MaxPool(pool_size, strides=1)``, then ``BlurPool(filt_size, strides)`` (Zhang, ICML 2019).

    ``MaxBlurPool2D(pool_size=2, filt_size=3, strides=2, pad_mode="reflect",
    padding="antialiased", data_format=None, ceil_mode=False)``: ``pool_size``
    is the max-pooling window (stride 1), ``filt_size`` the binomial filter
    and ``strides`` the blur's sub-sampling; ``MaxBlurPool2D(3, strides=2)``
    is antialiased-cnns' ``MaxPool2d(3, 1)`` + ``BlurPool(C, 3, stride=2)``.
    kornia's ``MaxBlurPool2D(kernel_size=k, stride=s, max_pool_size=m)`` is
    ``MaxBlurPool2D(m, k, s, pad_mode="constant", padding=(k - 1) // 2)``.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> tuple(pk.MaxBlurPool2D(3, strides=2)(keras.ops.ones((1, 9, 9, 4))).shape)
    (1, 4, 4, 4)
    """

    nd, function = 2, staticmethod(F.max_blur_pool2d)


@serializable
class MaxBlurPool3D(_MaxBlurPool):
    """As :class:`MaxBlurPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.max_blur_pool3d)


# --------------------------------------------------------------------------- spectral, wavelet


class _SpectralPool(_Shaped):
    config_keys = ("output_size", "data_format")

    def __init__(self, output_size: Any, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(data_format=data_format, **kwargs)
        adaptive_output_size(type(self).__name__, (_BIG,) * self.nd, output_size)
        self.output_size = output_size

    def _output_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        # larger than the input: refused when the model is defined, with the function's message
        return spectral_sizes(type(self).__name__, spatial, self.output_size)


@serializable
class SpectralPool1D(_SpectralPool):
    """As :class:`SpectralPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.spectral_pool1d)


@serializable
class SpectralPool2D(_SpectralPool):
    """Spectral pooling to ``output_size``: the centred low frequencies of the DFT (Rippel et al., NeurIPS 2015).

    ``SpectralPool2D(output_size, data_format=None)``: per axis at most the
    input size (``None`` keeps an axis; larger is refused when the model is
    defined). Mean-preserving: a constant map stays the same constant.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> tuple(pk.SpectralPool2D((3, 4))(keras.ops.ones((1, 8, 8, 2))).shape)
    (1, 3, 4, 2)
    """

    nd, function = 2, staticmethod(F.spectral_pool2d)


@serializable
class SpectralPool3D(_SpectralPool):
    """As :class:`SpectralPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.spectral_pool3d)


class _WaveletPool(_Shaped):
    config_keys = ("wavelet", "data_format")

    def __init__(self, wavelet: str = "haar", data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(data_format=data_format, **kwargs)
        self.wavelet = check_choice(type(self).__name__, "wavelet", wavelet, WAVELETS)

    def _output_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((n + 1) // 2 for n in spatial)


@serializable
class WaveletPool1D(_WaveletPool):
    """As :class:`WaveletPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.wavelet_pool1d)


@serializable
class WaveletPool2D(_WaveletPool):
    """Wavelet pooling: the half-resolution Haar reconstruction (Williams & Li, ICLR 2018), 2-D.

    ``WaveletPool2D(wavelet="haar", data_format=None)``: halves every spatial
    axis (``ceil(n / 2)``); a constant ``c`` becomes ``2c`` (the paper's
    orthonormal transform).

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> y = pk.WaveletPool2D()(keras.ops.ones((1, 4, 5, 1)))
    >>> keras.ops.convert_to_numpy(y)[0, ..., 0].astype(float).round(5).tolist()
    [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """

    nd, function = 2, staticmethod(F.wavelet_pool2d)


@serializable
class WaveletPool3D(_WaveletPool):
    """As :class:`WaveletPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.wavelet_pool3d)


# --------------------------------------------------------------------------- median


@serializable
class MedianPool1D(Window):
    """As :class:`MedianPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.median_pool1d)


@serializable
class MedianPool2D(Window):
    """Median pooling: the lower median of each window's taps inside the input, 2-D.

    ``MedianPool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False)``. Padding is not a tap: border windows take the median
    of what they cover (timm's ``MedianPool2d`` pads by reflection instead).
    The gradient goes to the first tap holding the median.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> x = keras.ops.reshape(keras.ops.arange(9.0), (1, 3, 3, 1))
    >>> y = pk.MedianPool2D(3, strides=1, padding=1)(x)
    >>> keras.ops.convert_to_numpy(y)[0, ..., 0].tolist()
    [[1.0, 2.0, 2.0], [3.0, 4.0, 4.0], [4.0, 5.0, 5.0]]
    """

    nd, function = 2, staticmethod(F.median_pool2d)


@serializable
class MedianPool3D(Window):
    """As :class:`MedianPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.median_pool3d)
