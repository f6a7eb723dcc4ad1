"""Keras layers for max, average, Lp, adaptive, global, fractional pooling and max unpooling.

What ``keras.layers`` lacks, in Keras' conventions: argmax indices from
:class:`MaxPool2D` and a :class:`MaxUnpool2D` that consumes them, PyTorch's
padding, ``ceil_mode`` and dilation, Lp and fractional pooling, and adaptive
pooling without Keras' SIGFPE (TensorFlow, ``AdaptiveMaxPooling2D(1)``) and
NaN (JAX, outputs at least the size of a non-square input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from ..._validate import check_bool, check_choice, check_int, check_real, int_tuple
from ...geometry import (
    adaptive_output_size,
    check_window_settings,
    fractional_output_size,
    unpool_output_size,
)
from ...ops._input import check_rank
from .. import functional as F
from .._core import index_dtype
from ._base import PoolLayer, WindowLayer, serializable

__all__ = [
    *(f"MaxPool{n}D" for n in (1, 2, 3)),
    *(f"AvgPool{n}D" for n in (1, 2, 3)),
    *(f"LPPool{n}D" for n in (1, 2, 3)),
    *(f"AdaptiveMaxPool{n}D" for n in (1, 2, 3)),
    *(f"AdaptiveAvgPool{n}D" for n in (1, 2, 3)),
    *(f"GlobalMaxPool{n}D" for n in (1, 2, 3)),
    *(f"GlobalAvgPool{n}D" for n in (1, 2, 3)),
    *(f"FractionalMaxPool{n}D" for n in (1, 2, 3)),
    *(f"MaxUnpool{n}D" for n in (1, 2, 3)),
]


# --------------------------------------------------------------------------- max, avg, lp


class _MaxPool(WindowLayer):
    config_keys = (
        *WindowLayer.window_keys,
        "data_format",
        "return_indices",
        "index_format",
        "include_batch_in_index",
    )

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        dilation_rate: Any = 1,
        ceil_mode: bool = False,
        return_indices: bool = False,
        index_format: str = "torch",
        include_batch_in_index: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, dilation_rate, ceil_mode, **kwargs)
        name = type(self).__name__
        self.return_indices = check_bool(name, "return_indices", return_indices)
        self.index_format = check_choice(name, "index_format", index_format, ("torch", "tf"))
        self.include_batch_in_index = check_bool(name, "include_batch_in_index", include_batch_in_index)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        shape = super().compute_output_shape(input_shape)
        return (shape, shape) if self.return_indices else shape

    def compute_output_spec(self, inputs: Any) -> Any:
        shape = WindowLayer.compute_output_shape(self, inputs.shape)
        y = keras.KerasTensor(shape, dtype=inputs.dtype)
        return (y, keras.KerasTensor(shape, dtype=index_dtype())) if self.return_indices else y


@serializable
class MaxPool1D(_MaxPool):
    """As :class:`MaxPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.max_pool1d)


@serializable
class MaxPool2D(_MaxPool):
    """Max pooling, 2-D, with PyTorch's window rules, dilation, ceil mode and argmax indices.

    ``MaxPool2D(pool_size, strides=None, padding="valid", data_format=None,
    dilation_rate=1, ceil_mode=False, return_indices=False,
    index_format="torch", include_batch_in_index=False)``. ``padding`` is
    ``"valid"``, ``"same"`` (TensorFlow's), an int or ``(lo, hi)`` pairs
    (PyTorch's, padded with -inf). With ``return_indices=True`` the layer
    returns ``(outputs, indices)``: PyTorch's flat per-plane indices, or with
    ``index_format="tf"`` those of ``tf.nn.max_pool_with_argmax``. The
    gradient goes to the first maximum of each window on every backend.
    """

    nd, function = 2, staticmethod(F.max_pool2d)


@serializable
class MaxPool3D(_MaxPool):
    """As :class:`MaxPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.max_pool3d)


class _AvgPool(WindowLayer):
    config_keys = (*WindowLayer.window_keys, "data_format", "count_include_pad", "divisor_override")

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        dilation_rate: Any = 1,
        ceil_mode: bool = False,
        count_include_pad: bool | None = None,
        divisor_override: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, dilation_rate, ceil_mode, **kwargs)
        name = type(self).__name__
        if count_include_pad is not None:
            count_include_pad = check_bool(name, "count_include_pad", count_include_pad)
        self.count_include_pad = count_include_pad
        if divisor_override is not None:
            divisor_override = check_int(name, "divisor_override", divisor_override, 1)
        self.divisor_override = divisor_override

    def _settings(self) -> dict[str, Any]:
        settings = super()._settings()
        if settings["count_include_pad"] is None:  # Keras' "same" excludes the padding, PyTorch's includes it
            settings["count_include_pad"] = not (
                isinstance(self.padding, str) and self.padding.lower() == "same"
            )
        return settings


@serializable
class AvgPool1D(_AvgPool):
    """As :class:`AvgPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.avg_pool1d)


@serializable
class AvgPool2D(_AvgPool):
    """Average pooling, 2-D, with PyTorch's divisors, ceil mode and dilation.

    ``AvgPool2D(pool_size, strides=None, padding="valid", data_format=None,
    dilation_rate=1, ceil_mode=False, count_include_pad=None,
    divisor_override=None)``. ``count_include_pad=None`` follows the
    framework the padding comes from: ``padding="same"`` divides by the taps
    inside the input (as ``keras.layers.AveragePooling2D``), explicit
    padding counts it (PyTorch's default).
    """

    nd, function = 2, staticmethod(F.avg_pool2d)


@serializable
class AvgPool3D(_AvgPool):
    """As :class:`AvgPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.avg_pool3d)


class _LPPool(WindowLayer):
    config_keys = ("norm_type", *WindowLayer.window_keys, "data_format")

    def __init__(
        self,
        norm_type: float,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        dilation_rate: Any = 1,
        ceil_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, dilation_rate, ceil_mode, **kwargs)
        self.norm_type = check_real(
            type(self).__name__, "norm_type", norm_type, low=0.0, low_inclusive=False, allow_inf=True
        )


@serializable
class LPPool1D(_LPPool):
    """As :class:`LPPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.lp_pool1d)


@serializable
class LPPool2D(_LPPool):
    """Lp pooling, 2-D: ``(sum over the window of |x|^p)^(1/p)``, finite for negative inputs.

    ``LPPool2D(norm_type, pool_size, strides=None, padding="valid",
    data_format=None, dilation_rate=1, ceil_mode=False)``; ``norm_type=inf``
    is max pooling of ``|x|``.
    """

    nd, function = 2, staticmethod(F.lp_pool2d)


@serializable
class LPPool3D(_LPPool):
    """As :class:`LPPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.lp_pool3d)


# --------------------------------------------------------------------------- adaptive, global


class _AdaptivePool(PoolLayer):
    config_keys = ("output_size", "data_format")

    def __init__(self, output_size: Any, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(data_format=data_format, **kwargs)
        adaptive_output_size(type(self).__name__, (1,) * self.nd, output_size)
        self.output_size = output_size

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        layout = self._layout_for(input_shape)
        spatial = layout.spatial(input_shape)
        entries = (
            self.output_size if isinstance(self.output_size, Sequence) else [self.output_size] * layout.nd
        )
        out = tuple(s if o is None else int(o) for s, o in zip(spatial, entries))
        return layout.shape(input_shape[0], input_shape[layout.channel_axis], out)


class _AdaptiveMaxPool(_AdaptivePool):
    config_keys = ("output_size", "data_format", "return_indices")

    def __init__(
        self, output_size: Any, data_format: str | None = None, return_indices: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(output_size, data_format, **kwargs)
        self.return_indices = check_bool(type(self).__name__, "return_indices", return_indices)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        shape = super().compute_output_shape(input_shape)
        return (shape, shape) if self.return_indices else shape

    def compute_output_spec(self, inputs: Any) -> Any:
        shape = _AdaptivePool.compute_output_shape(self, inputs.shape)
        y = keras.KerasTensor(shape, dtype=inputs.dtype)
        return (y, keras.KerasTensor(shape, dtype=index_dtype())) if self.return_indices else y


@serializable
class AdaptiveMaxPool1D(_AdaptiveMaxPool):
    """As :class:`AdaptiveMaxPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.adaptive_max_pool1d)


@serializable
class AdaptiveMaxPool2D(_AdaptiveMaxPool):
    """Adaptive max pooling, 2-D, to ``output_size`` (PyTorch's bins).

    ``AdaptiveMaxPool2D(output_size, data_format=None, return_indices=False)``.
    Built bin by bin from static slices: unlike Keras' ``AdaptiveMaxPooling2D``
    it does not crash the process on TensorFlow for ``output_size=1`` and is
    not NaN on JAX for outputs at least the size of a non-square input.
    ``None`` entries of ``output_size`` keep that axis; ``return_indices=True``
    adds PyTorch's flat per-plane argmax indices.
    """

    nd, function = 2, staticmethod(F.adaptive_max_pool2d)


@serializable
class AdaptiveMaxPool3D(_AdaptiveMaxPool):
    """As :class:`AdaptiveMaxPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.adaptive_max_pool3d)


class _AdaptiveAvgPool(_AdaptivePool):
    pass


@serializable
class AdaptiveAvgPool1D(_AdaptiveAvgPool):
    """As :class:`AdaptiveAvgPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.adaptive_avg_pool1d)


@serializable
class AdaptiveAvgPool2D(_AdaptiveAvgPool):
    """Adaptive average pooling, 2-D, to ``output_size`` (PyTorch's bins).

    ``AdaptiveAvgPool2D(output_size, data_format=None)``, built bin by bin:
    never NaN, any input and output sizes. ``None`` entries keep that axis.
    """

    nd, function = 2, staticmethod(F.adaptive_avg_pool2d)


@serializable
class AdaptiveAvgPool3D(_AdaptiveAvgPool):
    """As :class:`AdaptiveAvgPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.adaptive_avg_pool3d)


class _GlobalPool(PoolLayer):
    config_keys = ("data_format", "keepdims")

    def __init__(self, data_format: str | None = None, keepdims: bool = False, **kwargs: Any) -> None:
        super().__init__(data_format=data_format, **kwargs)
        self.keepdims = check_bool(type(self).__name__, "keepdims", keepdims)

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        check_rank(
            type(self).__name__,
            tuple(inputs.shape),
            self.nd,
            self.data_format == "channels_last",
            False,
            what="tensor",
        )
        return (inputs,), {"keepdims": self.keepdims, "data_format": self.data_format}

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        layout = self._layout_for(input_shape)
        c = input_shape[layout.channel_axis]
        if self.keepdims:
            return layout.shape(input_shape[0], c, (1,) * layout.nd)
        return (input_shape[0], c)


@serializable
class GlobalMaxPool1D(_GlobalPool):
    """Global max pooling over the 1-D spatial axes: ``(N, C)``, or with ``keepdims`` size-1 axes kept."""

    nd, function = 1, staticmethod(F.global_max_pool)


@serializable
class GlobalMaxPool2D(_GlobalPool):
    """Global max pooling over the 2-D spatial axes: ``(N, C)``, or with ``keepdims`` size-1 axes kept."""

    nd, function = 2, staticmethod(F.global_max_pool)


@serializable
class GlobalMaxPool3D(_GlobalPool):
    """Global max pooling over the 3-D spatial axes: ``(N, C)``, or with ``keepdims`` size-1 axes kept."""

    nd, function = 3, staticmethod(F.global_max_pool)


@serializable
class GlobalAvgPool1D(_GlobalPool):
    """Global average pooling over the 1-D spatial axes: ``(N, C)``, or with ``keepdims`` size-1 axes kept."""

    nd, function = 1, staticmethod(F.global_avg_pool)


@serializable
class GlobalAvgPool2D(_GlobalPool):
    """Global average pooling over the 2-D spatial axes: ``(N, C)``, or with ``keepdims`` size-1 axes kept."""

    nd, function = 2, staticmethod(F.global_avg_pool)


@serializable
class GlobalAvgPool3D(_GlobalPool):
    """Global average pooling over the 3-D spatial axes: ``(N, C)``, or with ``keepdims`` size-1 axes kept."""

    nd, function = 3, staticmethod(F.global_avg_pool)


# --------------------------------------------------------------------------- fractional


class _FractionalMaxPool(PoolLayer):
    config_keys = ("pool_size", "output_size", "output_ratio", "data_format", "return_indices", "seed")

    def __init__(
        self,
        pool_size: Any,
        output_size: Any = None,
        output_ratio: Any = None,
        data_format: str | None = None,
        return_indices: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        k = int_tuple(name, "pool_size", pool_size, self.nd, 1)
        big = tuple(ki * 1024 for ki in k)
        fractional_output_size(name, big, k, output_size, output_ratio)
        self.pool_size, self.output_size, self.output_ratio = pool_size, output_size, output_ratio
        self.return_indices = check_bool(name, "return_indices", return_indices)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        args, kwargs = self.call_args(inputs, training)
        return type(self).function(*args, **kwargs)

    def call_args(self, inputs: Any, training: bool | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        samples = None
        if not training:  # inference: the middle of every sampling interval, deterministic
            n, c = keras.ops.shape(inputs)[0], inputs.shape[-1 if self.data_format == "channels_last" else 1]
            samples = keras.ops.full((n, c, self.nd), 0.5, dtype="float32")
        return (inputs, self.pool_size, self.output_size, self.output_ratio, self.return_indices), {
            "samples": samples,
            "seed": self.seed_generator,
            "data_format": self.data_format,
        }

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Any:
        layout = self._layout_for(input_shape)
        k = int_tuple(type(self).__name__, "pool_size", self.pool_size, layout.nd, 1)
        out = fractional_output_size(
            type(self).__name__, layout.spatial(input_shape), k, self.output_size, self.output_ratio
        )
        shape = layout.shape(input_shape[0], input_shape[layout.channel_axis], out)
        return (shape, shape) if self.return_indices else shape

    def compute_output_spec(self, inputs: Any, training: bool | None = None) -> Any:
        shape = self.compute_output_shape(inputs.shape)
        if not self.return_indices:
            return keras.KerasTensor(shape, dtype=inputs.dtype)
        return keras.KerasTensor(shape[0], dtype=inputs.dtype), keras.KerasTensor(
            shape[1], dtype=index_dtype()
        )


@serializable
class FractionalMaxPool1D(_FractionalMaxPool):
    """As :class:`FractionalMaxPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.fractional_max_pool1d)


@serializable
class FractionalMaxPool2D(_FractionalMaxPool):
    """Fractional max pooling, 2-D (PyTorch's window starts), random in training.

    ``FractionalMaxPool2D(pool_size, output_size=None, output_ratio=None,
    data_format=None, return_indices=False, seed=None)``: exactly one of
    ``output_size`` and ``output_ratio``. In training the window starts are
    drawn from the layer's ``keras.random.SeedGenerator``; in inference every
    sample is 0.5 (the same windows each call).
    """

    nd, function = 2, staticmethod(F.fractional_max_pool2d)


@serializable
class FractionalMaxPool3D(_FractionalMaxPool):
    """As :class:`FractionalMaxPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.fractional_max_pool3d)


# --------------------------------------------------------------------------- unpool


class _MaxUnpool(PoolLayer):
    config_keys = ("pool_size", "strides", "padding", "data_format", "index_format")

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = 0,
        data_format: str | None = None,
        index_format: str = "torch",
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        check_window_settings(name, self.nd, pool_size, strides, padding)
        int_tuple(name, "padding", padding, self.nd, 0)
        self.pool_size, self.strides, self.padding = pool_size, strides, padding
        self.index_format = check_choice(name, "index_format", index_format, ("torch", "tf"))

    def call(self, inputs: Any, indices: Any, output_size: Any = None) -> Any:
        args, kwargs = self.call_args(inputs, indices, output_size)
        return type(self).function(*args, **kwargs)

    def call_args(
        self, inputs: Any, indices: Any, output_size: Any = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (inputs, indices, self.pool_size, self.strides, self.padding, output_size), {
            "data_format": self.data_format,
            "index_format": self.index_format,
        }

    def compute_output_shape(
        self, input_shape: Sequence[Any], indices_shape: Any = None, output_size: Any = None
    ) -> Any:
        layout = self._layout_for(input_shape)
        name = type(self).__name__
        k = int_tuple(name, "pool_size", self.pool_size, layout.nd, 1)
        s = k if self.strides is None else int_tuple(name, "strides", self.strides, layout.nd, 1)
        p = int_tuple(name, "padding", self.padding, layout.nd, 0)
        out = unpool_output_size(name, layout.spatial(input_shape), k, s, p, output_size)
        return layout.shape(input_shape[0], input_shape[layout.channel_axis], out)

    def compute_output_spec(self, inputs: Any, indices: Any, output_size: Any = None) -> Any:
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape, None, output_size), dtype=inputs.dtype
        )


@serializable
class MaxUnpool1D(_MaxUnpool):
    """As :class:`MaxUnpool2D`, 1-D."""

    nd, function = 1, staticmethod(F.max_unpool1d)


@serializable
class MaxUnpool2D(_MaxUnpool):
    """Max unpooling, 2-D: ``MaxUnpool2D(pool_size)(outputs, indices)`` inverts ``MaxPool2D(..., return_indices=True)``.

    Each value goes to the position its index names, zeros elsewhere (the
    last of repeated indices wins, on every backend). ``index_format="tf"``
    reads ``tf.nn.max_pool_with_argmax`` indices. Pass ``output_size`` (the
    pooled input's spatial size) when pooling dropped a border.
    """

    nd, function = 2, staticmethod(F.max_unpool2d)


@serializable
class MaxUnpool3D(_MaxUnpool):
    """As :class:`MaxUnpool2D`, 3-D."""

    nd, function = 3, staticmethod(F.max_unpool3d)
