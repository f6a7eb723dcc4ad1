"""Base of poolkit's Keras layers: settings as attributes, checked at construction, serialised by name.

A layer class names its constructor settings in ``config_keys`` (Keras'
names: ``pool_size``, ``strides``, ``padding``, ``dilation_rate``,
``data_format`` and the operator's own), and ``function`` is the
:mod:`poolkit.keras.functional` function it calls; ``_settings`` maps the
Keras names to the function's (``pool_size`` -> ``kernel_size``, ...).
Layers are registered with Keras under the package ``"poolkit"``, so a model
saved as ``.keras`` loads back after ``import poolkit.keras``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import keras

from ...geometry import check_window_settings, window_spec
from .._core import Layout, data_format_of, layout_of

__all__ = ["PoolLayer", "WindowLayer", "serializable", "jsonable", "RENAMES", "KERAS_NAMES"]

# Keras' argument names -> poolkit's function argument names, and back (for error messages).
RENAMES = {"pool_size": "kernel_size", "strides": "stride", "dilation_rate": "dilation"}
KERAS_NAMES = {v: k for k, v in RENAMES.items()}


def serializable(cls: type) -> type:
    """Register a layer class with Keras' serialisation under ``poolkit>ClassName``."""
    return keras.saving.register_keras_serializable(package="poolkit")(cls)


def jsonable(value: Any) -> Any:
    """Tuples as lists (what a ``.keras`` config holds); everything else unchanged."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [jsonable(v) for v in value]
    return value


class PoolLayer(keras.layers.Layer):
    """Calls ``function`` with the settings in ``config_keys``, read from attributes."""

    function: ClassVar[Callable[..., Any]]
    config_keys: ClassVar[tuple[str, ...]] = ("data_format",)
    nd: ClassVar[int | None] = None

    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = data_format_of(type(self).__name__, data_format)

    @property
    def layout(self) -> Layout:
        return Layout(self.nd or 0, self.data_format == "channels_last")

    def _settings(self) -> dict[str, Any]:
        return {RENAMES.get(k, k): getattr(self, k) for k in self.config_keys}

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments ``call`` passes to ``function`` (subclasses with more inputs, weights or
        ``training`` extend it); tests call the NumPy reference with the same ones."""
        return (inputs,), self._settings()

    def call(self, inputs: Any) -> Any:
        args, kwargs = self.call_args(inputs)
        return type(self).function(*args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({k: jsonable(getattr(self, k)) for k in self.config_keys})
        return config

    def _layout_for(self, input_shape: Sequence[Any]) -> Layout:
        nd = self.nd if self.nd is not None else len(input_shape) - 2
        return Layout(nd, self.data_format == "channels_last")


class WindowLayer(PoolLayer):
    """A sliding-window layer: ``pool_size``, ``strides``, ``padding`` (and ``dilation_rate``, ``ceil_mode``).

    ``padding`` takes Keras' ``"valid"``/``"same"`` (TensorFlow's rule) and
    PyTorch's forms: an int per axis (symmetric) or ``(lo, hi)`` pairs.
    """

    window_keys: ClassVar[tuple[str, ...]] = ("pool_size", "strides", "padding", "dilation_rate", "ceil_mode")

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        dilation_rate: Any = 1,
        ceil_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        self.pool_size, self.strides, self.padding = pool_size, strides, padding
        self.dilation_rate, self.ceil_mode = dilation_rate, ceil_mode
        check_window_settings(
            type(self).__name__, self.nd, pool_size, strides, padding, dilation_rate, ceil_mode, KERAS_NAMES
        )

    def _window(self) -> tuple[Any, Any, Any, Any, bool]:
        return self.pool_size, self.strides, self.padding, self.dilation_rate, self.ceil_mode

    def build(self, input_shape: Sequence[Any]) -> None:
        # rank, data_format and window-versus-input errors when the model is defined, in Keras' names
        layout_of(type(self).__name__, tuple(input_shape), self.nd, self.data_format)
        WindowLayer.compute_output_shape(self, input_shape)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, ...]:
        layout = self._layout_for(input_shape)
        spatial = layout.spatial(input_shape)
        if any(s is None for s in spatial):
            out: tuple[Any, ...] = (None,) * layout.nd
        else:
            spec = window_spec(spatial, *self._window(), op=type(self).__name__, names=KERAS_NAMES)
            out = spec.output_size
        return layout.shape(input_shape[0], input_shape[layout.channel_axis], out)
