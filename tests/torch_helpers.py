"""Helpers for the torch backend tests: devices, conversions, running an op both ways."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import poolkit.torch.functional as TF
from poolkit import registry
from poolkit.ops import vjp

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def torch_ops() -> list[registry.OpInfo]:
    return [i for i in registry.operators() if "torch" in i.backends]


def to_torch(value: Any, device: str = "cpu", grad: bool = False, dtype: torch.dtype = torch.float64) -> Any:
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating):
            return torch.tensor(value, dtype=dtype, device=device, requires_grad=grad)
        return torch.tensor(value, device=device)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
        return type(value)(to_torch(v, device, grad, dtype) for v in value)
    return value


def leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in leaves(v)]
    return []


def example_call(info: registry.OpInfo, x: np.ndarray) -> tuple[tuple[Any, ...], dict[str, Any]]:
    arrays, settings = info.example(x)
    return arrays, settings


def run_numpy(info: registry.OpInfo, arrays: tuple[Any, ...], settings: dict[str, Any], g: np.ndarray | None):
    out, pullback = vjp(info.name, *arrays, **settings)
    y = out[0] if isinstance(out, tuple) else out
    grads = pullback(g) if g is not None else None
    return y, grads


def run_torch(
    info: registry.OpInfo,
    arrays: tuple[Any, ...],
    settings: dict[str, Any],
    g: np.ndarray | None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
):
    fn = getattr(TF, info.name)
    names = info.arrays
    targs = []
    for pos, a in enumerate(arrays):
        differentiable = pos < len(names) and names[pos] in info.differentiable
        targs.append(to_torch(a, device, grad=differentiable, dtype=dtype))
    tset = {}
    for k, v in settings.items():
        tset[k] = to_torch(v, device, grad=k in info.differentiable, dtype=dtype)
    out = fn(*targs, **tset)
    y = out[0] if isinstance(out, tuple) else out
    grads = {}
    if g is not None:
        y.backward(torch.as_tensor(g, dtype=y.dtype, device=y.device))
        for pos, t in enumerate(targs):
            if pos < len(names) and names[pos] in info.differentiable:
                grads[names[pos]] = _grad_of(t)
        for k, v in tset.items():
            if k in info.differentiable:
                grads[k] = _grad_of(v)
    return y, grads


def _grad_of(t: Any) -> Any:
    if isinstance(t, (list, tuple)):
        return [_grad_of(v) for v in t]
    if t.grad is None:
        return torch.zeros_like(t)
    return t.grad


def as_numpy(t: Any) -> Any:
    if isinstance(t, (list, tuple)):
        return [as_numpy(v) for v in t]
    return t.detach().cpu().to(torch.float64).numpy()
