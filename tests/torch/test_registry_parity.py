"""Every operator with a torch backend agrees with the NumPy reference, forward and backward.

Driven by the registry: an operator declaring ``"torch"`` must exist in
``poolkit.torch.functional`` with the NumPy signature; its example call runs
in both and every gradient is compared (float64, tight tolerances).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import poolkit.torch.functional as TF
from poolkit import registry

from torch_helpers import DEVICES, as_numpy, example_call, run_numpy, run_torch, torch_ops

OPS = [i.name for i in torch_ops()]


def test_declared_backends_match_the_torch_functions():
    for info in registry.operators():
        has = hasattr(TF, info.name)
        assert has == ("torch" in info.backends), info.name
        for alias in info.aliases:
            assert hasattr(TF, alias) == has, alias


@pytest.mark.parametrize("name", OPS)
def test_same_signature_as_numpy(name):
    info = registry.get(name)
    numpy_sig = inspect.signature(info.function)
    torch_sig = inspect.signature(getattr(TF, name))
    assert list(numpy_sig.parameters) == list(torch_sig.parameters)
    for p in numpy_sig.parameters.values():
        q = torch_sig.parameters[p.name]
        assert p.kind == q.kind, p.name
        if isinstance(p.default, (int, float, str, bool, type(None), tuple)):
            assert p.default == q.default, p.name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OPS)
def test_forward_and_gradients_match_numpy(name, device):
    info = registry.get(name)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 8, 7)) + np.arange(8 * 7).reshape(8, 7) * 1e-3  # no ties
    arrays, settings = example_call(info, x)
    y_np, _ = run_numpy(info, arrays, settings, None)
    g = rng.standard_normal(y_np.shape)
    y_np, g_np = run_numpy(info, arrays, settings, g)
    y_t, g_t = run_torch(info, arrays, settings, g, device)
    np.testing.assert_allclose(as_numpy(y_t), y_np, rtol=1e-10, atol=1e-12)
    for name_ in info.differentiable:
        if name_ not in g_np:
            continue
        ref = g_np[name_]
        got = as_numpy(g_t[name_])
        if isinstance(ref, list):
            for r, q in zip(ref, got):
                np.testing.assert_allclose(q, r, rtol=1e-9, atol=1e-11, err_msg=name_)
        else:
            np.testing.assert_allclose(
                np.reshape(got, np.shape(ref)), ref, rtol=1e-9, atol=1e-11, err_msg=name_
            )


@pytest.mark.parametrize("name", OPS)
def test_gradcheck(name):
    info = registry.get(name)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 6, 5)) + np.arange(30).reshape(6, 5) * 1e-2
    arrays, settings = example_call(info, x)
    fn = getattr(TF, name)
    names = info.arrays
    inputs, positions = [], []
    targs = []

    def convert(a):
        if isinstance(a, np.ndarray):
            return torch.tensor(a, dtype=torch.float64) if a.dtype.kind == "f" else torch.tensor(a)
        if isinstance(a, (list, tuple)) and a and all(isinstance(v, np.ndarray) for v in a):
            return [convert(v) for v in a]
        return a

    for pos, a in enumerate(arrays):
        t = convert(a)
        if pos < len(names) and names[pos] in info.differentiable:
            for leaf in t if isinstance(t, list) else [t]:
                if isinstance(leaf, torch.Tensor):
                    leaf.requires_grad_(True)
                    inputs.append(leaf)
                    positions.append(pos)
        targs.append(t)

    def call(*diff):
        args = [list(t) if isinstance(t, list) else t for t in targs]
        counts: dict[int, int] = {}
        for pos, t in zip(positions, diff):
            if isinstance(args[pos], list):
                k = counts.get(pos, 0)
                args[pos][k] = t
                counts[pos] = k + 1
            else:
                args[pos] = t
        out = fn(*args, **settings)
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(call, tuple(inputs), eps=1e-6, atol=1e-5)
