"""Keras layers for GeM, LSE, SoftPool and LIP pooling: learnable powers, sharpness and logit networks.

The choices are those of the :mod:`poolkit.torch` modules, in Keras'
conventions: GeM's ``p`` and LSE's ``r`` are weights made in ``build``
(one for the layer, or with ``per_channel=True`` one per input channel,
the count read from the input shape), learned unless ``learnable=False``;
LIP's default logit network (:class:`LIPLogit`) is built in ``build`` for
the input's channel count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import keras
from keras import ops

from ..._validate import check_bool, check_real
from ...errors import PoolingConfigError
from ...ops._input import check_rank
from .. import functional as F
from .._core import layout_of
from ._base import PoolLayer, WindowLayer, serializable
from .classic import _GlobalPool

__all__ = [
    *(f"GeMPool{n}D" for n in (1, 2, 3)),
    *(f"GlobalGeMPool{n}D" for n in (1, 2, 3)),
    *(f"LSEPool{n}D" for n in (1, 2, 3)),
    *(f"SoftPool{n}D" for n in (1, 2, 3)),
    *(f"LIPPool{n}D" for n in (1, 2, 3)),
]


class Window(WindowLayer):
    """A :class:`WindowLayer` without ``dilation_rate`` (these operators have none)."""

    window_keys: ClassVar[tuple[str, ...]] = ("pool_size", "strides", "padding", "ceil_mode")
    config_keys: ClassVar[tuple[str, ...]] = (*window_keys, "data_format")

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

    def _positional(self, inputs: Any, *arrays: Any) -> tuple[Any, ...]:
        """``(x, *arrays, kernel_size, stride, padding, ceil_mode)``: the functions' positional order."""
        return (inputs, *arrays, self.pool_size, self.strides, self.padding, self.ceil_mode)


def _channels(layer: PoolLayer, input_shape: Sequence[Any], per_channel: bool) -> tuple[int, ...]:
    if not per_channel:
        return ()
    name = type(layer).__name__
    layout = layout_of(name, tuple(input_shape), layer.nd, layer.data_format)
    c = input_shape[layout.channel_axis]
    if c is None:
        raise PoolingConfigError(
            f"{name}: per_channel=True needs a known channel count, got shape {input_shape}."
        )
    return (int(c),)


class _Learnable:
    """A positive scalar-or-per-channel weight (``param``), its initial value kept in the config."""

    param: ClassVar[str]
    init_keys: ClassVar[tuple[str, ...]] = ("per_channel", "learnable")

    def _init_param(self, value: Any, per_channel: Any, learnable: Any) -> None:
        name = type(self).__name__
        setattr(self, f"{self.param}_init", check_real(name, self.param, value, low=0.0, low_inclusive=False))
        self.per_channel = check_bool(name, "per_channel", per_channel)
        self.learnable = check_bool(name, "learnable", learnable)

    def _build_param(self, input_shape: Sequence[Any]) -> None:
        shape = _channels(self, input_shape, self.per_channel)  # type: ignore[arg-type]
        weight = self.add_weight(  # type: ignore[attr-defined]
            shape=shape,
            initializer=keras.initializers.Constant(getattr(self, f"{self.param}_init")),
            trainable=self.learnable,
            name=self.param,
        )
        setattr(self, self.param, weight)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()  # type: ignore[misc]
        config[self.param] = getattr(self, f"{self.param}_init")
        return config


# --------------------------------------------------------------------------- GeM


class _GeMPool(_Learnable, Window):
    param = "p"
    config_keys = (*Window.window_keys, "data_format", "eps", *_Learnable.init_keys)

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        p: float = 3.0,
        eps: float = 1e-6,
        per_channel: bool = False,
        learnable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, ceil_mode, **kwargs)
        self.eps = check_real(type(self).__name__, "eps", eps, low=0.0, low_inclusive=False)
        self._init_param(p, per_channel, learnable)

    def build(self, input_shape: Sequence[Any]) -> None:
        super().build(input_shape)
        self._build_param(input_shape)

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self._positional(inputs), {"p": self.p, "eps": self.eps, "data_format": self.data_format}


@serializable
class GeMPool1D(_GeMPool):
    """As :class:`GeMPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.gem_pool1d)


@serializable
class GeMPool2D(_GeMPool):
    """Windowed GeM pooling ``((1/|R|) sum max(x, eps)^p)^(1/p)`` with a learnable power, 2-D.

    ``GeMPool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False, p=3.0, eps=1e-6, per_channel=False, learnable=True)``.
    The weight ``p`` starts at ``p`` (3.0, the paper's initial value) and is
    learned, as cirtorch's ``GeM``: one value, or one per channel with
    ``per_channel=True``; ``learnable=False`` keeps it fixed (a
    non-trainable weight, still saved). It is not constrained: a step that
    makes it non-positive gives NaN. Padding is not part of the mean.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> layer = pk.GeMPool2D(2, per_channel=True)
    >>> tuple(layer(keras.ops.ones((1, 6, 6, 8))).shape), tuple(layer.p.shape)
    ((1, 3, 3, 8), (8,))
    """

    nd, function = 2, staticmethod(F.gem_pool2d)


@serializable
class GeMPool3D(_GeMPool):
    """As :class:`GeMPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.gem_pool3d)


class _GlobalGeMPool(_Learnable, PoolLayer):
    param = "p"
    config_keys = ("eps", "data_format", "keepdims", *_Learnable.init_keys)

    def __init__(
        self,
        p: float = 3.0,
        eps: float = 1e-6,
        data_format: str | None = None,
        keepdims: bool = False,
        per_channel: bool = False,
        learnable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        self.eps = check_real(name, "eps", eps, low=0.0, low_inclusive=False)
        self.keepdims = check_bool(name, "keepdims", keepdims)
        self._init_param(p, per_channel, learnable)

    def build(self, input_shape: Sequence[Any]) -> None:
        layout_of(type(self).__name__, tuple(input_shape), self.nd, self.data_format)
        self._build_param(input_shape)

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # global_gem_pool takes any rank: a GlobalGeMPool2D must still get a 2-D input
        check_rank(
            type(self).__name__,
            tuple(inputs.shape),
            self.nd,
            self.data_format == "channels_last",
            False,
            "tensor",
        )
        return (inputs,), {
            "p": self.p,
            "eps": self.eps,
            "keepdims": self.keepdims,
            "data_format": self.data_format,
        }

    compute_output_shape = _GlobalPool.compute_output_shape  # (N, C), or with keepdims size-1 axes


@serializable
class GlobalGeMPool1D(_GlobalGeMPool):
    """As :class:`GlobalGeMPool2D`, over one spatial axis."""

    nd, function = 1, staticmethod(F.global_gem_pool)


@serializable
class GlobalGeMPool2D(_GlobalGeMPool):
    """Global GeM pooling, ``(N, H, W, C) -> (N, C)``, with a learnable power (cirtorch's ``GeM``).

    ``GlobalGeMPool2D(p=3.0, eps=1e-6, data_format=None, keepdims=False,
    per_channel=False, learnable=True)``; ``p`` as in :class:`GeMPool2D`.
    One class per spatial rank, as Keras' ``GlobalAveragePooling2D`` (the
    torch module ``GlobalGeMPool`` takes any rank).

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> tuple(pk.GlobalGeMPool2D()(keras.ops.ones((2, 7, 7, 16))).shape)
    (2, 16)
    """

    nd, function = 2, staticmethod(F.global_gem_pool)


@serializable
class GlobalGeMPool3D(_GlobalGeMPool):
    """As :class:`GlobalGeMPool2D`, over three spatial axes."""

    nd, function = 3, staticmethod(F.global_gem_pool)


# --------------------------------------------------------------------------- LSE


class _LSEPool(_Learnable, Window):
    param = "r"
    config_keys = (*Window.window_keys, "data_format", *_Learnable.init_keys)

    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        r: float = 10.0,
        per_channel: bool = False,
        learnable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, ceil_mode, **kwargs)
        self._init_param(r, per_channel, learnable)

    def build(self, input_shape: Sequence[Any]) -> None:
        super().build(input_shape)
        self._build_param(input_shape)

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self._positional(inputs), {"r": self.r, "data_format": self.data_format}


@serializable
class LSEPool1D(_LSEPool):
    """As :class:`LSEPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.lse_pool1d)


@serializable
class LSEPool2D(_LSEPool):
    """Log-sum-exp pooling ``m + (1/r) log((1/n) sum exp(r (x - m)))`` with a learnable sharpness, 2-D.

    ``LSEPool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False, r=10.0, per_channel=False, learnable=True)``: the
    weight ``r`` starts at 10 (timm's ``LsePlus2d``), shared or one per
    channel. Stable for any ``r`` and input (the window maximum is subtracted).

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> tuple(pk.LSEPool2D(2, r=10.0)(keras.ops.ones((1, 4, 4, 3))).shape)
    (1, 2, 2, 3)
    """

    nd, function = 2, staticmethod(F.lse_pool2d)


@serializable
class LSEPool3D(_LSEPool):
    """As :class:`LSEPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.lse_pool3d)


# --------------------------------------------------------------------------- SoftPool


@serializable
class SoftPool1D(Window):
    """As :class:`SoftPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.soft_pool1d)


@serializable
class SoftPool2D(Window):
    """SoftPool: softmax-weighted window averages (Stergiou et al., ICCV 2021), 2-D.

    ``SoftPool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False)``; finite for +-1e4 in float32, padding outside the
    softmax, the usual output size for any kernel and stride.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> y = pk.SoftPool2D(2)(keras.ops.full((1, 4, 4, 1), 1e4))
    >>> keras.ops.convert_to_numpy(y).ravel().tolist()
    [10000.0, 10000.0, 10000.0, 10000.0]
    """

    nd, function = 2, staticmethod(F.soft_pool2d)


@serializable
class SoftPool3D(Window):
    """As :class:`SoftPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.soft_pool3d)


# --------------------------------------------------------------------------- LIP


@serializable
class LIPLogit(keras.layers.Layer):
    """LIP's logit network ``G(x) = 12 * sigmoid(InstanceNorm(conv_1x1(x)))`` (Gao, Wang, Wu, ICCV 2019).

    A 1x1 convolution (``C -> C``, no bias) starting at zero, as sebgao/LIP's
    ``init_layer`` does, an affine instance norm (``epsilon=1e-5``, torch's)
    and a gate bounding the logits to ``(0, coeff)``: the logits start
    constant, so LIP starts as average pooling. Written in ``keras.ops``
    (the 1x1 convolution is a matmul over the channel axis), in the
    ``data_format`` of the pooling layer that owns it.
    """

    def __init__(self, data_format: str | None = None, coeff: float = 12.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = keras.config.image_data_format() if data_format is None else data_format
        self.coeff = check_real("LIPLogit", "coeff", coeff, low=0.0, low_inclusive=False)

    def build(self, input_shape: Sequence[Any]) -> None:
        c = int(input_shape[-1 if self.data_format == "channels_last" else 1])
        self.kernel = self.add_weight(shape=(c, c), initializer="zeros", name="kernel")
        self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(c,), initializer="zeros", name="beta")

    def call(self, x: Any) -> Any:
        last = self.data_format == "channels_last"
        t = x if last else ops.moveaxis(x, 1, -1)
        t = ops.matmul(t, ops.cast(self.kernel, t.dtype))  # the 1x1 convolution: out[o] = sum_i x[i] W[i, o]
        axes = tuple(range(1, len(t.shape) - 1))
        n = 1
        for a in axes:
            n *= t.shape[a]
        mean = ops.sum(t, axis=axes, keepdims=True) / n
        var = ops.sum(ops.square(t - mean), axis=axes, keepdims=True) / n  # biased, as InstanceNorm
        t = (t - mean) / ops.sqrt(var + 1e-5) * ops.cast(self.gamma, t.dtype) + ops.cast(self.beta, t.dtype)
        t = ops.sigmoid(t) * self.coeff
        return t if last else ops.moveaxis(t, -1, 1)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> Sequence[Any]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "data_format": self.data_format, "coeff": self.coeff}


class _LIPPool(Window):
    def __init__(
        self,
        pool_size: Any,
        strides: Any = None,
        padding: Any = "valid",
        data_format: str | None = None,
        ceil_mode: bool = False,
        logit: keras.layers.Layer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, data_format, ceil_mode, **kwargs)
        if isinstance(logit, dict):  # from a saved config
            logit = keras.saving.deserialize_keras_object(logit)
        if logit is not None and not isinstance(logit, keras.layers.Layer):
            raise PoolingConfigError(
                f"{type(self).__name__}: logit must be None (the default network) or a keras Layer mapping x "
                f"(in the layer's data_format) to a logit map of its shape, got {type(logit).__name__}."
            )
        self.custom_logit = logit is not None
        self.logit = logit

    def build(self, input_shape: Sequence[Any]) -> None:
        super().build(input_shape)
        if self.logit is None:
            self.logit = LIPLogit(self.data_format, name="logit")
        if not self.logit.built:
            self.logit.build(input_shape)

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self._positional(inputs, self.logit(inputs)), {"data_format": self.data_format}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["logit"] = keras.saving.serialize_keras_object(self.logit) if self.custom_logit else None
        return config


@serializable
class LIPPool1D(_LIPPool):
    """As :class:`LIPPool2D`, 1-D."""

    nd, function = 1, staticmethod(F.lip_pool1d)


@serializable
class LIPPool2D(_LIPPool):
    """Local importance pooling: window averages weighted by ``exp(G(x))`` (Gao, Wang, Wu, ICCV 2019), 2-D.

    ``LIPPool2D(pool_size, strides=None, padding="valid", data_format=None,
    ceil_mode=False, logit=None)``. ``G`` is ``logit``: by default a
    :class:`LIPLogit` built for the input's channels (1x1 convolution from
    zero, affine instance norm, ``12 * sigmoid``), so an untrained layer is
    average pooling over the taps inside the input; any Keras layer mapping
    ``x`` to logits of its shape may replace it. The paper's layer is
    ``LIPPool2D(3, 2, 1)``.

    Examples
    --------
    >>> import keras, poolkit.keras as pk
    >>> layer = pk.LIPPool2D(3, 2, 1)
    >>> tuple(layer(keras.ops.ones((2, 9, 9, 8))).shape), len(layer.trainable_weights)
    ((2, 5, 5, 8), 3)
    """

    nd, function = 2, staticmethod(F.lip_pool2d)


@serializable
class LIPPool3D(_LIPPool):
    """As :class:`LIPPool2D`, 3-D."""

    nd, function = 3, staticmethod(F.lip_pool3d)
