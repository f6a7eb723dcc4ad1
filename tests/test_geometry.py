"""The one window geometry: rules, anchor cases, and a sweep against PyTorch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit.errors import PoolingConfigError, PoolingError, PoolingInputError
from poolkit.geometry import (
    adaptive_bins,
    adaptive_output_size,
    adaptive_window,
    fractional_output_size,
    unpool_output_size,
    window_spec,
)
from poolkit.ops import max_pool1d, max_pool2d


def _torch_shape(fn, x, **kw):
    try:
        return tuple(fn(x, **kw).shape[2:])
    except RuntimeError:
        return None


def _ours(size, **kw):
    try:
        return window_spec(size, **kw).output_size
    except PoolingError:
        return None


def test_sweep_1d_against_torch_max_pool1d():
    """Every in/k/s/p/d/ceil up to small sizes: same output size, same configurations raise."""
    n = disagreements = raised = 0
    for size, k, s, p, d, ceil in itertools.product(
        range(1, 9), range(1, 5), range(1, 4), range(0, 3), range(1, 4), (False, True)
    ):
        kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        x = torch.zeros(1, 1, size)
        plain = _torch_shape(F.max_pool1d, x, **kw)
        with_idx = _torch_shape(lambda t, **a: F.max_pool1d(t, return_indices=True, **a)[0], x, **kw)
        ours = _ours((size,), **kw)
        n += 1
        raised += ours is None
        if not (plain == with_idx == ours):
            disagreements += 1
    assert n == 1728
    assert 0 < raised < n  # the sweep covers both sides of every rule
    assert disagreements == 0


def test_sweep_2d_against_torch_max_pool2d():
    """Anisotropic 2-D configurations (a seeded sample of the full grid)."""
    rng = np.random.default_rng(7)
    grid = list(
        itertools.product(range(1, 7), range(1, 4), range(1, 4), range(0, 2), range(1, 3), (False, True))
    )
    n = disagreements = 0
    for _ in range(2500):
        a = grid[rng.integers(len(grid))]
        b = grid[rng.integers(len(grid))]
        ceil = bool(a[5])
        kw = dict(
            kernel_size=(a[1], b[1]),
            stride=(a[2], b[2]),
            padding=(a[3], b[3]),
            dilation=(a[4], b[4]),
            ceil_mode=ceil,
        )
        x = torch.zeros(1, 1, a[0], b[0])
        theirs = _torch_shape(F.max_pool2d, x, **kw)
        ours = _ours((a[0], b[0]), **kw)
        n += 1
        disagreements += theirs != ours
    assert n == 2500
    assert disagreements == 0


@pytest.mark.parametrize(
    "size,kw,expected",
    [
        pytest.param((6, 7), dict(kernel_size=1, stride=2, ceil_mode=True), (3, 4), id="pytorch-45357"),
        pytest.param((32, 32), dict(kernel_size=1, stride=2, ceil_mode=True), (16, 16), id="pytorch-57178"),
        pytest.param((5,), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True), (3,), id="burn-5791"),
        pytest.param(
            (75, 75), dict(kernel_size=2, stride=2, ceil_mode=True), (38, 38), id="ssd-vgg-maxpool3"
        ),
        pytest.param((75, 75), dict(kernel_size=2, stride=2), (37, 37), id="ssd-vgg-floor"),
        pytest.param((112, 112), dict(kernel_size=3, stride=2, padding=1), (56, 56), id="resnet-stem"),
    ],
)
def test_anchor_output_sizes(size, kw, expected):
    assert window_spec(size, **kw).output_size == expected


@pytest.mark.parametrize("size", [1, 2, 5, 7, 8, 13])
@pytest.mark.parametrize("k,s,d", [(1, 1, 1), (2, 2, 1), (3, 2, 1), (3, 1, 2), (5, 3, 1), (4, 4, 2)])
def test_same_padding_is_tensorflow_rule(size, k, s, d):
    spec = window_spec((size,), k, s, "same", d)
    span = d * (k - 1) + 1
    out = -(-size // s)
    total = max((out - 1) * s + span - size, 0)
    assert spec.output_size == (out,)
    assert spec.padding == ((total // 2, total - total // 2),)
    assert spec.padding_mode == "same"


def test_valid_padding_and_pairs():
    assert window_spec((7, 7), 3, 2, "valid").output_size == (3, 3)
    spec = window_spec((7, 7), 3, 2, ((0, 1), (1, 1)))
    assert spec.padding == ((0, 1), (1, 1))
    assert spec.output_size == (3, 4)  # (7 + 0 + 1 - 3) // 2 + 1 and (7 + 2 - 3) // 2 + 1
    # Per-axis mix of ints and pairs
    assert window_spec((7, 7), 3, 2, (1, (0, 1))).padding == ((1, 1), (0, 1))


def test_ceil_overhang_is_not_padding():
    spec = window_spec((5,), 2, 2, 0, ceil_mode=True)
    (ax,) = spec.axes
    assert spec.output_size == (3,)
    assert ax.overhang == 1
    assert ax.counts(True).tolist() == [2, 2, 1]
    assert ax.counts(False).tolist() == [2, 2, 1]
    padded = window_spec((5,), 3, 2, 1, ceil_mode=True).axes[0]
    assert padded.counts(True).tolist() == [3, 3, 3]  # explicit padding counts
    assert padded.counts(False).tolist() == [2, 3, 2]


def test_taps_cover_exactly_the_valid_positions():
    for size, k, s, p, d, ceil in itertools.product(
        range(1, 8), range(1, 4), range(1, 4), range(0, 2), range(1, 3), (False, True)
    ):
        try:
            ax = window_spec((size,), k, s, p, d, ceil).axes[0]
        except PoolingError:
            continue
        for t, (o_lo, o_hi, i_lo) in enumerate(ax.taps):
            coords = ax.starts + t * d
            valid = np.nonzero((coords >= 0) & (coords < size))[0]
            assert list(range(o_lo, o_hi)) == valid.tolist()
            if o_hi > o_lo:
                assert i_lo == coords[o_lo]


def test_adaptive_bins_and_window():
    starts, stops = adaptive_bins(5, 3)
    assert starts.tolist() == [0, 1, 3] and stops.tolist() == [2, 4, 5]
    starts, stops = adaptive_bins(2, 3)  # upsampling: overlapping one-sample bins
    assert starts.tolist() == [0, 0, 1] and stops.tolist() == [1, 2, 2]
    ax = adaptive_window(12, 4)
    assert ax is not None and (ax.kernel, ax.stride, ax.out) == (3, 3, 4)
    assert adaptive_window(5, 3) is None  # bins [0, 2), [1, 4), [3, 5): no common stride
    ax = adaptive_window(50, 7)  # bins [7i, 7i + 8): a plain window k=8, s=7
    assert ax is not None and (ax.kernel, ax.stride, ax.out) == (8, 7, 7)
    assert adaptive_output_size("op", (5, 6), (None, 2)) == (5, 2)


def test_fractional_and_unpool_sizes():
    assert fractional_output_size("op", (10, 9), (2, 2), None, 0.5) == (5, 4)
    assert fractional_output_size("op", (10, 9), (2, 2), 4, None) == (4, 4)
    assert unpool_output_size("op", (4, 4), (2, 2), (2, 2), (0, 0), None) == (8, 8)
    assert unpool_output_size("op", (4, 4), (2, 2), (2, 2), (0, 0), (1, 1, 9, 9)) == (9, 9)
    with pytest.raises(PoolingInputError, match="strictly between 6 and 10"):
        unpool_output_size("op", (4, 4), (2, 2), (2, 2), (0, 0), (10, 8))


def test_ops_read_the_spec():
    """The operators' output sizes are the geometry's, for every padding form."""
    x = np.zeros((1, 1, 9, 10))
    for kw in [
        dict(kernel_size=3, stride=2, padding="same"),
        dict(kernel_size=(2, 3), stride=2, padding=((0, 1), (1, 1))),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    ]:
        assert max_pool2d(x, **kw).shape[2:] == window_spec((9, 10), **kw).output_size
    assert max_pool1d(np.zeros((1, 1, 5)), 2, 2, 1, ceil_mode=True).shape == (1, 1, 3)


def test_spec_to_dict_roundtrip():
    d = window_spec((7, 8), 3, 2, "same").to_dict()
    assert d["output_size"] == [4, 4] and d["padding"] == [[1, 1], [0, 1]] and d["padding_mode"] == "same"


def test_spec_is_frozen():
    spec = window_spec((7,), 3)
    with pytest.raises(AttributeError):
        spec.axes = ()  # type: ignore[misc]


def test_same_rejects_ceil_mode():
    with pytest.raises(PoolingConfigError, match="ceil_mode=True cannot be combined with padding='same'"):
        window_spec((7,), 3, 2, "same", ceil_mode=True)
