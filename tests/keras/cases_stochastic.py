"""Layer cases for the random pooling layers (stochastic, mixed, S3), for tests/keras/test_layers.py.

The generic tests compare inference with the NumPy reference (``training=False``,
or the learned ``alpha``) and run ``model.fit``, which samples.
"""

from __future__ import annotations

from layer_cases import SHAPES, LayerCase

CASES: dict[str, LayerCase] = {
    "StochasticPool1D": LayerCase({"pool_size": 3, "strides": 2, "padding": 1, "seed": 1}, SHAPES[1]),
    "StochasticPool2D": LayerCase({"pool_size": 2, "padding": "same", "seed": 2}, SHAPES[2]),
    "StochasticPool3D": LayerCase({"pool_size": 2, "ceil_mode": True}, SHAPES[3]),
    # learnable alpha in each mode (its weight must move in training); a random lambda is in test_stochastic
    "MixedPool1D": LayerCase({"pool_size": 2, "learnable": True, "alpha": 0.3}, SHAPES[1]),
    "MixedPool2D": LayerCase(
        {"pool_size": 3, "strides": 2, "padding": 1, "learnable": True, "mode": "channel"}, SHAPES[2]
    ),
    "MixedPool3D": LayerCase({"pool_size": 2, "learnable": True, "mode": "window"}, SHAPES[3]),
    "S3Pool1D": LayerCase({"pool_size": 2, "grid_size": 4, "seed": 3}, SHAPES[1]),
    "S3Pool2D": LayerCase({"pool_size": 3, "strides": 2, "grid_size": 2}, SHAPES[2]),
    "S3Pool3D": LayerCase({"seed": 4}, SHAPES[3]),
}
