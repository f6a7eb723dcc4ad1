"""poolkit.keras.functional: every operator in ``keras.ops``, with the NumPy operator's signature.

The functions take batched tensors of any Keras backend; ``data_format``
defaults to ``keras.config.image_data_format()``. The layers in
:mod:`poolkit.keras` wrap them with Keras' conventions. Each submodule holds
one family and lists its functions in ``__all__``; all are re-exported here,
with ``*1d/2d/3d`` aliases generated for the N-d ones.
"""

import functools as _functools
import importlib as _importlib
import pkgutil as _pkgutil

from ... import registry as _registry

__all__: list[str] = []


def _alias(fn, nd, name):
    @_functools.wraps(fn)
    def alias(*args, **kwargs):
        return fn(*args, ndim=nd, op=name, **kwargs)

    alias.__name__ = alias.__qualname__ = name
    del alias.__wrapped__
    return alias


for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name in _module.__all__:
        _fn = getattr(_module, _name)
        globals()[_name] = _fn
        __all__.append(_name)
        try:
            _op = _registry.get(_name)
        except ValueError:
            continue
        for _alias_name in _op.aliases:
            globals()[_alias_name] = _alias(_fn, int(_alias_name[-2]), _alias_name)
            __all__.append(_alias_name)
