"""Keras layers for spatial pyramids, YOLO's SPP/SPPF, masked, attention and segment pooling.

Names follow Keras' convention (``SpatialPyramidPool2D``, ``SPPF2D``); the
constructor arguments are the PyTorch modules' (:mod:`poolkit.torch.modules.structured`)
with Keras' names where Keras has one (``pool_size``, ``strides``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras

from ..._validate import check_bool, check_choice, check_int, check_real
from ...errors import PoolingConfigError, PoolingInputError
from ...geometry import check_window_settings, window_spec
from ...ops.pyramid import _levels
from ...ops.segment import MODES as SEGMENT_MODES
from .. import functional as F
from .._core import layout_of
from ._base import KERAS_NAMES, PoolLayer, serializable

__all__ = [
    *(f"SpatialPyramidPool{n}D" for n in (1, 2, 3)),
    *(f"SPP{n}D" for n in (1, 2, 3)),
    *(f"SPPF{n}D" for n in (1, 2, 3)),
    "MaskedPool",
    "AttentionPool2D",
    "SegmentPool",
]


def _odd(name: str, arg: str, k: Any) -> int:
    k = check_int(name, arg, k, 1)
    if k % 2 == 0:
        raise PoolingConfigError(
            f"{name}: {arg} must be odd so that stride-1 'same' pooling is centred, got {k}. Use e.g. {k + 1}."
        )
    return k


# --------------------------------------------------------------------------- pyramids


class _SpatialPyramidPool(PoolLayer):
    config_keys = ("levels", "mode", "bins", "data_format")

    def __init__(
        self,
        levels: Any = (1, 2, 4),
        mode: str = "max",
        bins: str = "adaptive",
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        self.levels = _levels(name, levels)
        self.mode = check_choice(name, "mode", mode, ("max", "avg"))
        self.bins = check_choice(name, "bins", bins, ("adaptive", "paper"))

    def build(self, input_shape: Sequence[Any]) -> None:
        layout_of(type(self).__name__, tuple(input_shape), self.nd, self.data_format)
        self.compute_output_shape(input_shape)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, ...]:
        layout = self._layout_for(input_shape)
        spatial = layout.spatial(input_shape)
        c = input_shape[layout.channel_axis]
        total = 0
        for level in self.levels:
            if self.bins == "adaptive":
                total += level**layout.nd
                continue
            if any(a is None for a in spatial):
                return (input_shape[0], None)
            for axis, a in enumerate(spatial):
                if a < level:
                    raise PoolingInputError(
                        f"{type(self).__name__}: bins='paper' needs at least {level} samples per axis for level "
                        f"{level}, got {a} on spatial axis {axis}. Use bins='adaptive' (any size works)."
                    )
            total += math.prod((a - math.ceil(a / level)) // (a // level) + 1 for a in spatial)
        return (input_shape[0], None if c is None else c * total)


@serializable
class SpatialPyramidPool1D(_SpatialPyramidPool):
    """As :class:`SpatialPyramidPool2D`, 1-D: ``(N, C * sum(levels))``."""

    nd, function = 1, staticmethod(F.spatial_pyramid_pool1d)


@serializable
class SpatialPyramidPool2D(_SpatialPyramidPool):
    """Spatial pyramid pooling (He et al., ECCV 2014): a fixed-length ``(N, C * sum(n ** 2))`` from any size.

    ``SpatialPyramidPool2D(levels=(1, 2, 4), mode="max", bins="adaptive",
    data_format=None)``; see :func:`poolkit.keras.functional.spatial_pyramid_pool`
    (each level flattened channel first, then its bins in row-major order).
    """

    nd, function = 2, staticmethod(F.spatial_pyramid_pool2d)


@serializable
class SpatialPyramidPool3D(_SpatialPyramidPool):
    """As :class:`SpatialPyramidPool2D`, 3-D: ``(N, C * sum(n ** 3))``."""

    nd, function = 3, staticmethod(F.spatial_pyramid_pool3d)


class _SPP(PoolLayer):
    config_keys = ("pool_sizes", "data_format")

    def __init__(self, pool_sizes: Any = (5, 9, 13), data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        if not isinstance(pool_sizes, (list, tuple)) or not pool_sizes:
            raise PoolingConfigError(
                f"{name}: pool_sizes must be a non-empty sequence of odd ints, got {pool_sizes!r}."
            )
        self.pool_sizes = tuple(_odd(name, "pool_sizes", k) for k in pool_sizes)

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (inputs, self.pool_sizes), {"data_format": self.data_format}

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, ...]:
        layout = self._layout_for(input_shape)
        c = input_shape[layout.channel_axis]
        return layout.shape(
            input_shape[0], None if c is None else c * (1 + len(self.pool_sizes)), layout.spatial(input_shape)
        )


@serializable
class SPP1D(_SPP):
    """As :class:`SPP2D`, 1-D."""

    nd, function = 1, staticmethod(F.spp1d)


@serializable
class SPP2D(_SPP):
    """YOLO's SPP block ``concat[x, m_5(x), m_9(x), m_13(x)]`` on the channel axis: ``C * (1 + len(pool_sizes))``.

    ``SPP2D(pool_sizes=(5, 9, 13), data_format=None)``: ``m_k`` is max pooling
    with window ``k`` (odd), stride 1 and ``"same"`` padding.
    """

    nd, function = 2, staticmethod(F.spp2d)


@serializable
class SPP3D(_SPP):
    """As :class:`SPP2D`, 3-D."""

    nd, function = 3, staticmethod(F.spp3d)


class _SPPF(PoolLayer):
    config_keys = ("pool_size", "repeats", "data_format")

    def __init__(
        self, pool_size: int = 5, repeats: int = 3, data_format: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        self.pool_size = _odd(name, "pool_size", pool_size)
        self.repeats = check_int(name, "repeats", repeats, 1)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, ...]:
        layout = self._layout_for(input_shape)
        c = input_shape[layout.channel_axis]
        return layout.shape(
            input_shape[0], None if c is None else c * (1 + self.repeats), layout.spatial(input_shape)
        )


@serializable
class SPPF1D(_SPPF):
    """As :class:`SPPF2D`, 1-D."""

    nd, function = 1, staticmethod(F.sppf1d)


@serializable
class SPPF2D(_SPPF):
    """YOLOv5's SPPF ``concat[x, m(x), m(m(x)), m(m(m(x)))]``, ``m`` max pooling ``(pool_size, 1, "same")``.

    ``SPPF2D(pool_size=5, repeats=3, data_format=None)``: equals
    ``SPP2D((5, 9, 13))`` exactly, ties included, at a fraction of the cost.
    """

    nd, function = 2, staticmethod(F.sppf2d)


@serializable
class SPPF3D(_SPPF):
    """As :class:`SPPF2D`, 3-D."""

    nd, function = 3, staticmethod(F.sppf3d)


# --------------------------------------------------------------------------- masked


@serializable
class MaskedPool(PoolLayer):
    """Pooling over the positions a mask selects: ``MaskedPool(...)(inputs, mask)``, any spatial rank.

    ``MaskedPool(pool_size=None, strides=None, padding="valid", ceil_mode=False,
    mode="avg", data_format=None)``. ``pool_size=None`` pools globally,
    ``(N, *spatial, C) -> (N, C)`` (masked average pooling of few-shot
    segmentation); with a ``pool_size`` it slides windows (PyTorch's geometry,
    padding masked out). ``mask`` has the input's shape or one channel.
    See :func:`poolkit.keras.functional.masked_pool`.
    """

    config_keys = ("pool_size", "strides", "padding", "ceil_mode", "mode", "data_format")
    function = staticmethod(F.masked_pool)

    def __init__(
        self,
        pool_size: Any = None,
        strides: Any = None,
        padding: Any = "valid",
        ceil_mode: bool = False,
        mode: str = "avg",
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        self.mode = check_choice(name, "mode", mode, ("avg", "sum", "max"))
        ceil_mode = check_bool(name, "ceil_mode", ceil_mode)
        if pool_size is not None:
            nd = next(
                (len(s) for s in (pool_size, strides, padding) if isinstance(s, (list, tuple)) and s), None
            )
            check_window_settings(name, nd or 1, pool_size, strides, padding, 1, ceil_mode, KERAS_NAMES)
        elif strides is not None or padding not in (0, "valid") or ceil_mode:
            raise PoolingConfigError(
                f"{name}: strides, padding and ceil_mode need a pool_size (pool_size=None pools globally)."
            )
        self.pool_size, self.strides, self.padding, self.ceil_mode = pool_size, strides, padding, ceil_mode

    def call(self, inputs: Any, mask: Any) -> Any:
        args, kwargs = self.call_args(inputs, mask)
        return type(self).function(*args, **kwargs)

    def call_args(self, inputs: Any, mask: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        padding = 0 if self.padding == "valid" and self.pool_size is None else self.padding
        return (inputs, mask, self.mode, self.pool_size, self.strides, padding, self.ceil_mode), {
            "data_format": self.data_format
        }

    def compute_output_shape(self, input_shape: Sequence[Any], mask_shape: Any = None) -> tuple[Any, ...]:
        layout = self._layout_for(input_shape)
        c = input_shape[layout.channel_axis]
        if self.pool_size is None:
            return (input_shape[0], c)
        spatial = layout.spatial(input_shape)
        if any(s is None for s in spatial):
            return layout.shape(input_shape[0], c, (None,) * layout.nd)
        spec = window_spec(
            spatial,
            self.pool_size,
            self.strides,
            self.padding,
            1,
            self.ceil_mode,
            op=type(self).__name__,
            names=KERAS_NAMES,
        )
        return layout.shape(input_shape[0], c, spec.output_size)

    def compute_output_spec(self, inputs: Any, mask: Any) -> Any:
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=inputs.dtype)


# --------------------------------------------------------------------------- attention


@serializable
class AttentionPool2D(PoolLayer):
    """CLIP's attention pooling (Radford et al. 2021), or PMA seed queries (Lee et al. 2019).

    ``AttentionPool2D(spacial_dim, embed_dim, num_heads, output_dim=None,
    num_queries=None, data_format=None, seed=None)``, the PyTorch module's parameters
    with its shapes and initialisation: ``positional_embedding``
    ``(H W + 1, C)`` (``(H W, C)`` with seeds; ``spacial_dim=None``: none, any
    input size), ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``
    ``(C, C)`` and ``c_proj_weight`` ``(output_dim, C)`` in torch's ``(out, in)``
    layout (a CLIP ``attnpool`` state dict loads with ``set_weights``), their
    biases, and with ``num_queries=Q`` the seeds ``query`` ``(Q, C)``. Output
    ``(N, output_dim)`` (the mean token queries) or ``(N, Q, output_dim)``.
    ``C = embed_dim`` must be the input's channel count. ``seed`` (an int) makes
    the initial weights reproducible (else Keras' global seed draws them).

    ``k_proj_bias`` is not trainable: it adds the same amount to every score
    of a query, which the softmax ignores, so its gradient is identically 0.
    """

    config_keys = (
        "spacial_dim",
        "embed_dim",
        "num_heads",
        "output_dim",
        "num_queries",
        "data_format",
        "seed",
    )
    nd, function = 2, staticmethod(F.attention_pool2d)

    def __init__(
        self,
        spacial_dim: Any,
        embed_dim: int,
        num_heads: int,
        output_dim: int | None = None,
        num_queries: int | None = None,
        data_format: str | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        self.seed = None if seed is None else check_int(name, "seed", seed)
        self.embed_dim = check_int(name, "embed_dim", embed_dim, 1)
        self.num_heads = check_int(name, "num_heads", num_heads, 1)
        if self.embed_dim % self.num_heads:
            ok = [d for d in range(1, self.embed_dim + 1) if self.embed_dim % d == 0]
            raise PoolingConfigError(
                f"{name}: embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}. "
                f"Pass num_heads in {ok}."
            )
        self.output_dim = None if output_dim is None else check_int(name, "output_dim", output_dim, 1)
        self.num_queries = None if num_queries is None else check_int(name, "num_queries", num_queries, 1)
        if spacial_dim is None:
            self.spacial_dim = None
        elif isinstance(spacial_dim, (list, tuple)):
            if len(spacial_dim) != 2:
                raise PoolingConfigError(
                    f"{name}: spacial_dim must be an int, a (height, width) pair or None, got {spacial_dim!r}."
                )
            self.spacial_dim = tuple(check_int(name, "spacial_dim", s, 1) for s in spacial_dim)
        else:
            self.spacial_dim = check_int(name, "spacial_dim", spacial_dim, 1)

    def _hw(self) -> tuple[int, int] | None:
        s = self.spacial_dim
        return None if s is None else (s, s) if isinstance(s, int) else tuple(s)  # type: ignore[return-value]

    def build(self, input_shape: Sequence[Any]) -> None:
        name = type(self).__name__
        layout = layout_of(name, tuple(input_shape), 2, self.data_format)
        c, hw = input_shape[layout.channel_axis], self._hw()
        if c != self.embed_dim:
            raise PoolingInputError(
                f"{name}: the input has {c} channels but embed_dim={self.embed_dim}; they must be equal "
                f"(the tokens are the channel vectors)."
            )
        if hw is not None and tuple(layout.spatial(input_shape)) != hw:
            raise PoolingInputError(
                f"{name}: the positional embedding is for a {hw} map (spacial_dim), got spatial size "
                f"{layout.spatial(input_shape)}. Pass spacial_dim=None for no positional embedding (any size)."
            )
        out = self.output_dim or c
        std = 1.0 / math.sqrt(c)
        seeds = iter(range(10)) if self.seed is None else iter(range(self.seed, self.seed + 10))

        def normal() -> Any:  # torch.randn(...) / sqrt(C); one seed per weight, so that no two are equal
            return keras.initializers.RandomNormal(
                stddev=std, seed=None if self.seed is None else next(seeds)
            )

        def uniform() -> (
            Any
        ):  # torch.nn.Linear's kaiming_uniform(a=sqrt(5)) and bias: U(-1/sqrt(C), 1/sqrt(C))
            return keras.initializers.RandomUniform(
                -std, std, seed=None if self.seed is None else next(seeds)
            )

        self.positional_embedding = None
        if hw is not None:
            rows = hw[0] * hw[1] + (0 if self.num_queries else 1)
            self.positional_embedding = self.add_weight((rows, c), normal(), name="positional_embedding")
        self.query = None
        if self.num_queries is not None:
            self.query = self.add_weight((self.num_queries, c), normal(), name="query")
        for key, rows in (("q", c), ("k", c), ("v", c), ("c", out)):
            weight = self.add_weight((rows, c), uniform(), name=f"{key}_proj_weight")
            bias = self.add_weight((rows,), uniform(), name=f"{key}_proj_bias", trainable=key != "k")
            setattr(self, f"{key}_proj_weight", weight)
            setattr(self, f"{key}_proj_bias", bias)

    def call_args(self, inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        w = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight, self.c_proj_weight)
        return (inputs, self.query, *w, self.num_heads), {
            "bq": self.q_proj_bias,
            "bk": self.k_proj_bias,
            "bv": self.v_proj_bias,
            "bo": self.c_proj_bias,
            "pos_embed": self.positional_embedding,
            "data_format": self.data_format,
        }

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, ...]:
        out = self.output_dim or self.embed_dim
        return (input_shape[0], out) if self.num_queries is None else (input_shape[0], self.num_queries, out)


# --------------------------------------------------------------------------- segments


@serializable
class SegmentPool(PoolLayer):
    """Set pooling by segment id (graph readout): ``SegmentPool(num_segments)(inputs, segment_ids)``.

    ``SegmentPool(num_segments, mode="sum", t=1.0, p=1.0, eps=1e-6,
    learnable=False, channels=None)``: ``(num_items, *F) -> (num_segments, *F)``
    (Keras needs the number of output rows statically); ``mode`` as
    :func:`poolkit.keras.functional.segment_pool`. With ``learnable=True`` the
    softmax temperature ``t`` (``mode="softmax"``) or the power ``p``
    (``mode="power_mean"``) is a weight: one value, or one per feature with
    ``channels=F``.
    """

    config_keys = ("num_segments", "mode", "t", "p", "eps", "learnable", "channels")
    function = staticmethod(F.segment_pool)

    def __init__(
        self,
        num_segments: int,
        mode: str = "sum",
        t: float = 1.0,
        p: float = 1.0,
        eps: float = 1e-6,
        learnable: bool = False,
        channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        if num_segments is None:
            raise PoolingConfigError(
                f"{name}: num_segments is required: Keras needs the number of output rows when the model is built "
                f"(e.g. the number of graphs per batch)."
            )
        self.num_segments = check_int(name, "num_segments", num_segments, 0)
        self.mode = check_choice(name, "mode", mode, SEGMENT_MODES)
        self.t = check_real(name, "t", t)
        self.p = check_real(name, "p", p, low=0.0, low_inclusive=False)
        self.eps = check_real(name, "eps", eps, low=0.0, low_inclusive=False)
        self.learnable = check_bool(name, "learnable", learnable)
        if learnable and self.mode not in ("softmax", "power_mean"):
            raise PoolingConfigError(
                f"{name}: learnable=True needs mode='softmax' (learns t) or mode='power_mean' (learns p), "
                f"got mode={self.mode!r}."
            )
        if channels is not None and not learnable:
            raise PoolingConfigError(
                f"{name}: channels= sets the size of a learned t or p; pass learnable=True."
            )
        self.channels = None if channels is None else check_int(name, "channels", channels, 1)
        self.param = None

    def build(self, input_shape: Sequence[Any]) -> None:
        if not self.learnable:
            return
        shape = () if self.channels is None else (self.channels,)
        if shape and tuple(input_shape[1:]) != shape:
            raise PoolingInputError(
                f"{type(self).__name__}: channels={self.channels} must equal the feature shape of the input, "
                f"got input shape {tuple(input_shape)}."
            )
        key = "t" if self.mode == "softmax" else "p"
        self.param = self.add_weight(shape, keras.initializers.Constant(getattr(self, key)), name=key)

    def call(self, inputs: Any, segment_ids: Any) -> Any:
        args, kwargs = self.call_args(inputs, segment_ids)
        return type(self).function(*args, **kwargs)

    def call_args(self, inputs: Any, segment_ids: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        t = self.param if self.param is not None and self.mode == "softmax" else self.t
        p = self.param if self.param is not None and self.mode == "power_mean" else self.p
        return (inputs, segment_ids, self.num_segments, self.mode), {"t": t, "p": p, "eps": self.eps}

    def compute_output_shape(
        self, input_shape: Sequence[Any], segment_ids_shape: Any = None
    ) -> tuple[Any, ...]:
        return (self.num_segments, *input_shape[1:])

    def compute_output_spec(self, inputs: Any, segment_ids: Any) -> Any:
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=inputs.dtype)
