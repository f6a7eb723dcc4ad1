"""Plumbing shared by the operator modules: rank-fixed aliases and ``vjp``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from ..registry import OpInfo, register, resolve

__all__ = ["ranked", "define", "vjp"]


def ranked(public: Callable[..., Any], impl: Callable[..., tuple[Any, Any]], nd: int) -> Callable[..., Any]:
    """``max_pool2d`` from ``max_pool``: the same signature with the spatial rank fixed."""
    name = f"{public.__name__}{nd}d"

    @functools.wraps(public)
    def alias(*args: Any, **kwargs: Any) -> Any:
        return impl(*args, ndim=nd, op=name, **kwargs)[0]

    alias.__name__ = alias.__qualname__ = name
    alias.__signature__ = inspect.signature(public)  # type: ignore[attr-defined]
    summary = (inspect.getdoc(public) or "").splitlines()[0].rstrip(".")
    alias.__doc__ = (
        f"{summary}, for {nd}-D spatial inputs.\n\nSee :func:`{public.__module__}.{public.__name__}`."
    )
    del alias.__wrapped__
    return alias


def define(
    public: Callable[..., Any],
    impl: Callable[..., tuple[Any, Any]],
    backward: Callable[[Any, Any], dict[str, Any]],
    *,
    family: str,
    ndims: tuple[int, ...] = (1, 2, 3),
    **meta: Any,
) -> dict[str, Callable[..., Any]]:
    """Register an operator and return its rank-fixed aliases by name."""
    aliases = {f"{public.__name__}{nd}d": ranked(public, impl, nd) for nd in ndims}
    if "backends" in meta:
        meta["backends"] = frozenset(meta["backends"])
    register(
        OpInfo(
            name=public.__name__,
            family=family,
            function=public,
            forward=impl,
            backward=backward,
            ndims=ndims,
            aliases=tuple(aliases),
            **meta,
        )
    )
    return aliases


def vjp(
    op: str | Callable[..., Any], *arrays: Any, **settings: Any
) -> tuple[Any, Callable[[Any], dict[str, Any]]]:
    """Run an operator and return ``(outputs, pullback)``.

    ``pullback(grad_output)`` returns a dict from each differentiable
    argument's name (``"x"``, and e.g. ``"p"`` or ``"logits"`` for operators
    with more) to its gradient. For operators called with
    ``return_indices=True`` the gradient is that of the pooled values.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops import vjp
    >>> x = np.array([[[1.0, 3.0, 2.0, 0.0]]])
    >>> y, pullback = vjp("max_pool1d", x, kernel_size=2)
    >>> y
    array([[[3., 2.]]])
    >>> pullback(np.ones_like(y))["x"]
    array([[[0., 1., 1., 0.]]])
    """
    info, nd = resolve(op)
    name = op if isinstance(op, str) else getattr(op, "__name__", info.name)
    outputs, ctx = info.forward(*arrays, ndim=nd, need_ctx=True, op=name, **settings)

    def pullback(grad_output: Any) -> dict[str, Any]:
        return info.backward(ctx, grad_output)

    return outputs, pullback
