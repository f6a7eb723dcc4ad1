"""The shared list of named pooling cases.

One list feeds the NumPy tests, and later the torch and Keras ones. Each
case is an input shape and window settings accepted by both poolkit and
PyTorch; ``kind`` says which values to fill the input with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    dilation: Any = 1
    ceil_mode: bool = False
    kind: str = "normal"  # normal | ties | negative | nan | distinct
    extra: dict = field(default_factory=dict)

    @property
    def nd(self) -> int:
        return len(self.shape) - 2

    def window(self) -> dict[str, Any]:
        return dict(
            kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, ceil_mode=self.ceil_mode
        )

    def input(self, rng: np.random.Generator, dtype: Any = np.float64) -> np.ndarray:
        if self.kind == "ties":
            x = rng.integers(-2, 3, size=self.shape).astype(dtype)
        elif self.kind == "negative":
            x = -rng.uniform(1.0, 5.0, size=self.shape).astype(dtype)
        elif self.kind == "nan":
            x = rng.standard_normal(self.shape).astype(dtype)
            flat = x.reshape(-1)
            flat[rng.choice(flat.size, size=max(1, flat.size // 7), replace=False)] = np.nan
        elif self.kind == "distinct":
            from helpers import distinct

            x = distinct(self.shape, rng).astype(dtype)
        else:
            x = rng.standard_normal(self.shape).astype(dtype)
        return x


def _p(case: Case, id: str) -> Any:
    return pytest.param(case, id=id)


# Sliding-window cases valid for both max and average pooling in PyTorch.
WINDOW_CASES = [
    _p(Case((2, 3, 8, 8), 2), "2d-k2"),
    _p(Case((2, 3, 9, 11), 3, 2, 1), "2d-k3s2p1-odd"),
    _p(Case((2, 2, 7, 7), 2, 3, ceil_mode=True), "2d-k2s3-ceil"),
    _p(Case((1, 2, 6, 7), 3, 2, 1, ceil_mode=True), "2d-pad-odd-ceil"),
    _p(Case((1, 2, 5, 5), 2, 2, 1, ceil_mode=True), "2d-ceil-last-window-dropped"),
    _p(Case((2, 3, 6, 6), 2, 1, kind="ties"), "2d-ties-overlap"),
    _p(Case((2, 3, 7, 7), 3, 2, 1, kind="ties"), "2d-ties-pad"),
    _p(Case((2, 2, 6, 6), 3, 1, 1, kind="negative"), "2d-all-negative-pad"),
    _p(Case((1, 2, 5, 6), (5, 6)), "2d-kernel-equals-input"),
    _p(Case((2, 2, 6, 9), (2, 3), (1, 2), (1, 0)), "2d-anisotropic"),
    _p(Case((2, 4, 9), 3, 2, 1), "1d-k3s2p1"),
    _p(Case((2, 3, 10), 4, 3, 2, ceil_mode=True), "1d-ceil"),
    _p(Case((1, 2, 5, 6, 7), 2), "3d-k2"),
    _p(Case((1, 2, 5, 6, 7), 3, 2, 1, ceil_mode=True), "3d-k3s2p1-ceil"),
    _p(Case((0, 3, 6, 6), 2), "2d-empty-batch"),
]

# Cases only max pooling supports in PyTorch (dilation, NaN).
MAX_ONLY_CASES = [
    _p(Case((2, 3, 9, 9), 3, 1, 1, dilation=2), "2d-dilation"),
    _p(Case((1, 2, 11, 10), 3, 2, 1, dilation=(3, 2), ceil_mode=True), "2d-dilation-ceil"),
    _p(Case((2, 3, 8, 8), 3, 2, 1, kind="nan"), "2d-nan"),
    _p(Case((2, 2, 12), 2, 1, 1, dilation=3), "1d-dilation"),
    _p(Case((1, 2, 2, 2), 2, 1, 1, dilation=3), "2d-window-without-valid-tap"),
]

ALL_MAX_CASES = WINDOW_CASES + MAX_ONLY_CASES

# Adaptive output sizes: (input shape, output size)
ADAPTIVE_CASES = [
    pytest.param((2, 3, 8, 8), 4, id="2d-divisible"),
    pytest.param((2, 3, 7, 10), (3, 4), id="2d-non-divisible"),
    pytest.param((1, 2, 5, 5), 3, id="2d-5to3"),
    pytest.param((1, 2, 3, 5), (5, 7), id="2d-upsample"),
    pytest.param((1, 2, 6, 9), (None, 4), id="2d-none-keeps-axis"),
    pytest.param((2, 3, 13), 5, id="1d-non-divisible"),
    pytest.param((1, 2, 5, 6, 7), (2, 3, 4), id="3d"),
    pytest.param((2, 3, 7, 7), 1, id="2d-global"),
]


def select(params: list[Any], exclude: tuple[str, ...] = (), where: Any = None) -> list[Any]:
    """Filter a list of ``pytest.param`` cases by id and by a predicate on the case."""
    return [p for p in params if p.id not in exclude and (where is None or where(p.values[0]))]


# Window settings for operators without a PyTorch counterpart: finite-difference
# and cross-checks run over these (small shapes: every test is float64 and exact).
RESEARCH_CASES = [
    pytest.param(Case((2, 3, 6, 6), 2), "channels_first", id="2d-k2"),
    pytest.param(Case((1, 2, 7, 6), 3, 2, 1), "channels_first", id="2d-k3s2p1"),
    pytest.param(Case((1, 2, 7, 7), 2, 3, ceil_mode=True), "channels_first", id="2d-ceil"),
    pytest.param(Case((1, 2, 6, 6), 3, 1, 1), "channels_first", id="2d-overlap"),
    pytest.param(Case((2, 2, 6, 5), (2, 3), (1, 2)), "channels_last", id="2d-aniso-channels-last"),
    pytest.param(Case((2, 3, 9), 3, 2, 1), "channels_first", id="1d"),
    pytest.param(Case((1, 2, 4, 5, 4), 2), "channels_first", id="3d"),
]


def mixed_boxes(rng, n_images, k, h, w, scale=1.0):
    """``(K, 5)`` boxes: random, plus zero-size, reversed, outside, huge, tiny, on halves, the whole map."""
    hh, ww = h / scale, w / scale
    xy = rng.uniform(-0.3, 1.1, (k, 2)) * [ww, hh]
    size = rng.choice([0.1, 0.5, 1.0, 2.5], (k, 1)) * rng.uniform(0, 1, (k, 2)) * [ww, hh]
    b = np.concatenate([xy, xy + size], axis=1)
    special = np.array(
        [
            [2.0, 1.0, 2.0, 4.0],  # zero width
            [1.0, 3.0, 5.0, 3.0],  # zero height
            [4.0, 1.0, 1.5, 3.5],  # reversed x
            [1.0, 4.0, 3.5, 0.5],  # reversed y
            [5.0, 4.0, 2.0, 1.0],  # reversed both
            [ww + 3, hh + 2, ww + 9, hh + 6],  # after the map
            [-9.0, -8.0, -3.0, -2.5],  # before the map
            [-3 * ww, -2 * hh, 4 * ww, 3 * hh],  # huge
            [1.3, 2.2, 1.5, 2.3],  # tiny (sub-pixel)
            [0.5, 1.5, 2.5, 3.5],  # halves: C's rounding
            [-1.5, 0.5, 4.3, hh + 0.7],  # partly outside
            [0.0, 0.0, ww - 1, hh - 1],  # the whole map
        ]
    )
    special[:10] /= scale
    m = min(k, len(special))
    b[:m] = special[:m]
    return np.concatenate([rng.integers(0, n_images, (k, 1)).astype(float), b], axis=1)


NAN, INF = float("nan"), float("inf")


def nonfinite_gem_input() -> np.ndarray:
    """GeM windows holding NaN, +inf and -inf (channels-last pairs of finite windows beside them)."""
    x = np.array([[[[NAN, 1.0], [2.0, 3.0]], [[INF, 1.0], [2.0, 3.0]], [[-INF, 1.0], [2.0, 3.0]]]])
    return np.concatenate([x, np.full_like(x, 2.0)], axis=-1)


def nonfinite_lip_inputs() -> tuple[np.ndarray, np.ndarray]:
    """LIP inputs and logits with NaN, +-inf and +-1e4 logits and NaN/inf values, one window each."""
    ones = np.ones((2, 2))
    x = np.stack(
        [ones * 2.0] * 5 + [[[NAN, 1.0], [2.0, 3.0]], [[INF, 1.0], [2.0, 3.0]], [[INF, 1.0], [2.0, 3.0]]]
    )
    logits = np.stack(
        [
            [[NAN, 0.0], [0.0, 0.0]],
            [[INF, 0.0], [0.0, 0.0]],
            [[-INF] * 2] * 2,
            [[-INF, 0.0], [0.0, 0.0]],
            [[1e4, -1e4], [0.0, 0.0]],
            ones * 0,
            ones * 0,
            [[-1e4, 0.0], [0.0, 0.0]],
        ]
    )
    x = np.concatenate([x[None], np.tile([[1.0, 2.0], [3.0, 4.0]], (1, 8, 1, 1))], axis=-1)
    logits = np.concatenate([logits[None], np.tile([[0.5, -1.0], [2.0, 0.0]], (1, 8, 1, 1))], axis=-1)
    return x, logits
