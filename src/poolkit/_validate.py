"""Checks of user-supplied hyper-parameters, shared by every operator.

Each check raises :class:`~poolkit.errors.PoolingConfigError` with a message
that names the operator, the argument, the value, the rule and a fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from .errors import PoolingConfigError

__all__ = [
    "is_int",
    "check_int",
    "int_tuple",
    "check_bool",
    "check_choice",
    "check_real",
]


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools (a bool is not a size)."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _describe(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f"{value!r} (a bool)"
    if isinstance(value, Real) and not is_int(value):
        return f"{value!r} (a {type(value).__name__})"
    return repr(value)


def check_int(op: str, name: str, value: Any, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name`` and the rule."""
    if not is_int(value):
        hint = ""
        if isinstance(value, Real) and not isinstance(value, (bool, np.bool_)):
            if not math.isfinite(float(value)):
                raise PoolingConfigError(
                    f"{op}: {name} must be a finite integer, got {value!r}. "
                    f"Pass a whole number such as {name}=2."
                )
            if float(value).is_integer():
                hint = f" Pass {name}={int(value)}."
        elif isinstance(value, (bool, np.bool_)):
            hint = f" A bool is not a size; pass an int such as {name}={max(minimum or 0, 1)}."
        raise PoolingConfigError(
            f"{op}: {name} must be an integer, got {_describe(value)}.{hint or ' Pass a whole number.'}"
        )
    value = int(value)
    if minimum is not None and value < minimum:
        raise PoolingConfigError(
            f"{op}: {name} must be >= {minimum}, got {value}. Pass {name}={minimum} or larger."
        )
    return value


def int_tuple(op: str, name: str, value: Any, nd: int, minimum: int | None = None) -> tuple[int, ...]:
    """Broadcast an int or validate a length-``nd`` sequence of ints."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 1 and nd != 1:
            value = tuple(value) * nd
        if len(value) != nd:
            raise PoolingConfigError(
                f"{op}: {name} must be an int or a sequence of {nd} ints (one per spatial axis), "
                f"got {value!r} with {len(value)} entries. Pass {name}={value[0] if len(value) else 1!r} "
                f"to use one value on every axis."
            )
        return tuple(check_int(op, name, v, minimum) for v in value)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return int_tuple(op, name, value.tolist(), nd, minimum)
    return (check_int(op, name, value, minimum),) * nd


def check_bool(op: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise PoolingConfigError(f"{op}: {name} must be True or False, got {_describe(value)}.")
    return bool(value)


def check_choice(op: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise PoolingConfigError(f"{op}: {name} must be one of {options}, got {value!r}.")
    return value


def check_real(
    op: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    low_inclusive: bool = True,
    high: float | None = None,
    high_inclusive: bool = True,
    allow_inf: bool = False,
) -> float:
    """Validate a real scalar hyper-parameter (no bools, no NaN, inf only if allowed)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise PoolingConfigError(f"{op}: {name} must be a real number, got {_describe(value)}.")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise PoolingConfigError(f"{op}: {name} must be a finite number, got {value!r}. Pass a finite value.")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        rel = ">=" if low_inclusive else ">"
        raise PoolingConfigError(f"{op}: {name} must be {rel} {low:g}, got {value!r}.")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        rel = "<=" if high_inclusive else "<"
        raise PoolingConfigError(f"{op}: {name} must be {rel} {high:g}, got {value!r}.")
    return value
