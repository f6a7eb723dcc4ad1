"""Drop-in modules for torch.nn's max, average, Lp, adaptive, fractional and unpooling layers."""

from __future__ import annotations

from typing import Any

import torch

from ..._validate import check_bool, check_choice, check_int, check_real, int_tuple
from ...geometry import adaptive_output_size, fractional_output_size
from .. import functional as F
from ._base import PoolModule

__all__ = [
    *(f"MaxPool{n}d" for n in (1, 2, 3)),
    *(f"AvgPool{n}d" for n in (1, 2, 3)),
    *(f"LPPool{n}d" for n in (1, 2, 3)),
    *(f"AdaptiveMaxPool{n}d" for n in (1, 2, 3)),
    *(f"AdaptiveAvgPool{n}d" for n in (1, 2, 3)),
    *(f"FractionalMaxPool{n}d" for n in (1, 2, 3)),
    *(f"MaxUnpool{n}d" for n in (1, 2, 3)),
    "GlobalMaxPool",
    "GlobalAvgPool",
]


def _single(v: Any) -> Any:
    return (v,) if isinstance(v, int) and not isinstance(v, bool) else v


class _MaxPool(PoolModule):
    nd: int
    settings = (
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "ceil_mode",
        "return_indices",
        "data_format",
        "index_format",
        "include_batch_in_index",
    )

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        dilation: Any = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
        *,
        data_format: str = "channels_first",
        index_format: str = "torch",
        include_batch_in_index: bool = False,
    ) -> None:
        super().__init__()
        name = self._set_window(kernel_size, stride, padding, ceil_mode, dilation)
        self.dilation = dilation
        self.return_indices = check_bool(name, "return_indices", return_indices)
        self._set_format(data_format)
        self.index_format = check_choice(name, "index_format", index_format, ("torch", "tf"))
        self.include_batch_in_index = check_bool(name, "include_batch_in_index", include_batch_in_index)


class MaxPool1d(_MaxPool):
    """Drop-in for ``torch.nn.MaxPool1d`` with ``padding="same"/"valid"``, (lo, hi) pairs and ``data_format``."""

    nd, function = 1, staticmethod(F.max_pool1d)


class MaxPool2d(_MaxPool):
    """Drop-in for ``torch.nn.MaxPool2d`` with ``padding="same"/"valid"``, (lo, hi) pairs and ``data_format``.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import MaxPool2d
    >>> MaxPool2d(3, stride=2, padding="same")(torch.zeros(1, 8, 7, 7)).shape
    torch.Size([1, 8, 4, 4])
    """

    nd, function = 2, staticmethod(F.max_pool2d)


class MaxPool3d(_MaxPool):
    """Drop-in for ``torch.nn.MaxPool3d`` with ``padding="same"/"valid"``, (lo, hi) pairs and ``data_format``."""

    nd, function = 3, staticmethod(F.max_pool3d)


class _AvgPool(PoolModule):
    nd: int
    settings = (
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
        "dilation",
        "data_format",
    )

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        *,
        dilation: Any = 1,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._set_window(kernel_size, stride, padding, ceil_mode, dilation)
        if self.nd == 1:  # torch.nn.AvgPool1d stores 1-tuples
            self.kernel_size, self.stride, self.padding = (
                _single(v) for v in (self.kernel_size, self.stride, self.padding)
            )
        self.count_include_pad = check_bool(name, "count_include_pad", count_include_pad)
        self.divisor_override = (
            None if divisor_override is None else check_int(name, "divisor_override", divisor_override, 1)
        )
        self.dilation = dilation
        self._set_format(data_format)


class AvgPool1d(_AvgPool):
    """Drop-in for ``torch.nn.AvgPool1d``, plus dilation, "same"/asymmetric padding and ``data_format``."""

    nd, function = 1, staticmethod(F.avg_pool1d)


class AvgPool2d(_AvgPool):
    """Drop-in for ``torch.nn.AvgPool2d``, plus dilation, "same"/asymmetric padding and ``data_format``."""

    nd, function = 2, staticmethod(F.avg_pool2d)


class AvgPool3d(_AvgPool):
    """Drop-in for ``torch.nn.AvgPool3d``, plus dilation, "same"/asymmetric padding and ``data_format``."""

    nd, function = 3, staticmethod(F.avg_pool3d)


class _LPPool(PoolModule):
    nd: int
    settings = ("norm_type", "kernel_size", "stride", "ceil_mode", "padding", "dilation", "data_format")

    def __init__(
        self,
        norm_type: float,
        kernel_size: Any,
        stride: Any = None,
        ceil_mode: bool = False,
        *,
        padding: Any = 0,
        dilation: Any = 1,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.norm_type = check_real(
            name, "norm_type", norm_type, low=0.0, low_inclusive=False, allow_inf=True
        )
        self._set_window(kernel_size, stride, padding, ceil_mode, dilation)
        self.stride, self.dilation = stride, dilation  # torch.nn.LPPool2d keeps stride=None
        self._set_format(data_format)


class LPPool1d(_LPPool):
    """Drop-in for ``torch.nn.LPPool1d``, correct for negative inputs and any ``p > 0``."""

    nd, function = 1, staticmethod(F.lp_pool1d)


class LPPool2d(_LPPool):
    """Drop-in for ``torch.nn.LPPool2d``, correct for negative inputs and any ``p > 0``."""

    nd, function = 2, staticmethod(F.lp_pool2d)


class LPPool3d(_LPPool):
    """Drop-in for ``torch.nn.LPPool3d``, correct for negative inputs and any ``p > 0``."""

    nd, function = 3, staticmethod(F.lp_pool3d)


class _AdaptiveMaxPool(PoolModule):
    nd: int
    settings = ("output_size", "return_indices", "data_format")

    def __init__(
        self, output_size: Any, return_indices: bool = False, *, data_format: str = "channels_first"
    ) -> None:
        super().__init__()
        name = type(self).__name__
        adaptive_output_size(name, (1,) * self.nd, output_size)
        self.output_size = output_size
        self.return_indices = check_bool(name, "return_indices", return_indices)
        self._set_format(data_format)


class AdaptiveMaxPool1d(_AdaptiveMaxPool):
    """Drop-in for ``torch.nn.AdaptiveMaxPool1d`` (and ``data_format``)."""

    nd, function = 1, staticmethod(F.adaptive_max_pool1d)


class AdaptiveMaxPool2d(_AdaptiveMaxPool):
    """Drop-in for ``torch.nn.AdaptiveMaxPool2d``; exports to ONNX for sizes that do not divide the input."""

    nd, function = 2, staticmethod(F.adaptive_max_pool2d)


class AdaptiveMaxPool3d(_AdaptiveMaxPool):
    """Drop-in for ``torch.nn.AdaptiveMaxPool3d`` (and ``data_format``)."""

    nd, function = 3, staticmethod(F.adaptive_max_pool3d)


class _AdaptiveAvgPool(PoolModule):
    nd: int
    settings = ("output_size", "data_format")

    def __init__(self, output_size: Any, *, data_format: str = "channels_first") -> None:
        super().__init__()
        name = type(self).__name__
        adaptive_output_size(name, (1,) * self.nd, output_size)
        self.output_size = output_size
        self._set_format(data_format)


class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """Drop-in for ``torch.nn.AdaptiveAvgPool1d`` (and ``data_format``)."""

    nd, function = 1, staticmethod(F.adaptive_avg_pool1d)


class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """Drop-in for ``torch.nn.AdaptiveAvgPool2d``; exports to ONNX for sizes that do not divide the input."""

    nd, function = 2, staticmethod(F.adaptive_avg_pool2d)


class AdaptiveAvgPool3d(_AdaptiveAvgPool):
    """Drop-in for ``torch.nn.AdaptiveAvgPool3d`` (and ``data_format``)."""

    nd, function = 3, staticmethod(F.adaptive_avg_pool3d)


class _FractionalMaxPool(PoolModule):
    nd: int
    settings = ("kernel_size", "output_size", "output_ratio", "return_indices", "data_format")

    def __init__(
        self,
        kernel_size: Any,
        output_size: Any = None,
        output_ratio: Any = None,
        return_indices: bool = False,
        *,
        generator: torch.Generator | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = int_tuple(name, "kernel_size", kernel_size, self.nd, 1)
        fractional_output_size(name, (1 << 20,) * self.nd, self.kernel_size, output_size, output_ratio)
        self.output_size, self.output_ratio = output_size, output_ratio
        self.return_indices = check_bool(name, "return_indices", return_indices)
        self.generator = generator
        self._set_format(data_format)

    def forward(self, x: torch.Tensor) -> Any:
        """Random windows in training mode; in eval mode the fixed samples u = 0.5 (deterministic).

        (``torch.nn.FractionalMaxPool2d`` samples in eval mode too.)
        """
        samples = None
        if not self.training:
            batched = x.dim() == self.nd + 2
            n = x.shape[0] if batched else 1
            c = x.shape[-1] if self.data_format == "channels_last" else x.shape[1 if batched else 0]
            samples = torch.full((n, c, self.nd), 0.5, dtype=x.dtype, device=x.device)
        return type(self).function(x, **self.arguments(), samples=samples, rng=self.generator)


class FractionalMaxPool1d(_FractionalMaxPool):
    """Fractional max pooling over one spatial axis (PyTorch has 2-D and 3-D only)."""

    nd, function = 1, staticmethod(F.fractional_max_pool1d)


class FractionalMaxPool2d(_FractionalMaxPool):
    """``torch.nn.FractionalMaxPool2d`` with a generator, and deterministic in eval mode."""

    nd, function = 2, staticmethod(F.fractional_max_pool2d)


class FractionalMaxPool3d(_FractionalMaxPool):
    """``torch.nn.FractionalMaxPool3d`` with a generator, and deterministic in eval mode."""

    nd, function = 3, staticmethod(F.fractional_max_pool3d)


class _MaxUnpool(PoolModule):
    nd: int
    settings = ("kernel_size", "stride", "padding", "data_format", "index_format")

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        *,
        data_format: str = "channels_first",
        index_format: str = "torch",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = int_tuple(name, "kernel_size", kernel_size, self.nd, 1)
        self.stride = self.kernel_size if stride is None else int_tuple(name, "stride", stride, self.nd, 1)
        self.padding = int_tuple(name, "padding", padding, self.nd, 0)
        self._set_format(data_format)
        self.index_format = check_choice(name, "index_format", index_format, ("torch", "tf"))

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: Any = None) -> torch.Tensor:  # type: ignore[override]
        return type(self).function(x, indices, output_size=output_size, **self.arguments())


class MaxUnpool1d(_MaxUnpool):
    """Drop-in for ``torch.nn.MaxUnpool1d``, deterministic with repeated indices."""

    nd, function = 1, staticmethod(F.max_unpool1d)


class MaxUnpool2d(_MaxUnpool):
    """Drop-in for ``torch.nn.MaxUnpool2d``, deterministic with repeated indices."""

    nd, function = 2, staticmethod(F.max_unpool2d)


class MaxUnpool3d(_MaxUnpool):
    """Drop-in for ``torch.nn.MaxUnpool3d``, deterministic with repeated indices."""

    nd, function = 3, staticmethod(F.max_unpool3d)


class _Global(PoolModule):
    settings = ("keepdims", "data_format")

    def __init__(self, keepdims: bool = False, *, data_format: str = "channels_first") -> None:
        super().__init__()
        name = type(self).__name__
        self.keepdims = check_bool(name, "keepdims", keepdims)
        self._set_format(data_format)


class GlobalMaxPool(_Global):
    """Max over all spatial axes, ``(N, C, *spatial) -> (N, C)``."""

    function = staticmethod(F.global_max_pool)


class GlobalAvgPool(_Global):
    """Mean over all spatial axes, ``(N, C, *spatial) -> (N, C)`` (global average pooling, Lin et al. 2013)."""

    function = staticmethod(F.global_avg_pool)
