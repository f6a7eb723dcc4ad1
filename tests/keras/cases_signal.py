"""Layer cases for blur, max-blur, spectral, wavelet and median pooling, for tests/keras/test_layers.py."""

from __future__ import annotations

from layer_cases import SHAPES, LayerCase

CASES: dict[str, LayerCase] = {
    "BlurPool1D": LayerCase({"filt_size": 4, "pad_mode": "replicate"}, SHAPES[1]),
    "BlurPool2D": LayerCase({"filt_size": 3, "strides": 2}, SHAPES[2]),
    "BlurPool3D": LayerCase({"filt_size": 2, "pad_mode": "constant", "padding": "same"}, SHAPES[3]),
    "MaxBlurPool1D": LayerCase(
        {"pool_size": 3, "strides": 2, "pad_mode": "constant", "padding": 1}, SHAPES[1]
    ),
    "MaxBlurPool2D": LayerCase({"pool_size": 2}, SHAPES[2]),
    "MaxBlurPool3D": LayerCase({"pool_size": 2, "filt_size": 2}, SHAPES[3]),
    "SpectralPool1D": LayerCase({"output_size": 4}, SHAPES[1]),
    "SpectralPool2D": LayerCase({"output_size": (4, 3)}, SHAPES[2]),
    "SpectralPool3D": LayerCase({"output_size": (2, None, 3)}, SHAPES[3]),
    "WaveletPool1D": LayerCase({}, SHAPES[1]),
    "WaveletPool2D": LayerCase({}, SHAPES[2]),
    "WaveletPool3D": LayerCase({}, SHAPES[3]),
    "MedianPool1D": LayerCase({"pool_size": 3, "strides": 2, "padding": 1}, SHAPES[1]),
    "MedianPool2D": LayerCase({"pool_size": 3, "strides": 1, "padding": 1}, SHAPES[2]),
    "MedianPool3D": LayerCase({"pool_size": 2, "ceil_mode": True}, SHAPES[3]),
}
