"""One construction per Keras layer, for the generic layer tests (tests/keras/test_layers.py).

Each entry: the constructor's keyword arguments, a batched channels-last
input shape, and, for layers with more inputs, how to make them (eagerly
from NumPy, and inside a functional model). Every class in
``poolkit.keras.__all__`` must have an entry. The classic layers' entries are
here; each other family keeps its own in ``cases_<family>.py`` (a module-level
``CASES`` dict), merged below.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import poolkit.keras as PK
import poolkit.ops as P


@dataclass(frozen=True)
class LayerCase:
    kwargs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = (2, 8, 7, 3)
    # extra positional inputs for an eager call, made from the (numpy) input
    extra: Callable[[np.ndarray], tuple[Any, ...]] | None = None
    # how a functional model wires the layer: graph(layer, keras_input) -> output tensor
    graph: Callable[[Any, Any], Any] | None = None
    args: tuple[Any, ...] = ()

    def build(self, cls: type) -> Any:
        return cls(*self.args, **self.kwargs)


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _unpool_case(nd: int, shape: tuple[int, ...]) -> LayerCase:
    def extra(x: np.ndarray) -> tuple[Any, ...]:
        y, idx = getattr(P, f"max_pool{nd}d")(x, 2, return_indices=True, data_format="channels_last")
        return (y, idx)

    def graph(layer: Any, inp: Any) -> Any:
        y, idx = getattr(PK, f"MaxPool{nd}D")(2, return_indices=True)(inp)
        return layer(y, idx)

    return LayerCase({"pool_size": 2}, shape, extra=extra, graph=graph)


SHAPES = {1: (2, 9, 3), 2: (2, 8, 7, 3), 3: (2, 4, 6, 5, 2)}
UNPOOL_SHAPES = {1: (2, 8, 3), 2: (2, 8, 6, 3), 3: (2, 4, 6, 4, 2)}  # even: unpooling restores the size

CASES: dict[str, LayerCase] = {}
for _n, _shape in SHAPES.items():
    CASES |= {
        f"MaxPool{_n}D": LayerCase({"pool_size": 3, "strides": 2, "padding": 1}, _shape),
        f"AvgPool{_n}D": LayerCase({"pool_size": 2, "strides": 1, "padding": "same"}, _shape),
        f"LPPool{_n}D": LayerCase({"pool_size": 2, "ceil_mode": True}, _shape, args=(3.0,)),
        f"AdaptiveMaxPool{_n}D": LayerCase({"output_size": 3}, _shape),
        f"AdaptiveAvgPool{_n}D": LayerCase({"output_size": 3}, _shape),
        f"GlobalMaxPool{_n}D": LayerCase({}, _shape),
        f"GlobalAvgPool{_n}D": LayerCase({"keepdims": True}, _shape),
        f"FractionalMaxPool{_n}D": LayerCase({"pool_size": 2, "output_ratio": 0.5}, _shape),
        f"MaxUnpool{_n}D": _unpool_case(_n, UNPOOL_SHAPES[_n]),
    }


for _info in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _info.name.startswith("cases_"):
        _family = importlib.import_module(_info.name).CASES
        assert not set(_family) & set(CASES), f"{_info.name} repeats layer cases"
        CASES |= _family
