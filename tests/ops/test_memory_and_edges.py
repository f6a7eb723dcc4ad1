"""No kernel-volume copies: peak extra memory, empty batches, operator-wide edges."""

from __future__ import annotations

import numpy as np
import pytest

from poolkit import registry
from poolkit.ops import vjp

from helpers import traced_peak

CALLS = [
    pytest.param("max_pool2d", dict(kernel_size=3, stride=2, padding=1), id="max-resnet-stem"),
    pytest.param("max_pool2d", dict(kernel_size=3, stride=1, padding=1), id="max-stride1"),
    pytest.param("avg_pool2d", dict(kernel_size=3, stride=1, padding=1), id="avg-stride1"),
    pytest.param("lp_pool2d", dict(norm_type=3.0, kernel_size=3, stride=1), id="lp-stride1"),
    pytest.param("adaptive_max_pool2d", dict(output_size=7), id="adaptive-max"),
    pytest.param("adaptive_avg_pool2d", dict(output_size=(5, 9)), id="adaptive-avg"),
    pytest.param("fractional_max_pool2d", dict(kernel_size=2, output_ratio=0.6, rng=0), id="fractional"),
]


@pytest.mark.parametrize("op,kw", CALLS)
def test_peak_memory_within_three_times_input_plus_output(op, kw):
    _check_memory(op, lambda x: ((x,), kw))


# Attention forms token matrices (a transposed copy of x and its projections) for its
# matrix products; that is not a sliding-window pass, so it gets more room.
ALLOWANCE = {"attention_pool": 6.0}


@pytest.mark.parametrize("name", [i.name for i in registry.operators()])
def test_every_operator_stays_within_three_times_input_plus_output(name):
    _check_memory(name, registry.get(name).example, ALLOWANCE.get(name, 3.0))


def _check_memory(op, example, bound=3.0):
    # 16 MiB: large enough that the engine works block by block, as it does on real tensors
    x = np.random.default_rng(0).standard_normal((16, 16, 128, 128), dtype=np.float32)
    arrays, kw = example(x)
    out = vjp(op, *arrays, **kw)[0]
    y = out[0] if isinstance(out, tuple) else out
    g = np.ones_like(y)  # the upstream gradient is the caller's memory
    flat = [b for a in arrays for b in (a if isinstance(a, (list, tuple)) else [a])]
    io = sum(a.nbytes for a in flat if isinstance(a, np.ndarray)) + y.nbytes
    peak, _ = traced_peak(op, *arrays, grad=g, **kw)
    # A kernel-volume copy (sliding_window_view(...).reshape) would be 9x the input here.
    assert peak <= bound * io, f"{op}: peak {peak / io:.2f} x (inputs + output)"


@pytest.mark.parametrize("op,kw", CALLS)
def test_empty_batch(op, kw):
    x = np.zeros((0, 3, 12, 12))
    y, pullback = vjp(op, x, **kw)
    assert y.shape[0] == 0
    assert pullback(np.zeros(y.shape))["x"].shape == x.shape


@pytest.mark.parametrize("op,kw", CALLS)
def test_input_is_never_modified(op, kw):
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12))
    x0 = x.copy()
    y, pullback = vjp(op, x, **kw)
    g = np.ones_like(y)
    g0 = g.copy()
    pullback(g)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("op,kw", CALLS)
def test_float16_in_float16_out(op, kw):
    x = np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float16)
    y, pullback = vjp(op, x, **kw)
    assert y.dtype == np.float16
    assert pullback(np.ones_like(y))["x"].dtype == np.float16
    y32 = vjp(op, x.astype(np.float32), **kw)[0]
    np.testing.assert_allclose(y.astype(np.float32), y32, rtol=2e-3, atol=2e-3)


def test_threads_give_identical_results():
    from poolkit.ops import get_num_threads, set_num_threads

    x = np.random.default_rng(3).standard_normal((8, 32, 64, 64)).astype(np.float32)
    x[0, 0, 5, 5] = np.nan
    calls = [
        ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
        ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1)),
        ("adaptive_max_pool2d", dict(output_size=5)),
    ]
    ref = []
    for op, kw in calls:
        y, pb = vjp(op, x, **kw)
        ref.append((y, pb(np.ones_like(y[0] if isinstance(y, tuple) else y))["x"]))
    assert get_num_threads() == 1
    try:
        set_num_threads(2)
        for (op, kw), (y0, g0) in zip(calls, ref):
            y, pb = vjp(op, x, **kw)
            np.testing.assert_array_equal(
                y[0] if isinstance(y, tuple) else y, y0[0] if isinstance(y0, tuple) else y0
            )
            np.testing.assert_array_equal(pb(np.ones_like(y[0] if isinstance(y, tuple) else y))["x"], g0)
    finally:
        set_num_threads(1)
