"""Keras layers for the random pooling operators: stochastic, mixed and S3 pooling.

They sample only when Keras calls them with ``training=True`` (``model.fit``),
drawing from the layer's ``keras.random.SeedGenerator(seed)``; in inference
they compute the NumPy operator's deterministic ``training=False`` result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from ..._validate import check_bool, check_choice, check_real
from ...errors import PoolingConfigError
from ...geometry import window_spec
from ...ops.mixed import MODES
from .. import functional as F
from .._core import layout_of
from ..functional.stochastic import check_seed, s3_settings
from ._base import KERAS_NAMES, PoolLayer, WindowLayer, serializable

__all__ = [
    *(f"StochasticPool{n}D" for n in (1, 2, 3)),
    *(f"MixedPool{n}D" for n in (1, 2, 3)),
    *(f"S3Pool{n}D" for n in (1, 2, 3)),
]


def clamp_straight_through(p: Any, low: float, high: float | None = None) -> Any:
    """``p`` clamped to ``[low, high]`` in value, with the identity's gradient.

    A weight an optimizer pushes past an end then acts as that end and keeps
    a gradient that can bring it back (a plain clip would give it 0 there).
    """
    p = ops.convert_to_tensor(p)  # a Variable's value (gradients still reach the Variable)
    # selects, not ops.maximum (float32 for float64 tensors on Keras' torch backend)
    clipped = ops.where(ops.less(p, low), ops.full_like(p, low), p)
    if high is not None:
        clipped = ops.where(ops.greater(clipped, high), ops.full_like(p, high), clipped)
    return p + ops.stop_gradient(clipped - p)


class NoDilationWindow(WindowLayer):
    """A :class:`WindowLayer` without ``dilation_rate`` (the research operators have none)."""

    window_keys: ClassVar[tuple[str, ...]] = ("pool_size", "strides", "padding", "ceil_mode")

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, 1, ceil_mode, **kwargs)

    def _function_window(self) -> tuple[Any, ...]:
        return self.pool_size, self.strides, self.padding, self.ceil_mode

    def _output_spatial(self, input_shape: Sequence[Any]) -> tuple[int, ...]:
        spatial = self._layout_for(input_shape).spatial(input_shape)
        return window_spec(
            spatial, self.pool_size, self.strides, self.padding, 1, self.ceil_mode,
            op=type(self).__name__, names=KERAS_NAMES,
        ).output_size  # fmt: skip


class _Random:
    """``seed`` and the layer's ``SeedGenerator``; ``call`` passes Keras' ``training`` on."""

    def _init_seed(self, seed: Any) -> None:
        name = type(self).__name__
        if isinstance(seed, keras.random.SeedGenerator):  # the config must hold a plain value
            raise PoolingConfigError(
                f"{name}: seed must be None or an int (the layer makes its own "
                f"keras.random.SeedGenerator from it), got {seed!r}."
            )
        self.seed = check_seed(name, seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        args, kwargs = self.call_args(inputs, training)  # type: ignore[attr-defined]
        return type(self).function(*args, **kwargs)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- stochastic


class _StochasticPool(_Random, NoDilationWindow):
    config_keys = (*NoDilationWindow.window_keys, "data_format", "seed")

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, ceil_mode, **kwargs)
        self._init_seed(seed)

    def call_args(self, inputs: Any, training: bool | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (inputs, *self._function_window()), {
            "training": bool(training),
            "seed": self.seed_generator,
            "data_format": self.data_format,
        }


@serializable
class StochasticPool1D(_StochasticPool):
    """As :class:`StochasticPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.stochastic_pool1d)


@serializable
class StochasticPool2D(_StochasticPool):
    """Stochastic pooling (Zeiler & Fergus, ICLR 2013), 2-D: a sampled activation per window in training.

    ``StochasticPool2D(pool_size, strides=None, padding="valid",
    data_format=None, ceil_mode=False, seed=None)``. In training each window
    outputs one of its activations, drawn with probability ``max(x, 0) /
    sum(max(x, 0))`` from the layer's ``keras.random.SeedGenerator(seed)``;
    the gradient goes to the sample. In inference: the probability-weighted
    average ``sum(a^2) / sum(a)``. ``padding`` is ``"valid"``, ``"same"``, an
    int or ``(lo, hi)`` pairs; padded taps are never sampled.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> tuple(pk.StochasticPool2D(2, seed=0)(keras.ops.ones((1, 8, 8, 3))).shape)
    (1, 4, 4, 3)
    """

    nd, function = 2, staticmethod(F.stochastic_pool2d)


@serializable
class StochasticPool3D(_StochasticPool):
    """As :class:`StochasticPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.stochastic_pool3d)


# --------------------------------------------------------------------------- mixed


class _MixedPool(_Random, NoDilationWindow):
    config_keys = (*NoDilationWindow.window_keys, "data_format", "mode", "learnable", "alpha", "seed")

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        mode: str = "layer",
        learnable: bool = False,
        alpha: float | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, ceil_mode, **kwargs)
        name = type(self).__name__
        self.mode = check_choice(name, "mode", mode, MODES)
        self.learnable = check_bool(name, "learnable", learnable)
        if alpha is not None:
            alpha = check_real(name, "alpha", alpha, low=0.0, high=1.0)
        self.alpha = alpha
        self._init_seed(seed)
        self.alpha_weight = None

    def _alpha_shape(self, input_shape: Sequence[Any]) -> tuple[int, ...]:
        layout = layout_of(type(self).__name__, tuple(input_shape), self.nd, self.data_format)
        if self.mode == "layer":
            return ()
        if self.mode == "channel":
            return (int(input_shape[layout.channel_axis]),)
        return self._output_spatial(input_shape)

    def build(self, input_shape: Sequence[Any]) -> None:
        super().build(input_shape)
        if self.learnable:
            init = 0.5 if self.alpha is None else self.alpha
            self.alpha_weight = self.add_weight(
                shape=self._alpha_shape(input_shape),
                initializer=keras.initializers.Constant(init),
                name="alpha",
            )

    def call_args(self, inputs: Any, training: bool | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs: dict[str, Any] = {"mode": self.mode, "data_format": self.data_format}
        if self.alpha_weight is not None:  # learnable: clamped to [0, 1], straight-through
            kwargs["alpha"] = clamp_straight_through(self.alpha_weight, 0.0, 1.0)
        elif self.alpha is not None:  # a fixed coefficient
            kwargs["alpha"] = np.full(self._alpha_shape(inputs.shape), self.alpha)
        else:  # Yu et al.: lambda drawn in {0, 1} in training, 1/2 in inference
            kwargs |= {"training": bool(training), "seed": self.seed_generator}
        return (inputs, *self._function_window()), kwargs


@serializable
class MixedPool1D(_MixedPool):
    """As :class:`MixedPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.mixed_pool1d)


@serializable
class MixedPool2D(_MixedPool):
    """Mixed max-average pooling, 2-D: ``a * max + (1 - a) * avg`` (random, fixed or learned ``a``).

    ``MixedPool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False, mode="layer", learnable=False, alpha=None, seed=None)``.

    * ``learnable=False, alpha=None`` (Yu et al. 2014): ``a = lambda`` drawn
      in {0, 1} with probability 1/2 on every training call (from the
      layer's ``SeedGenerator(seed)``), ``a = 1/2`` in inference.
    * ``learnable=False, alpha=a``: the fixed coefficient ``a`` in [0, 1].
    * ``learnable=True`` (Lee et al. 2016): ``a`` is a weight named
      ``"alpha"``, initialised to ``alpha`` (default 1/2), clamped to [0, 1]
      in the forward pass with a straight-through gradient.

    ``mode`` sets the shape of ``a`` (drawn or learned): ``"layer"`` a
    scalar, ``"channel"`` one per channel, ``"window"`` one per output
    position (the output's spatial shape, from the built input size).

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> layer = pk.MixedPool2D(2, mode="channel", learnable=True)
    >>> tuple(layer(keras.ops.ones((1, 8, 8, 3))).shape), tuple(layer.alpha_weight.shape)
    ((1, 4, 4, 3), (3,))
    """

    nd, function = 2, staticmethod(F.mixed_pool2d)


@serializable
class MixedPool3D(_MixedPool):
    """As :class:`MixedPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.mixed_pool3d)


# --------------------------------------------------------------------------- S3


class _S3Pool(_Random, PoolLayer):
    config_keys = ("pool_size", "strides", "data_format", "grid_size", "seed")

    def __init__(
        self,
        pool_size: Any = 2,
        strides: Any = 2,
        data_format: str | None = None,
        grid_size: Any = 2,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        s3_settings(name, self.nd, pool_size, grid_size, strides, KERAS_NAMES)
        self.pool_size, self.strides, self.grid_size = pool_size, strides, grid_size
        self._init_seed(seed)

    def call_args(self, inputs: Any, training: bool | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (inputs, self.pool_size, self.grid_size), {
            "stride": self.strides,
            "training": bool(training),
            "seed": self.seed_generator,
            "data_format": self.data_format,
        }

    def build(self, input_shape: Sequence[Any]) -> None:
        layout_of(type(self).__name__, tuple(input_shape), self.nd, self.data_format)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, ...]:
        layout = self._layout_for(input_shape)
        _, _, s = s3_settings(
            type(self).__name__, layout.nd, self.pool_size, self.grid_size, self.strides, KERAS_NAMES
        )
        out = tuple(None if n is None else math.ceil(n / st) for n, st in zip(layout.spatial(input_shape), s))
        return layout.shape(input_shape[0], input_shape[layout.channel_axis], out)


@serializable
class S3Pool1D(_S3Pool):
    """As :class:`S3Pool2D`, 1-D."""

    nd, function = 1, staticmethod(F.s3_pool1d)


@serializable
class S3Pool2D(_S3Pool):
    """S3Pool (Zhai et al., CVPR 2017), 2-D: stride-1 max pooling, then stochastic spatial sampling.

    ``S3Pool2D(pool_size=2, strides=2, data_format=None, grid_size=2,
    seed=None)``: ``max_pool(x, pool_size, 1, "same")``, then along each
    spatial axis every grid cell of ``grid_size`` rows keeps ``grid_size /
    strides`` of them, drawn in training from the layer's
    ``SeedGenerator(seed)`` (one draw per call, shared by the batch); in
    inference every ``strides``-th row. The output has ``ceil(size /
    strides)`` rows per axis. ``grid_size`` must be a multiple of ``strides``.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> tuple(pk.S3Pool2D(2, grid_size=4, seed=0)(keras.ops.ones((1, 8, 8, 3))).shape)
    (1, 4, 4, 3)
    """

    nd, function = 2, staticmethod(F.s3_pool2d)


@serializable
class S3Pool3D(_S3Pool):
    """As :class:`S3Pool2D`, 3-D."""

    nd, function = 3, staticmethod(F.s3_pool3d)
