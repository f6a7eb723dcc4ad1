"""Test helpers: finite differences, distinct-valued inputs, torch bridges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from poolkit.ops import vjp


def distinct(shape: tuple[int, ...], rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Float64 values with no ties and gaps >= 1e-3 (safe for finite differences of max)."""
    n = int(np.prod(shape))
    vals = (rng.permutation(n) - n / 2) * 1e-2 * scale + rng.uniform(-1e-4, 1e-4, n)
    return vals.reshape(shape)


def numeric_grad(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, g: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central finite-difference vector-Jacobian product ``g . df/dx`` in float64."""
    x = np.array(x, dtype=np.float64)
    out = np.zeros_like(x)
    flat = x.reshape(-1)
    gout = out.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = np.sum(np.asarray(f(x), dtype=np.float64) * g)
        flat[i] = old - eps
        fm = np.sum(np.asarray(f(x), dtype=np.float64) * g)
        flat[i] = old
        gout[i] = (fp - fm) / (2 * eps)
    return out


def check_fd(
    op: str, x: np.ndarray, rng: np.random.Generator, rtol: float = 1e-6, atol: float = 1e-7, **kw: Any
) -> None:
    """Assert the analytic ``vjp`` matches finite differences for ``x``."""
    y, pullback = vjp(op, x, **kw)
    y = y[0] if isinstance(y, tuple) else y
    g = rng.standard_normal(y.shape)
    analytic = pullback(g)["x"]

    def f(v: np.ndarray) -> np.ndarray:
        out = vjp(op, v, **kw)[0]
        return out[0] if isinstance(out, tuple) else out

    numeric = numeric_grad(f, x, g)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def torch_vjp(
    fn: Callable[..., Any], x: np.ndarray, g: np.ndarray | None, *args: Any, **kw: Any
) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """Run a torch function on ``x`` (float64 or given dtype) and return output, input grad, extras."""
    import torch

    xt = torch.tensor(x, requires_grad=g is not None)
    out = fn(xt, *args, **kw)
    extra = None
    if isinstance(out, tuple):
        out, extra = out
        extra = extra.numpy()
    grad = None
    if g is not None:
        out.backward(torch.tensor(g, dtype=out.dtype))
        grad = xt.grad.numpy()
    return out.detach().numpy(), grad, extra


def check_grads(
    op: str,
    arrays: dict[str, np.ndarray],
    rng: np.random.Generator,
    wrt: tuple[str, ...] | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-7,
    eps: float = 1e-6,
    *,
    kwarrays: dict[str, np.ndarray] | None = None,
    settings: dict[str, Any] | None = None,
    **more_settings: Any,
) -> dict[str, np.ndarray]:
    """Finite-difference check of ``vjp(op, *arrays.values(), **kwarrays, **settings)``.

    ``arrays`` are the positional array arguments in order, ``kwarrays``
    differentiable arrays passed by keyword (e.g. ``alpha``); ``wrt``
    defaults to every floating one of both. Settings go in ``settings`` (use
    it for names that clash with this function's, such as ``rng``) or as
    keywords. Returns the analytic gradients.
    """
    settings = {**(settings or {}), **more_settings}
    kwarrays = {k: np.array(v, dtype=np.float64) for k, v in (kwarrays or {}).items()}

    def as_value(v: Any) -> Any:
        return np.array(v, dtype=np.float64) if np.issubdtype(np.asarray(v).dtype, np.floating) else v

    names = list(arrays)
    values = [as_value(arrays[n]) for n in names]

    def call(pos_values: list[Any], kw_values: dict[str, Any]) -> Any:
        return vjp(op, *pos_values, **kw_values, **settings)

    y, pullback = call(values, kwarrays)
    y = y[0] if isinstance(y, tuple) else y
    g = rng.standard_normal(np.shape(y))
    analytic = pullback(g)
    floating = [n for n in names if np.issubdtype(np.asarray(arrays[n]).dtype, np.floating)] + list(kwarrays)
    for name in wrt or tuple(floating):
        if name in kwarrays:

            def f(v: np.ndarray, name: str = name) -> np.ndarray:
                out = call(values, {**kwarrays, name: v})[0]
                return out[0] if isinstance(out, tuple) else out

            start = kwarrays[name]
        else:
            pos = names.index(name)

            def f(v: np.ndarray, pos: int = pos) -> np.ndarray:
                args = list(values)
                args[pos] = v
                out = call(args, kwarrays)[0]
                return out[0] if isinstance(out, tuple) else out

            start = values[pos]
        numeric = numeric_grad(f, start, g, eps)
        assert name in analytic, f"{op}: pullback returned no gradient for {name!r}"
        np.testing.assert_allclose(
            np.asarray(analytic[name], dtype=np.float64).reshape(numeric.shape),
            numeric,
            rtol=rtol,
            atol=atol,
            err_msg=f"{op}: gradient of {name!r}",
        )
    return analytic


def traced_peak(op: str, *arrays: Any, grad: np.ndarray, **settings: Any) -> tuple[int, Any]:
    """Peak bytes NumPy allocates in ``vjp(op, *arrays, **settings)`` plus its pullback.

    ``grad`` (the caller's memory) must be allocated before. Returns the
    peak and the forward output.
    """
    import tracemalloc

    tracemalloc.start()
    try:
        out, pullback = vjp(op, *arrays, **settings)
        pullback(grad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, out


def chisquare_p(observed: Any, expected: Any = None) -> float:
    """p-value of Pearson's chi-square test (scipy.stats.chisquare without importing scipy.stats)."""
    from scipy.special import chdtrc

    observed = np.asarray(observed, dtype=float)
    expected = np.full(observed.shape, observed.mean()) if expected is None else np.asarray(expected, float)
    return float(chdtrc(observed.size - 1, ((observed - expected) ** 2 / expected).sum()))
