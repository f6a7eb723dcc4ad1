"""Layer cases for the learned pooling layers (gated, tree, DPP), for tests/keras/test_layers.py.

One epoch of ``model.fit`` must move every weight: the gate filters start at
0 (gradient ``s (1 - s) (max - avg) x``), the tree's leaves differ (noise, seeded:
the config round trip compares a layer with its clone).
"""

from __future__ import annotations

from layer_cases import SHAPES, LayerCase

CASES: dict[str, LayerCase] = {
    "GatedPool1D": LayerCase({"pool_size": 3, "strides": 2, "padding": 1, "per_channel": True}, SHAPES[1]),
    "GatedPool2D": LayerCase({"pool_size": 2, "ceil_mode": True}, SHAPES[2]),
    "GatedPool3D": LayerCase({"pool_size": 2}, SHAPES[3]),
    "TreePool1D": LayerCase({"pool_size": 2, "depth": 3, "seed": 1}, SHAPES[1]),
    "TreePool2D": LayerCase({"pool_size": 2, "padding": "same", "per_channel": True, "seed": 2}, SHAPES[2]),
    "TreePool3D": LayerCase({"pool_size": 2, "strides": 1, "seed": 3}, SHAPES[3]),
    "DPPPool1D": LayerCase({"pool_size": 3, "strides": 2, "asymmetric": True}, SHAPES[1]),
    "DPPPool2D": LayerCase({"pool_size": 2, "padding": 1}, SHAPES[2]),
    "DPPPool3D": LayerCase({"pool_size": 2, "per_channel": False}, SHAPES[3]),
}
