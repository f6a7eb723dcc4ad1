"""poolkit.keras: every poolkit operator as a Keras 3 layer, in ``keras.ops`` (TensorFlow, JAX, torch).

Needs Keras 3 and a backend: ``pip install 'poolkit[keras]'`` plus one of
tensorflow, jax or torch; select it with ``KERAS_BACKEND``.
"""

try:
    import keras
except ImportError as exc:  # pragma: no cover - exercised only without keras
    raise ImportError(
        "poolkit.keras needs Keras 3 and a backend (tensorflow, jax or torch). Install it with: "
        "pip install 'poolkit[keras]' jax (or tensorflow, or torch)."
    ) from exc

if not keras.__version__.startswith("3."):  # pragma: no cover
    raise ImportError(f"poolkit.keras needs Keras 3, found {keras.__version__}.")

from . import functional
from .layers import *  # noqa: F403
from .layers import __all__ as _layer_names

__all__ = ["functional", *_layer_names]
