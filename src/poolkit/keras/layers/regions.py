"""Keras layers for region pooling: RoIPool, RoIAlign, PSRoIPool, PSRoIAlign, MultiScaleRoIAlign, PreciseRoIPool.

``RoIAlign(output_size, spatial_scale=..., sampling_ratio=..., aligned=...)(features, boxes)``:
torchvision's operators (:mod:`poolkit.keras.functional.regions`) with Keras'
conventions (``data_format`` defaults to channels_last). ``boxes`` is a
``(K, 5)`` tensor of ``(batch_index, x1, y1, x2, y2)``, a list of ``(L_i, 4)``
tensors (one per image) or an ``(N, L, 4)`` tensor; the output has one row per
box, ``(K, oh, ow, C)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from ..._validate import check_bool, check_int, check_real, is_int
from ...errors import PoolingConfigError, PoolingInputError
from ...ops._boxes import pooled_size, spatial_scale_of
from .. import functional as F
from .._core import layout_of
from ._base import PoolLayer, serializable

__all__ = ["RoIPool", "RoIAlign", "PSRoIPool", "PSRoIAlign", "MultiScaleRoIAlign", "PreciseRoIPool"]


def _is_shape(s: Any) -> bool:
    return isinstance(s, (tuple, list)) and all(v is None or isinstance(v, int) for v in s)


def _num_boxes(boxes_shape: Any) -> Any:
    """``K`` from the boxes' shape: ``(K, 5)``, ``(N, L, 4)`` or a list of ``(L_i, 4)`` shapes."""
    if boxes_shape is None:
        return None
    if _is_shape(boxes_shape):
        if len(boxes_shape) == 3:
            n, lb = boxes_shape[0], boxes_shape[1]
            return None if n is None or lb is None else n * lb
        return boxes_shape[0]
    counts = [_num_boxes(tuple(s)) for s in boxes_shape]
    return None if any(c is None for c in counts) else sum(counts)


def _shape_of(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and not _is_shape(v):
        return [tuple(t.shape) for t in v]
    return tuple(v.shape) if hasattr(v, "shape") else None


class _Region(PoolLayer):
    """``call(inputs, boxes)``; the output holds one ``(oh, ow)`` map per box."""

    config_keys: Any = ("output_size", "spatial_scale", "data_format")
    groups = False  # position-sensitive: C / (oh ow) output channels

    def __init__(
        self, output_size: Any, spatial_scale: float = 1.0, data_format: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        pooled_size(name, output_size)
        self.output_size = output_size
        self.spatial_scale = spatial_scale_of(name, spatial_scale)

    def call(self, inputs: Any, boxes: Any) -> Any:
        args, kwargs = self.call_args(inputs, boxes)
        return type(self).function(*args, **kwargs)

    def call_args(self, inputs: Any, boxes: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        settings = [getattr(self, k) for k in self.config_keys if k != "data_format"]
        return (inputs, boxes, *settings), {"data_format": self.data_format}

    def _channels(self, input_shape: Sequence[Any]) -> Any:
        name = type(self).__name__
        layout = layout_of(name, tuple(input_shape), 2, self.data_format)
        c = input_shape[layout.channel_axis]
        if not self.groups or c is None:
            return c
        oh, ow = pooled_size(name, self.output_size)
        if c % (oh * ow):
            p = oh * ow
            raise PoolingInputError(
                f"{name}: the channel count C={c} must be a multiple of oh*ow = {p} (output_size={(oh, ow)}): "
                f"each output channel reads one group of {p} input channels. Use C = {(c // p + 1) * p} channels "
                f"or another output_size."
            )
        return c // (oh * ow)

    def compute_output_shape(self, input_shape: Sequence[Any], boxes_shape: Any = None) -> tuple[Any, ...]:
        c = self._channels(input_shape)
        oh, ow = pooled_size(type(self).__name__, self.output_size)
        k = _num_boxes(boxes_shape)
        return (k, oh, ow, c) if self.data_format == "channels_last" else (k, c, oh, ow)

    def compute_output_spec(self, inputs: Any, boxes: Any) -> Any:
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape, _shape_of(boxes)), dtype=inputs.dtype
        )


@serializable
class RoIPool(_Region):
    """RoI max pooling (Fast R-CNN), as ``torchvision.ops.RoIPool``: ``RoIPool(output_size, spatial_scale=1.0)``.

    Same outputs and gradients as torchvision (the gradient to each bin's
    winning pixel); see :func:`poolkit.keras.functional.roi_pool`.
    """

    function = staticmethod(F.roi_pool)


@serializable
class PSRoIPool(_Region):
    """Position-sensitive RoI pooling (R-FCN), as ``torchvision.ops.PSRoIPool``: ``C / (oh ow)`` output channels.

    ``PSRoIPool(output_size, spatial_scale=1.0)``; the gradient is the exact one
    of the forward at the map's border (torchvision's is not).
    """

    groups = True
    function = staticmethod(F.ps_roi_pool)


@serializable
class PreciseRoIPool(_Region):
    """Precise RoI pooling (PrRoI, Jiang et al. 2018): exact bin means of the bilinear interpolant.

    ``PreciseRoIPool(output_size, spatial_scale=1.0)``; differentiable in the
    boxes too (continuously); see :func:`poolkit.keras.functional.precise_roi_pool`.
    """

    function = staticmethod(F.precise_roi_pool)


@serializable
class RoIAlign(_Region):
    """RoI Align (Mask R-CNN), as ``torchvision.ops.RoIAlign``, with a deterministic backward.

    ``RoIAlign(output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
    data_format=None)(features, boxes)``. ``sampling_ratio <= 0`` is
    torchvision's adaptive grid (``ceil(roi / output)`` points per bin side),
    computed with static shapes; see :func:`poolkit.keras.functional.roi_align`.
    """

    config_keys = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "data_format")
    function = staticmethod(F.roi_align)

    def __init__(
        self,
        output_size: Any,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output_size, spatial_scale, data_format, **kwargs)
        name = type(self).__name__
        self.sampling_ratio = check_int(name, "sampling_ratio", sampling_ratio)
        self.aligned = check_bool(name, "aligned", aligned)


@serializable
class PSRoIAlign(_Region):
    """Position-sensitive RoI Align, as ``torchvision.ops.PSRoIAlign``: ``C / (oh ow)`` output channels.

    ``PSRoIAlign(output_size, spatial_scale=1.0, sampling_ratio=-1,
    data_format=None)``; a zero-size box with the adaptive grid gives 0 (not NaN).
    """

    config_keys = ("output_size", "spatial_scale", "sampling_ratio", "data_format")
    groups = True
    function = staticmethod(F.ps_roi_align)

    def __init__(
        self,
        output_size: Any,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output_size, spatial_scale, data_format, **kwargs)
        self.sampling_ratio = check_int(type(self).__name__, "sampling_ratio", sampling_ratio)


@serializable
class MultiScaleRoIAlign(PoolLayer):
    """RoI Align on an FPN level per box, as ``torchvision.ops.MultiScaleRoIAlign``.

    ``MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio=-1,
    canonical_scale=224, canonical_level=4, image_size=None,
    data_format=None)(features, boxes, image_shapes=None)``: ``features`` a
    dict of maps (the keys in ``featmap_names`` are used, in the dict's order),
    a list (``featmap_names=None``: every map, finest first) or one map.
    The level scales come from the image size, which Keras needs statically:
    ``image_size=(height, width)`` (every image, the network's input size), or
    torchvision's ``image_shapes`` (one ``(height, width)`` per image) as a
    keyword of the call.
    """

    config_keys = (
        "featmap_names",
        "output_size",
        "sampling_ratio",
        "canonical_scale",
        "canonical_level",
        "image_size",
        "data_format",
    )
    function = staticmethod(F.multiscale_roi_align)

    def __init__(
        self,
        featmap_names: Sequence[str] | None,
        output_size: Any,
        sampling_ratio: int = -1,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        image_size: Any = None,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_format=data_format, **kwargs)
        name = type(self).__name__
        if image_size is not None and (
            not isinstance(image_size, (list, tuple))
            or len(image_size) != 2
            or not all(is_int(v) and v >= 1 for v in image_size)
        ):
            raise PoolingConfigError(
                f"{name}: image_size must be a (height, width) pair of positive ints or None, got {image_size!r}."
            )
        self.image_size = None if image_size is None else tuple(int(v) for v in image_size)
        if featmap_names is not None and (
            isinstance(featmap_names, str)
            or not isinstance(featmap_names, Sequence)
            or not featmap_names
            or not all(isinstance(k, str) for k in featmap_names)
        ):
            raise PoolingConfigError(
                f"{name}: featmap_names must be a non-empty list of feature-map names (or None for every map), "
                f"got {featmap_names!r}."
            )
        self.featmap_names = None if featmap_names is None else list(featmap_names)
        pooled_size(name, output_size)
        self.output_size = output_size
        self.sampling_ratio = check_int(name, "sampling_ratio", sampling_ratio)
        self.canonical_scale = check_real(
            name, "canonical_scale", canonical_scale, low=0.0, low_inclusive=False
        )
        self.canonical_level = check_int(name, "canonical_level", canonical_level)

    def _maps(self, features: Any) -> list[Any]:
        if isinstance(features, Mapping):
            maps = [v for k, v in features.items() if self.featmap_names is None or k in self.featmap_names]
            if not maps:
                raise PoolingInputError(
                    f"{type(self).__name__}: none of featmap_names={self.featmap_names} is a key of the features "
                    f"({list(features)})."
                )
            return maps
        return list(features) if isinstance(features, (list, tuple)) else [features]

    def call(self, features: Any, boxes: Any, image_shapes: Any = None) -> Any:
        args, kwargs = self.call_args(features, boxes, image_shapes)
        return type(self).function(*args, **kwargs)

    def call_args(
        self, features: Any, boxes: Any, image_shapes: Any = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        maps = self._maps(features)
        if image_shapes is None:
            if self.image_size is None:
                raise PoolingInputError(
                    f"{type(self).__name__}: the level scales need the image size: pass image_size=(height, width) "
                    f"to the layer, or image_shapes=[(height, width), ...] (one per image) to the call."
                )
            n = maps[0].shape[0]
            image_shapes = [self.image_size] * n if isinstance(n, int) else self.image_size
        return (maps, boxes, image_shapes, self.output_size, self.sampling_ratio), {
            "canonical_scale": self.canonical_scale,
            "canonical_level": self.canonical_level,
            "data_format": self.data_format,
        }

    def compute_output_shape(
        self, features_shape: Any, boxes_shape: Any = None, image_shapes: Any = None
    ) -> tuple[Any, ...]:
        first = (
            features_shape
            if _is_shape(features_shape)
            else next(
                iter(features_shape.values() if isinstance(features_shape, Mapping) else features_shape)
            )
        )
        layout = layout_of(type(self).__name__, tuple(first), 2, self.data_format)
        c = first[layout.channel_axis]
        oh, ow = pooled_size(type(self).__name__, self.output_size)
        k = _num_boxes(boxes_shape)
        return (k, oh, ow, c) if self.data_format == "channels_last" else (k, c, oh, ow)

    def compute_output_spec(self, features: Any, boxes: Any, image_shapes: Any = None) -> Any:
        first = self._maps(features)[0]
        shape = self.compute_output_shape(tuple(first.shape), _shape_of(boxes))
        return keras.KerasTensor(shape, dtype=first.dtype)
