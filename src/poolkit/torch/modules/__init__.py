"""``nn.Module`` versions of every poolkit operator."""

from .classic import *  # noqa: F403
from .classic import __all__ as _classic

__all__ = [*_classic]
