"""Backend-specific plumbing for the Keras tests: run a function and pull a gradient back through it.

poolkit.keras itself uses keras.ops only; the tests need each backend's own
autodiff (tf.GradientTape, jax.vjp, torch.autograd) to compare gradients
with the NumPy reference's vjp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

BACKEND = keras.backend.backend()
X64 = BACKEND != "jax" or keras.backend.standardize_dtype(ops.zeros((), "float64").dtype) == "float64"


def to_numpy(t: Any) -> Any:
    if isinstance(t, (list, tuple)):
        return type(t)(to_numpy(v) for v in t)
    if isinstance(t, keras.Variable):
        t = t.value
    if BACKEND == "torch" and hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return np.asarray(ops.convert_to_numpy(t))


def tensor(a: Any) -> Any:
    return ops.convert_to_tensor(a) if isinstance(a, np.ndarray) else a


def value_and_grads(
    fn: Callable[..., Any], arrays: list[np.ndarray], g: np.ndarray | None
) -> tuple[Any, list[Any]]:
    """``fn(*tensors)`` (its first output when it returns a tuple) and the vjp with ``g`` for every array."""

    def first(*ts: Any) -> Any:
        out = fn(*ts)
        return out[0] if isinstance(out, (tuple, list)) else out

    if g is None:
        return to_numpy(fn(*[tensor(a) for a in arrays])), []
    if BACKEND == "tensorflow":
        import tensorflow as tf

        ts = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            for t in ts:
                tape.watch(t)
            out = fn(*ts)
            y = out[0] if isinstance(out, (tuple, list)) else out
        grads = tape.gradient(y, ts, output_gradients=tf.constant(g.astype(y.dtype.as_numpy_dtype)))
        grads = [np.zeros_like(a) if gr is None else gr.numpy() for a, gr in zip(arrays, grads)]
        return to_numpy(out), grads
    if BACKEND == "jax":
        import jax

        def both(args: list[Any], g: Any) -> tuple[Any, list[Any]]:
            y, pull = jax.vjp(first, *args)
            return fn(*args), pull(g.astype(y.dtype))

        # one XLA compilation per test (forward and backward), as model.fit runs it
        out, grads = jax.jit(both)([jax.numpy.asarray(a) for a in arrays], jax.numpy.asarray(g))
        return to_numpy(out), [np.asarray(v) for v in grads]
    import torch

    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    y = out[0] if isinstance(out, (tuple, list)) else out
    y.backward(torch.as_tensor(g, dtype=y.dtype))
    grads = [np.zeros_like(a) if t.grad is None else t.grad.numpy() for a, t in zip(arrays, ts)]
    return to_numpy(out), grads
