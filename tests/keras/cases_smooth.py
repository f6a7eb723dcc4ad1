"""Layer cases for GeM, global GeM, LSE, SoftPool and LIP, for tests/keras/test_layers.py.

One epoch of ``model.fit`` must move every weight: ``p`` and ``r`` get a
gradient wherever a window is not flat; LIP's logit network starts with a
zero 1x1 convolution (constant logits, average pooling), which the first
step moves, and its instance norm's scale and shift move from the second.
"""

from __future__ import annotations

from layer_cases import SHAPES, LayerCase

CASES: dict[str, LayerCase] = {
    "GeMPool1D": LayerCase({"pool_size": 3, "strides": 2, "padding": 1, "per_channel": True}, SHAPES[1]),
    "GeMPool2D": LayerCase({"pool_size": 2, "ceil_mode": True, "p": 2.5}, SHAPES[2]),
    "GeMPool3D": LayerCase({"pool_size": 2}, SHAPES[3]),
    "GlobalGeMPool1D": LayerCase({"keepdims": True}, SHAPES[1]),
    "GlobalGeMPool2D": LayerCase({"per_channel": True}, SHAPES[2]),
    "GlobalGeMPool3D": LayerCase({"p": 2.0}, SHAPES[3]),
    "LSEPool1D": LayerCase({"pool_size": 2, "r": 3.0}, SHAPES[1]),
    "LSEPool2D": LayerCase({"pool_size": 3, "strides": 2, "padding": "same", "per_channel": True}, SHAPES[2]),
    "LSEPool3D": LayerCase({"pool_size": 2, "strides": 1, "learnable": False}, SHAPES[3]),
    "SoftPool1D": LayerCase({"pool_size": 3, "strides": 2, "ceil_mode": True}, SHAPES[1]),
    "SoftPool2D": LayerCase({"pool_size": 2, "padding": 1}, SHAPES[2]),
    "SoftPool3D": LayerCase({"pool_size": 2}, SHAPES[3]),
    "LIPPool1D": LayerCase({"pool_size": 3, "strides": 2, "padding": 1}, SHAPES[1]),
    "LIPPool2D": LayerCase({"pool_size": 3, "strides": 2, "padding": 1}, SHAPES[2]),
    "LIPPool3D": LayerCase({"pool_size": 2}, SHAPES[3]),
}
