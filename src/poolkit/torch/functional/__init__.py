"""poolkit.torch.functional: every operator in torch ops, with the NumPy operator's signature.

``poolkit.torch.functional.NAME`` takes the arguments of ``poolkit.ops.NAME``
(tensors instead of arrays) and returns tensors; autograd provides the
backward. Stochastic operators take ``rng`` as None (torch's global
generator), an int seed or a ``torch.Generator``.
"""

from .adaptive import (
    adaptive_avg_pool,
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    adaptive_max_pool,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    adaptive_max_pool3d,
    fractional_max_pool,
    fractional_max_pool1d,
    fractional_max_pool2d,
    fractional_max_pool3d,
    global_avg_pool,
    global_max_pool,
    max_unpool,
    max_unpool1d,
    max_unpool2d,
    max_unpool3d,
)
from .classic import (
    avg_pool,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    lp_pool,
    lp_pool1d,
    lp_pool2d,
    lp_pool3d,
    max_pool,
    max_pool1d,
    max_pool2d,
    max_pool3d,
)

__all__ = [
    "max_pool",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "lp_pool",
    "lp_pool1d",
    "lp_pool2d",
    "lp_pool3d",
    "adaptive_max_pool",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "adaptive_avg_pool",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "global_max_pool",
    "global_avg_pool",
    "fractional_max_pool",
    "fractional_max_pool1d",
    "fractional_max_pool2d",
    "fractional_max_pool3d",
    "max_unpool",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
]
