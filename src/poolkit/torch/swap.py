"""Swap the pooling layers inside any model (torchvision, timm, your own)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._validate import check_bool
from ..errors import PoolingConfigError

__all__ = ["Swap", "SwapReport", "swap_pooling"]

# torch.nn pooling classes by poolkit registry name, so replace={"max_pool": ...} matches them.
_TORCH_FAMILIES: dict[str, tuple[type, ...]] = {
    "max_pool": (torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d),
    "avg_pool": (torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d),
    "lp_pool": (torch.nn.LPPool1d, torch.nn.LPPool2d, torch.nn.LPPool3d),
    "adaptive_max_pool": (torch.nn.AdaptiveMaxPool1d, torch.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool3d),
    "adaptive_avg_pool": (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d),
    "fractional_max_pool": (torch.nn.FractionalMaxPool2d, torch.nn.FractionalMaxPool3d),
    "max_unpool": (torch.nn.MaxUnpool1d, torch.nn.MaxUnpool2d, torch.nn.MaxUnpool3d),
}


@dataclass(frozen=True)
class Swap:
    """One replaced module: its dotted name in the model, and the old and new modules' reprs."""

    name: str
    old: str
    new: str


class SwapReport(list):
    """The list of :class:`Swap` records, printable as a table."""

    def __str__(self) -> str:
        if not self:
            return "no pooling module replaced"
        width = max(len(s.name) for s in self)
        lines = [f"{s.name.ljust(width)}  {s.old}  ->  {s.new}" for s in self]
        return f"{len(self)} pooling module(s) replaced:\n" + "\n".join(lines)


def _rank(module: torch.nn.Module) -> int | None:
    name = type(module).__name__
    return int(name[-2]) if name[-1] == "d" and name[-2].isdigit() else None


def _matches(key: Any, module: torch.nn.Module) -> bool:
    if isinstance(key, type):
        return isinstance(module, key)
    if isinstance(key, str):
        if type(module).__name__ == key:
            return True
        if key in _TORCH_FAMILIES and isinstance(module, _TORCH_FAMILIES[key]):
            return True
        ours = getattr(module, "function", None)
        base = getattr(ours, "__name__", "")
        return base == key or (base[:-2] == key and base[-2:] in ("1d", "2d", "3d"))
    raise PoolingConfigError(
        f"swap_pooling: replace keys must be module classes or operator names (e.g. nn.MaxPool2d or 'max_pool'), "
        f"got {key!r}."
    )


_SHARED_SETTINGS = (
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "ceil_mode",
    "output_size",
    "count_include_pad",
)


def _build(target: Any, old: torch.nn.Module) -> torch.nn.Module:
    """A new module from a factory, a module class, an instance, or a registry name."""
    if isinstance(target, torch.nn.Module):
        return copy.deepcopy(target)
    if isinstance(target, str):
        from . import modules

        rank = _rank(old) or 2
        cls = _class_for(target, rank, modules)
        return _from_settings(cls, old)
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        return _from_settings(target, old)
    if callable(target):
        new = target(old)
        if not isinstance(new, torch.nn.Module):
            raise PoolingConfigError(
                f"swap_pooling: the factory for {type(old).__name__} returned {type(new).__name__}, not an nn.Module."
            )
        return new
    raise PoolingConfigError(
        f"swap_pooling: replace values must be a factory old_module -> new_module, a module class, a module, or an "
        f"operator name, got {target!r}."
    )


def _class_for(name: str, rank: int, modules: Any) -> type:
    wanted = name.replace("_", "").lower()
    for cls_name in getattr(modules, "__all__", ()):
        cls = getattr(modules, cls_name)
        fn = getattr(cls, "function", None)
        base = getattr(fn, "__name__", "")
        if base in (f"{name}{rank}d", name):
            return cls
        if cls_name.lower() in (wanted, f"{wanted}{rank}d"):
            return cls
    raise PoolingConfigError(
        f"swap_pooling: no poolkit module implements {name!r} for {rank}-D inputs. See `poolkit ops` for the names."
    )


def _from_settings(cls: type, old: torch.nn.Module) -> torch.nn.Module:
    """Construct ``cls`` with the settings it shares with ``old`` (kernel size, stride, padding, ...)."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for name in _SHARED_SETTINGS:
        if name in params and hasattr(old, name) and getattr(old, name) is not None:
            kwargs[name] = getattr(old, name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PoolingConfigError(
            f"swap_pooling: could not build {cls.__name__} from {old!r} ({exc}). Pass a factory instead, e.g. "
            f"replace={{type(old): lambda m: {cls.__name__}(...)}}."
        ) from exc


def swap_pooling(
    model: torch.nn.Module,
    replace: Mapping[Any, Any],
    *,
    inplace: bool = False,
) -> tuple[torch.nn.Module, SwapReport]:
    """Replace pooling modules inside ``model``; return the model and what was replaced.

    Parameters
    ----------
    model : torch.nn.Module
    replace : mapping
        Keys select modules: a class (``nn.MaxPool2d``: ``isinstance``
        match) or an operator name (``"max_pool"`` matches ``torch.nn``'s and
        poolkit's max pooling of any rank; a class name such as
        ``"AdaptiveAvgPool2d"`` matches by name). Values say what to put
        there: a factory ``old_module -> new_module``, a module class or an
        operator name (built with the old module's kernel_size, stride,
        padding, ... where the new one takes them), or a module (deep-copied
        for each place). The first matching key wins.
    inplace : bool
        Modify ``model`` itself (default: work on a deep copy).

    Returns
    -------
    (model, SwapReport)

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import swap_pooling, AvgPool2d
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten())
    >>> new, report = swap_pooling(net, {torch.nn.MaxPool2d: AvgPool2d})
    >>> print(report)
    1 pooling module(s) replaced:
    1  MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)  ->  AvgPool2d(kernel_size=2, stride=2, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None, dilation=1, data_format='channels_first')
    """
    if not isinstance(model, torch.nn.Module):
        raise PoolingConfigError(
            f"swap_pooling: model must be a torch.nn.Module, got {type(model).__name__}."
        )
    inplace = check_bool("swap_pooling", "inplace", inplace)
    if not isinstance(replace, Mapping) or not replace:
        raise PoolingConfigError(
            "swap_pooling: replace must be a non-empty mapping, e.g. {nn.MaxPool2d: lambda m: MaxBlurPool2d(2)}."
        )
    for key in replace:
        _matches(key, torch.nn.Identity())  # validates the key types up front
    target = model if inplace else copy.deepcopy(model)
    report = SwapReport()
    for name, parent in list(target.named_modules()):
        for child_name, child in list(parent.named_children()):
            for key, value in replace.items():
                if _matches(key, child):
                    new = _build(value, child)
                    setattr(parent, child_name, new)
                    full = f"{name}.{child_name}" if name else child_name
                    report.append(Swap(full, repr(child), repr(new)))
                    break
    return target, report
