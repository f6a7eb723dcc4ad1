"""The operator registry: every operator described once.

The CLI, the docs tables, the study and the parity tests enumerate this
registry instead of keeping their own lists. An entry records the operator's
name, its family, its parameters (read from the NumPy function's signature),
which arguments are differentiable or learnable, whether it is stochastic,
and which backends implement it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import PoolingConfigError

__all__ = ["BACKENDS", "FAMILIES", "OpInfo", "register", "get", "resolve", "operators"]

BACKENDS = ("numpy", "torch", "keras")
# Required positional arguments that are settings, not arrays.
_SETTINGS = ("kernel_size", "output_size", "num_heads", "norm_type")
FAMILIES = ("classic", "adaptive", "global", "research", "structured", "set")


@dataclass(frozen=True)
class OpInfo:
    """One registered operator.

    ``forward(*arrays, ndim=..., need_ctx=..., **settings)`` returns
    ``(outputs, ctx)``; ``backward(ctx, grad_output)`` returns a dict from each
    differentiable argument's name to its gradient.
    """

    name: str
    family: str
    function: Callable[..., Any]
    forward: Callable[..., tuple[Any, Any]]
    backward: Callable[[Any, Any], dict[str, Any]]
    ndims: tuple[int, ...] = (1, 2, 3)
    differentiable: tuple[str, ...] = ("x",)
    learnable: tuple[str, ...] = ()
    stochastic: bool = False
    backends: frozenset[str] = field(default_factory=lambda: frozenset({"numpy"}))
    aliases: tuple[str, ...] = ()
    example: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]] | None = None
    """``example(x)`` -> ``(arrays, settings)``: a valid call on a ``(N, C, H, W)`` float input
    (for rank-free operators, any ``(N, C, *spatial)``). Generic tests enumerate it."""

    @property
    def summary(self) -> str:
        """First docstring line, reST markup removed (``code``, :func:`name`)."""
        doc = inspect.getdoc(self.function) or ""
        line = doc.splitlines()[0] if doc else ""
        line = re.sub(r":\w+:`~?([^`]+)`", r"\1", line)
        return line.replace("``", "")

    @property
    def params(self) -> dict[str, Any]:
        """Keyword settings and their defaults (array arguments excluded)."""
        sig = inspect.signature(self.function)
        out = {}
        for p in sig.parameters.values():
            if p.default is inspect.Parameter.empty:
                continue
            out[p.name] = p.default
        return out

    @property
    def arrays(self) -> tuple[str, ...]:
        """Positional array arguments, in order."""
        sig = inspect.signature(self.function)
        return tuple(
            p.name
            for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind is p.POSITIONAL_OR_KEYWORD
            and p.name not in _SETTINGS
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "summary": self.summary,
            "ndims": list(self.ndims),
            "aliases": list(self.aliases),
            "arrays": list(self.arrays),
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "differentiable": list(self.differentiable),
            "learnable": list(self.learnable),
            "stochastic": self.stochastic,
            "backends": [b for b in BACKENDS if b in self.backends],
        }


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return repr(v)


_REGISTRY: dict[str, OpInfo] = {}
_ALIASES: dict[str, tuple[str, int | None]] = {}


def register(info: OpInfo) -> OpInfo:
    """Add an operator; its aliases ``name1d`` etc. fix the spatial rank."""
    if info.name in _REGISTRY:
        raise RuntimeError(f"operator {info.name!r} registered twice")
    unknown = set(info.backends) - set(BACKENDS)
    if unknown:
        raise RuntimeError(f"operator {info.name!r}: unknown backends {sorted(unknown)}")
    _REGISTRY[info.name] = info
    _ALIASES[info.name] = (info.name, None)
    for alias in info.aliases:
        nd = int(alias[-2]) if alias.endswith("d") and alias[-2].isdigit() else None
        _ALIASES[alias] = (info.name, nd)
    return info


def _load() -> None:
    from . import ops  # noqa: F401  (importing registers the operators)


def resolve(op: str | Callable[..., Any]) -> tuple[OpInfo, int | None]:
    """Look up an operator by name, alias or function; returns ``(info, ndim)``."""
    _load()
    if callable(op):
        name = getattr(op, "__name__", None)
    else:
        name = op
    if not isinstance(name, str) or name not in _ALIASES:
        known = ", ".join(sorted(_REGISTRY))
        raise PoolingConfigError(f"unknown operator {op!r}. Known operators: {known}.")
    base, nd = _ALIASES[name]
    return _REGISTRY[base], nd


def get(op: str | Callable[..., Any]) -> OpInfo:
    """The :class:`OpInfo` of an operator (name, alias or function)."""
    return resolve(op)[0]


def operators(family: str | None = None) -> list[OpInfo]:
    """All registered operators, in registration order."""
    _load()
    order = {name: n for n, name in enumerate(_REGISTRY)}
    infos = [i for i in _REGISTRY.values() if family is None or i.family == family]
    rank = {f: n for n, f in enumerate(FAMILIES)}
    return sorted(infos, key=lambda i: (rank.get(i.family, len(FAMILIES)), order[i.name]))
