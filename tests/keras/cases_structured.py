"""Generic layer-test cases for the structured layers (pyramids, SPP/SPPF, masked, attention, segment)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from layer_cases import LayerCase

SHAPES = {1: (2, 9, 3), 2: (2, 8, 7, 3), 3: (2, 4, 6, 5, 2)}
SEGMENTS = 4  # = the training batch size of test_layers (one output row per target row)


@keras.saving.register_keras_serializable(package="poolkit_tests")
class PositiveMask(keras.layers.Layer):
    """A one-channel mask ``x[..., :1] > 0`` (channels_last), to wire MaskedPool into a model."""

    def call(self, x: Any) -> Any:
        return ops.cast(ops.greater(x[..., :1], 0), x.dtype)

    def compute_output_shape(self, shape: Any) -> Any:
        return (*shape[:-1], 1)


@keras.saving.register_keras_serializable(package="poolkit_tests")
class CyclicIds(keras.layers.Layer):
    """Segment ids ``arange(num_items) % 2``, to wire SegmentPool into a model (two segments of several
    items, so that the softmax temperature has a gradient; the others stay empty)."""

    def call(self, x: Any) -> Any:
        return ops.mod(ops.arange(ops.shape(x)[0], dtype="int32"), 2)

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor((x.shape[0],), dtype="int32")


def _mask(x: np.ndarray) -> tuple[Any, ...]:
    return (x, (x[..., :1] > 0).astype(x.dtype))


def _ids(x: np.ndarray) -> tuple[Any, ...]:
    return (x, np.arange(len(x), dtype=np.int32) % 2)


CASES: dict[str, LayerCase] = {
    "SpatialPyramidPool1D": LayerCase({"levels": (1, 2, 3)}, SHAPES[1]),
    "SpatialPyramidPool2D": LayerCase({"levels": (1, 2, 4), "mode": "avg"}, SHAPES[2]),
    "SpatialPyramidPool3D": LayerCase({"levels": (1, 2), "bins": "paper"}, SHAPES[3]),
    "SPP1D": LayerCase({"pool_sizes": (3, 5)}, SHAPES[1]),
    "SPP2D": LayerCase({"pool_sizes": (3, 5)}, SHAPES[2]),
    "SPP3D": LayerCase({"pool_sizes": (3,)}, SHAPES[3]),
    "SPPF1D": LayerCase({"pool_size": 3, "repeats": 2}, SHAPES[1]),
    "SPPF2D": LayerCase({"pool_size": 3}, SHAPES[2]),
    "SPPF3D": LayerCase({"pool_size": 3, "repeats": 2}, SHAPES[3]),
    "MaskedPool": LayerCase(
        {"pool_size": 2, "mode": "avg"},
        SHAPES[2],
        extra=_mask,
        graph=lambda layer, inp: layer(inp, PositiveMask()(inp)),
    ),
    "AttentionPool2D": LayerCase(
        {"spacial_dim": (3, 4), "embed_dim": 4, "num_heads": 2, "output_dim": 3, "seed": 7}, (2, 3, 4, 4)
    ),
    "SegmentPool": LayerCase(
        {"num_segments": SEGMENTS, "mode": "softmax", "learnable": True, "channels": 5},
        (2, 5),
        extra=_ids,
        graph=lambda layer, inp: layer(inp, CyclicIds()(inp)),
    ),
}
