"""poolkit.torch.functional: every operator in torch ops, with the NumPy operator's signature.

``poolkit.torch.functional.NAME`` takes the arguments of ``poolkit.ops.NAME``
(tensors instead of arrays) and returns tensors; autograd provides the
backward. Stochastic operators take ``rng`` as None (torch's global
generator), an int seed or a ``torch.Generator``.

Each submodule holds one family and lists its functions in ``__all__``;
they are all re-exported here.
"""

import importlib as _importlib
import pkgutil as _pkgutil

__all__: list[str] = []
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
del _importlib, _pkgutil, _info, _module, _name
