"""Hypothesis: poolkit.torch against the NumPy reference on generated inputs and window settings.

Every torch operator runs its registry example on generated shapes, layouts and
values (forward and the gradient of every differentiable argument, float64);
the windowed operators also get generated kernel, stride, padding (ints, pairs,
"same"), dilation and ceil mode. Max-type results must be exact.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from poolkit import registry
from poolkit.errors import PoolingError
from poolkit.geometry import window_spec

from torch_helpers import as_numpy, run_numpy, run_torch, torch_ops

OPS = [i.name for i in torch_ops()]
EXACT = {
    "max_pool",
    "adaptive_max_pool",
    "global_max_pool",
    "fractional_max_pool",
    "max_unpool",
    "median_pool",
}


def _check(info: registry.OpInfo, arrays, kw, seed: int) -> None:
    try:
        y_np, _ = run_numpy(info, arrays, kw, None)
    except PoolingError:
        assume(False)  # a configuration the operator refuses (checked by the error tests)
    g = np.random.default_rng(seed).standard_normal(np.shape(y_np))
    y_np, g_np = run_numpy(info, arrays, kw, g)
    y_t, g_t = run_torch(info, arrays, kw, g)
    exact = info.name in EXACT
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(as_numpy(y_t), y_np, **tol)
    for name, ref in g_np.items():
        got = as_numpy(g_t[name])
        for r, q in zip(ref, got) if isinstance(ref, list) else [(ref, got)]:
            np.testing.assert_allclose(np.reshape(q, np.shape(r)), r, rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("name", OPS)
@settings(max_examples=12)
@given(
    n=st.integers(1, 2),
    h=st.integers(6, 11),
    w=st.integers(6, 11),
    seed=st.integers(0, 2**31 - 1),
    channels_last=st.booleans(),
)
def test_registry_example_on_generated_inputs(name, n, h, w, seed, channels_last):
    info = registry.get(name)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, h, w)) + np.arange(h * w).reshape(h, w) * 1e-3  # no exact ties
    arrays, kw = info.example(x)
    if (
        channels_last
        and "data_format" in inspect.signature(info.function).parameters
        and isinstance(arrays[0], np.ndarray)
        and arrays[0].ndim == 4
    ):
        arrays = (np.moveaxis(arrays[0], 1, -1).copy(), *arrays[1:])
        kw = {**kw, "data_format": "channels_last"}
        if info.name == "max_unpool":  # its indices follow the layout of the pooled map
            arrays = (arrays[0], np.moveaxis(arrays[1], 1, -1).copy(), *arrays[2:])
    _check(info, arrays, kw, seed)


# Windowed operators whose example arrays do not depend on the window, and what they accept.
WINDOWED = {
    "max_pool": {"dilation": True, "ceil": True},
    "avg_pool": {"dilation": True, "ceil": True},
    "lp_pool": {"dilation": True, "ceil": True},
    "gem_pool": {"dilation": False, "ceil": True},
    "lse_pool": {"dilation": False, "ceil": True},
    "soft_pool": {"dilation": False, "ceil": True},
    "dpp_pool": {"dilation": False, "ceil": True},
    "lip_pool": {"dilation": False, "ceil": True},
    "median_pool": {"dilation": False, "ceil": True},
}


@st.composite
def windows(draw, dilation: bool, ceil: bool):
    nd = draw(st.integers(1, 3))
    size = tuple(draw(st.integers(2, 9 if nd < 3 else 5)) for _ in range(nd))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    kind = draw(st.sampled_from(["int", "pairs", "same", "valid"]))
    if kind == "int":
        padding = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    elif kind == "pairs":
        padding = tuple(
            (draw(st.integers(0, (kk - 1) // 2 + 1)), draw(st.integers(0, (kk - 1) // 2 + 1))) for kk in k
        )
    else:
        padding = kind
    kw = dict(kernel_size=k, stride=s, padding=padding)
    if dilation:
        kw["dilation"] = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    if ceil:
        kw["ceil_mode"] = draw(st.booleans())
    return nd, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size), kw, draw(st.integers(0, 2**31 - 1))


def _windowed_example(name: str, x: np.ndarray, kw: dict):
    """The registry example's arrays for ``x`` with the generated window settings."""
    arrays, base = registry.get(name).example(x)
    base = {k: v for k, v in base.items() if k not in ("kernel_size", "stride", "padding", "dilation")}
    return arrays, {**base, **kw}


@pytest.mark.parametrize("name", list(WINDOWED))
@settings(max_examples=25)
@given(data=st.data())
def test_windowed_operator_on_generated_windows(name, data):
    nd, shape, kw, seed = data.draw(windows(**WINDOWED[name]))
    try:
        window_spec(
            shape[2:],
            kw["kernel_size"],
            kw["stride"],
            kw["padding"],
            kw.get("dilation", 1),
            kw.get("ceil_mode", False),
        )
    except PoolingError:
        assume(False)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) + np.arange(np.prod(shape[2:])).reshape(shape[2:]) * 1e-3
    arrays, kw = _windowed_example(name, x, kw)
    _check(registry.get(f"{name}"), arrays, kw, seed)
