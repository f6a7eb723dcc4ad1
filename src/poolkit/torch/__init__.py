"""poolkit.torch: every poolkit operator as a PyTorch function and ``nn.Module``.

Written in torch ops, so it runs on any device, under autograd,
``torch.compile`` and export; the NumPy reference (:mod:`poolkit.ops`) is
its test oracle. Needs PyTorch: ``pip install 'poolkit[torch]'``.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "poolkit.torch needs PyTorch. Install it with: pip install 'poolkit[torch]' "
        "(or pip install torch), or use poolkit.ops for NumPy arrays."
    ) from exc

from . import functional
from .modules import *  # noqa: F403
from .modules import __all__ as _module_names
from .swap import Swap, SwapReport, swap_pooling

__all__ = ["functional", "swap_pooling", "Swap", "SwapReport", *_module_names]
