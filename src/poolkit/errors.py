"""The poolkit error family.

Every error poolkit raises for bad input is a :class:`PoolingError`, a
``ValueError`` subclass, so ``except ValueError`` keeps working. Messages name
the argument, the value received, the rule it breaks and what to do instead.
"""

from __future__ import annotations

__all__ = ["PoolingError", "PoolingConfigError", "PoolingInputError"]


class PoolingError(ValueError):
    """Base class of every error poolkit raises for a bad argument."""


class PoolingConfigError(PoolingError):
    """A hyper-parameter is wrong on its own (a kernel of 0, an unknown mode)."""


class PoolingInputError(PoolingError):
    """Valid settings that do not fit this input (wrong rank, dtype, or size)."""
