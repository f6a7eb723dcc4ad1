"""Generic layer-test cases for the region layers: features and four constant boxes (one per target row)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from layer_cases import LayerCase

SHAPE = (2, 8, 7, 6)
# (batch_index, x1, y1, x2, y2): inside, partly outside, reversed, sub-pixel
BOXES = np.array(
    [[0, 0.0, 0.0, 6.0, 7.0], [1, -1.5, 0.5, 4.3, 8.7], [0, 3.5, 2.7, 1.75, 3.0], [1, 2.2, 3.1, 2.9, 3.6]]
)
IMAGE = (32, 28)  # scales 1/4 and 1/8 for the maps SHAPE and SHAPE / 2


@keras.saving.register_keras_serializable(package="poolkit_tests")
class ConstantBoxes(keras.layers.Layer):
    """The ``(K, 5)`` boxes above whatever the input, to wire a region layer into a one-input model."""

    def call(self, x: Any) -> Any:
        return ops.convert_to_tensor(BOXES, dtype="float32")

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor(BOXES.shape, dtype="float32")


def _boxes(x: np.ndarray) -> tuple[Any, ...]:
    return (x, BOXES)


def _graph(layer: Any, inp: Any) -> Any:
    return layer(inp, ConstantBoxes()(inp))


def _case(**kwargs: Any) -> LayerCase:
    return LayerCase(kwargs, SHAPE, extra=_boxes, graph=_graph)


def _pyramid(layer: Any, inp: Any) -> Any:
    from poolkit.keras import AvgPool2D

    return layer([inp, AvgPool2D(2)(inp)], ConstantBoxes()(inp))


CASES: dict[str, LayerCase] = {
    "RoIPool": _case(output_size=(2, 3), spatial_scale=0.8),
    "RoIAlign": _case(output_size=(2, 3), sampling_ratio=-1),
    "PSRoIPool": _case(output_size=(1, 3)),
    "PSRoIAlign": _case(output_size=(2, 3), sampling_ratio=2),
    "PreciseRoIPool": _case(output_size=2, spatial_scale=0.9),
    "MultiScaleRoIAlign": LayerCase(
        {
            "featmap_names": None,
            "output_size": 2,
            "canonical_scale": 16,
            "canonical_level": 3,
            "image_size": IMAGE,
        },
        SHAPE,
        extra=_boxes,
        graph=_pyramid,
    ),
}
