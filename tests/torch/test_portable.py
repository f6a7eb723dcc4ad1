"""Portable paths: the pure-torch formulations taken on accelerators under deterministic mode.

``avg_pool3d``, adaptive average/max pooling, fractional max pooling and
reflection/replication padding have no deterministic CUDA backward, so with ``torch.use_deterministic_algorithms(True)``
on an accelerator poolkit takes strided-view / bin-gather paths instead.
``force_portable()`` switches those paths on anywhere, so they are checked here on
every device against the native path (values, indices and gradients).
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch

import poolkit.torch.functional as TF
from poolkit.torch._core import finite_bound, force_portable, host_empty, host_ufunc, host_zeros, portable

from torch_helpers import DEVICES

CALLS = {
    "avg_pool3d": lambda x: TF.avg_pool3d(x, 3, 2, 1),
    "avg_pool3d-ceil-exclude": lambda x: TF.avg_pool3d(x, 2, 2, ceil_mode=True, count_include_pad=False),
    "avg_pool3d-same": lambda x: TF.avg_pool3d(x, 3, 2, padding="same"),
    "lp_pool3d": lambda x: TF.lp_pool3d(x, 2.0, 2, 2),
    "gem_pool3d": lambda x: TF.gem_pool3d(x.abs() + 0.1, 2, p=3.0),
    "adaptive_avg_pool1d": lambda x: TF.adaptive_avg_pool1d(x.flatten(2), 5),
    "adaptive_avg_pool2d": lambda x: TF.adaptive_avg_pool2d(x.flatten(3), (3, 4)),
    "adaptive_avg_pool3d": lambda x: TF.adaptive_avg_pool3d(x, (2, 3, 4)),
    "adaptive_max_pool1d": lambda x: TF.adaptive_max_pool1d(x.flatten(2), 5, return_indices=True),
    "adaptive_max_pool2d": lambda x: TF.adaptive_max_pool2d(x.flatten(3), (3, 4), return_indices=True),
    "adaptive_max_pool3d": lambda x: TF.adaptive_max_pool3d(x, (2, 3, 4), return_indices=True),
    "global_max_pool": lambda x: TF.global_max_pool(x),
    "blur_pool2d-reflect": lambda x: TF.blur_pool2d(x.flatten(3), 4, 2),
    "blur_pool3d-replicate": lambda x: TF.blur_pool3d(x, 3, 2, "replicate"),
    "max_blur_pool1d-reflect": lambda x: TF.max_blur_pool1d(x.flatten(2), 2, 3, 2),
    "fractional_max_pool2d": lambda x: TF.fractional_max_pool2d(
        x.flatten(3),
        2,
        output_size=(3, 4),
        samples=torch.full((2, 3, 2), 0.3, dtype=x.dtype, device=x.device),
    ),
    "fractional_max_pool3d": lambda x: TF.fractional_max_pool3d(
        x, 2, output_size=(2, 3, 3), samples=torch.full((2, 3, 3), 0.7, dtype=x.dtype, device=x.device)
    ),
}


NONDETERMINISTIC_ON_CUDA = (
    "AvgPool3DBackward",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "FractionalMaxPool",
    "ReflectionPad",
    "ReplicationPad",
)


def _graph_nodes(t: torch.Tensor) -> set[str]:
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node.name() in seen:
            continue
        seen.add(node.name())
        todo += [f for f, _ in node.next_functions]
    return seen


def _run(fn, x):
    out = fn(x)
    values, indices = out if isinstance(out, tuple) else (out, None)
    g = torch.linspace(-1.0, 1.0, values.numel(), dtype=x.dtype, device=x.device).reshape(values.shape)
    (grad,) = torch.autograd.grad(values, x, g)
    return values, indices, grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CALLS))
def test_portable_path_equals_native(name, device):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 7, 8, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    native = _run(CALLS[name], x)
    with force_portable():
        assert portable(x)
        port = _run(CALLS[name], x)
        out = CALLS[name](x)
    nodes = _graph_nodes(out[0] if isinstance(out, tuple) else out)
    assert not [n for n in nodes if n.startswith(NONDETERMINISTIC_ON_CUDA)], nodes
    for a, b in zip(native, port):
        if a is None:
            assert b is None
        elif a.dtype.is_floating_point:
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CALLS))
def test_deterministic_mode_runs(name, device):
    x = torch.randn(2, 3, 5, 7, 8, dtype=torch.float32, device=device, requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _run(CALLS[name], x)
        second = _run(CALLS[name], x)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first[2], second[2])


def test_portable_is_off_on_cpu_and_without_grad():
    x = torch.ones(1, 1, 4, 4, requires_grad=True)
    assert not portable(x)
    with force_portable():
        assert portable(x)
    assert not portable(x)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]
)
@pytest.mark.parametrize("numel", [10, 3 << 20])
def test_host_buffers_are_ordinary_cpu_tensors(dtype, numel):
    """The CPU paths' large buffers live in NumPy's (huge-page) memory; small ones and dtypes NumPy
    lacks in PyTorch's. Either way: contiguous, writable, the asked shape and dtype, zeroed on request."""
    shape = (2, numel // 2)
    t = host_zeros(shape, dtype)
    assert t.shape == shape and t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()
    assert not t.any()
    e = host_empty(shape, dtype)
    e.fill_(1)
    assert e.shape == shape and e.dtype == dtype and bool(e.all())
    acc = torch.zeros(shape, dtype=dtype)
    acc += e  # usable as an accumulated gradient
    assert bool(acc.all())


@pytest.mark.parametrize("name", ["log", "exp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_host_ufunc_takes_numpy_on_one_thread_and_agrees_with_torch(name, dtype, threads):
    """NumPy's loop for float32/float64 on one PyTorch thread (in place too), PyTorch's otherwise;
    the results agree to a few units in the last place."""
    t = (torch.rand(3, 1000, dtype=torch.float64) * 8 - 4).to(dtype)
    t = t.abs() + 0.01 if name == "log" else t
    want = getattr(torch, name)(t)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with mock.patch.object(np, name, wraps=getattr(np, name)) as spy:
            out = host_ufunc(name, t, torch.empty_like(t))
            c = t.clone()
            inplace = host_ufunc(name, c, c)
    finally:
        torch.set_num_threads(previous)
    assert spy.call_count == (2 if threads == 1 and dtype != torch.bfloat16 else 0)
    tol = {torch.float32: 4e-7, torch.float64: 1e-15, torch.bfloat16: 0.0}[dtype]
    torch.testing.assert_close(out, want, rtol=tol, atol=0)
    torch.testing.assert_close(inplace, want, rtol=tol, atol=0)


def test_finite_bound_is_the_largest_magnitude_or_none():
    assert finite_bound(torch.tensor([[-3.0, 2.0], [1.0, 0.5]])) == 3.0
    assert finite_bound(torch.tensor([1.0, 7.5], requires_grad=True)) == 7.5
    assert finite_bound(torch.empty(0)) == 0.0
    for bad in (math.inf, -math.inf, math.nan):
        assert finite_bound(torch.tensor([1.0, bad])) is None
