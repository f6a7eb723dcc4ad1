"""Keras layers for the learned pooling operators: gated, tree and detail-preserving pooling.

Their filters and coefficients are weights made in ``build`` (``add_weight``):
one set for the layer, or with ``per_channel=True`` one per input channel
(the channel count is read from the input shape). Shapes and initial values
are those of the :mod:`poolkit.torch` modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras

from ..._validate import check_bool, check_int, check_real, int_tuple
from .. import functional as F
from .._core import layout_of
from ._base import KERAS_NAMES, serializable
from .stochastic import NoDilationWindow, clamp_straight_through

__all__ = [
    *(f"GatedPool{n}D" for n in (1, 2, 3)),
    *(f"TreePool{n}D" for n in (1, 2, 3)),
    *(f"DPPPool{n}D" for n in (1, 2, 3)),
]


class _Learned(NoDilationWindow):
    """Window settings plus ``per_channel``; ``kernel`` is ``pool_size`` as a tuple."""

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        per_channel: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, ceil_mode, **kwargs)
        name = type(self).__name__
        self.per_channel = check_bool(name, "per_channel", per_channel)
        self.kernel = int_tuple(name, KERAS_NAMES["kernel_size"], pool_size, self.nd, 1)

    def _channels(self, input_shape: Sequence[Any]) -> tuple[int, ...]:
        """``()`` for one set of weights per layer, ``(C,)`` for one per channel."""
        if not self.per_channel:
            return ()
        layout = layout_of(type(self).__name__, tuple(input_shape), self.nd, self.data_format)
        return (int(input_shape[layout.channel_axis]),)


# --------------------------------------------------------------------------- gated


class _GatedPool(_Learned):
    config_keys = (*NoDilationWindow.window_keys, "data_format", "per_channel")

    def build(self, input_shape: Sequence[Any]) -> None:
        super().build(input_shape)
        self.weight = self.add_weight(
            shape=(*self._channels(input_shape), *self.kernel), initializer="zeros", name="weight"
        )

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (inputs, self.weight, *self._function_window()), {"data_format": self.data_format}


@serializable
class GatedPool1D(_GatedPool):
    """As :class:`GatedPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.gated_pool1d)


@serializable
class GatedPool2D(_GatedPool):
    """Gated max-average pooling (Lee, Gallagher, Tu, AISTATS 2016), 2-D: ``s max + (1 - s) avg``.

    ``GatedPool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False, per_channel=False)``. The gate ``s = sigmoid(w . x_R)``
    is learned: ``weight`` has the kernel's shape (``(C, *pool_size)`` with
    ``per_channel=True``) and starts at 0, so an untrained layer outputs
    ``(max + avg) / 2``.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> layer = pk.GatedPool2D(2, per_channel=True)
    >>> tuple(layer(keras.ops.ones((1, 8, 8, 3))).shape), tuple(layer.weight.shape)
    ((1, 4, 4, 3), (3, 2, 2))
    """

    nd, function = 2, staticmethod(F.gated_pool2d)


@serializable
class GatedPool3D(_GatedPool):
    """As :class:`GatedPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.gated_pool3d)


# --------------------------------------------------------------------------- tree


class _TreePool(_Learned):
    config_keys = (*NoDilationWindow.window_keys, "data_format", "depth", "per_channel", "seed")

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        depth: int = 2,
        per_channel: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, ceil_mode, per_channel, **kwargs)
        name = type(self).__name__
        self.depth = check_int(name, "depth", depth, 1)
        self.seed = None if seed is None else check_int(name, "seed", seed)

    def build(self, input_shape: Sequence[Any]) -> None:
        super().build(input_shape)
        n_leaves = 2 ** (self.depth - 1)
        per = self._channels(input_shape)
        k = math.prod(self.kernel)
        # the average filter 1/K plus noise of 10% of it (from `seed`, else Keras' global seed), so the
        # leaves differ and the gates get a gradient; gates at 0: every gate starts at 1/2
        self.leaves = self.add_weight(
            shape=(n_leaves, *per, *self.kernel),
            initializer=keras.initializers.RandomNormal(mean=1.0 / k, stddev=0.1 / k, seed=self.seed),
            name="leaves",
        )
        self.gates = self.add_weight(
            shape=(n_leaves - 1, *per, *self.kernel), initializer="zeros", name="gates"
        )

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (inputs, self.leaves, self.gates, *self._function_window()), {"data_format": self.data_format}


@serializable
class TreePool1D(_TreePool):
    """As :class:`TreePool2D`, 1-D."""

    nd, function = 1, staticmethod(F.tree_pool1d)


@serializable
class TreePool2D(_TreePool):
    """Tree pooling (Lee, Gallagher, Tu, AISTATS 2016), 2-D: learned leaf filters mixed by learned gates.

    ``TreePool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False, depth=2, per_channel=False, seed=None)``:
    ``2**(depth - 1)`` ``leaves`` and one fewer ``gates``, each a filter of
    the kernel's shape (``(C, *pool_size)`` each with ``per_channel=True``).
    Leaves start at the average filter plus normal noise of 10% of it (drawn
    with ``seed``, an int, or from Keras' global seed), gates at 0: the tree
    starts near average pooling.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> layer = pk.TreePool2D(2, depth=2)
    >>> tuple(layer(keras.ops.ones((1, 8, 8, 3))).shape), tuple(layer.leaves.shape), tuple(layer.gates.shape)
    ((1, 4, 4, 3), (2, 2, 2), (1, 2, 2))
    """

    nd, function = 2, staticmethod(F.tree_pool2d)


@serializable
class TreePool3D(_TreePool):
    """As :class:`TreePool2D`, 3-D."""

    nd, function = 3, staticmethod(F.tree_pool3d)


# --------------------------------------------------------------------------- detail-preserving


class _DPPPool(_Learned):
    config_keys = (*NoDilationWindow.window_keys, "data_format", "asymmetric", "eps", "per_channel")

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        asymmetric: bool = False,
        eps: float = 1e-3,
        per_channel: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, ceil_mode, per_channel, **kwargs)
        name = type(self).__name__
        self.asymmetric = check_bool(name, "asymmetric", asymmetric)
        self.eps = check_real(name, "eps", eps, low=0.0, low_inclusive=False)

    def build(self, input_shape: Sequence[Any]) -> None:
        super().build(input_shape)
        per = self._channels(input_shape)
        # alpha = lam = 1: weights 1 + |d|, a mild preference for detail
        self.alpha = self.add_weight(shape=per, initializer="ones", name="alpha")
        self.lam = self.add_weight(shape=per, initializer="ones", name="lam")

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # clamped at 0 with a straight-through gradient: valid whatever the optimizer does
        alpha, lam = (clamp_straight_through(p, 0.0) for p in (self.alpha, self.lam))
        return (inputs, alpha, lam, *self._function_window()), {
            "asymmetric": self.asymmetric,
            "eps": self.eps,
            "data_format": self.data_format,
        }


@serializable
class DPPPool1D(_DPPPool):
    """As :class:`DPPPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.dpp_pool1d)


@serializable
class DPPPool2D(_DPPPool):
    """Detail-preserving pooling (Saeedan, Weber, Goesele, Roth, CVPR 2018), 2-D.

    ``DPPPool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False, asymmetric=False, eps=1e-3, per_channel=True)``: a
    window average weighing each tap by ``alpha + rho(x - mean)``. ``alpha``
    and ``lam`` are weights of shape ``(C,)`` (``()`` with
    ``per_channel=False``), both initialised to 1; the forward pass clamps
    them at 0 with a straight-through gradient.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> layer = pk.DPPPool2D(2)
    >>> tuple(layer(keras.ops.ones((1, 8, 8, 3))).shape), tuple(layer.alpha.shape)
    ((1, 4, 4, 3), (3,))
    """

    nd, function = 2, staticmethod(F.dpp_pool2d)


@serializable
class DPPPool3D(_DPPPool):
    """As :class:`DPPPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.dpp_pool3d)
