"""poolkit: pooling operators for neural networks.

``poolkit.ops`` is the NumPy reference (forward and backward);
``poolkit.geometry`` the one window geometry every backend reads;
``poolkit.registry`` the list of operators.
"""

from .errors import PoolingConfigError, PoolingError, PoolingInputError

__version__ = "0.1.0"

__all__ = ["PoolingError", "PoolingConfigError", "PoolingInputError", "__version__"]
