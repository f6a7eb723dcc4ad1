"""Region pooling modules: drop-ins for torchvision's RoIPool, RoIAlign, PSRoIPool, PSRoIAlign and
MultiScaleRoIAlign (deterministic on every device), and PreciseRoIPool."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..._validate import check_bool, check_int, check_real
from ...errors import PoolingConfigError, PoolingInputError
from ...ops._boxes import pooled_size, spatial_scale_of
from .. import functional as F
from ._base import PoolModule

__all__ = ["RoIPool", "RoIAlign", "PSRoIPool", "PSRoIAlign", "PreciseRoIPool", "MultiScaleRoIAlign"]


class _Region(PoolModule):
    """``forward(x, boxes)``: boxes as a ``(K, 5)`` tensor or a list of ``(L, 4)`` tensors (torchvision's formats)."""

    settings = ("output_size", "spatial_scale", "data_format")

    def __init__(
        self, output_size: Any, spatial_scale: float = 1.0, *, data_format: str = "channels_first"
    ) -> None:
        super().__init__()
        name = type(self).__name__
        pooled_size(name, output_size)
        self.output_size = output_size
        self.spatial_scale = spatial_scale_of(name, spatial_scale)
        self._set_format(data_format)

    def forward(self, x: torch.Tensor, boxes: Any) -> torch.Tensor:  # type: ignore[override]
        return type(self).function(x, boxes, **self.arguments())


class RoIPool(_Region):
    """Drop-in for ``torchvision.ops.RoIPool`` (same outputs and gradients; deterministic backward).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import RoIPool
    >>> RoIPool((2, 2), spatial_scale=0.5)(torch.zeros(1, 3, 8, 8), [torch.tensor([[0.0, 0.0, 9.0, 9.0]])]).shape
    torch.Size([1, 3, 2, 2])
    """

    function = staticmethod(F.roi_pool)


class PSRoIPool(_Region):
    """Drop-in for ``torchvision.ops.PSRoIPool`` (R-FCN); the gradient is that of the forward at the border."""

    function = staticmethod(F.ps_roi_pool)


class PreciseRoIPool(_Region):
    """Precise RoI pooling (PrRoI, Jiang et al. 2018): exact bin means of the bilinear interpolant,
    differentiable in the boxes too."""

    function = staticmethod(F.precise_roi_pool)


class RoIAlign(_Region):
    """Drop-in for ``torchvision.ops.RoIAlign`` with a deterministic backward (no ``atomicAdd``).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import RoIAlign
    >>> m = RoIAlign(7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    >>> m(torch.zeros(2, 4, 20, 20), torch.tensor([[1, 0.0, 0.0, 100.0, 80.0]])).shape
    torch.Size([1, 4, 7, 7])
    """

    settings = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "data_format")
    function = staticmethod(F.roi_align)

    def __init__(
        self,
        output_size: Any,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
        *,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__(output_size, spatial_scale, data_format=data_format)
        name = type(self).__name__
        self.sampling_ratio = check_int(name, "sampling_ratio", sampling_ratio)
        self.aligned = check_bool(name, "aligned", aligned)


class PSRoIAlign(_Region):
    """Drop-in for ``torchvision.ops.PSRoIAlign``; a zero-size box with the adaptive grid gives 0, not NaN."""

    settings = ("output_size", "spatial_scale", "sampling_ratio", "data_format")
    function = staticmethod(F.ps_roi_align)

    def __init__(
        self,
        output_size: Any,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        *,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__(output_size, spatial_scale, data_format=data_format)
        self.sampling_ratio = check_int(type(self).__name__, "sampling_ratio", sampling_ratio)


class MultiScaleRoIAlign(PoolModule):
    """Drop-in for ``torchvision.ops.MultiScaleRoIAlign`` (FPN level assignment; deterministic backward).

    ``forward(x, boxes, image_shapes)``: ``x`` a dict of feature maps (the
    keys in ``featmap_names`` are used, in ``x``'s order, as torchvision) or
    a list (``featmap_names=None``: every map, finest first); ``boxes`` one
    ``(L, 4)`` tensor per image; ``image_shapes`` the ``(height, width)`` of
    each image.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import MultiScaleRoIAlign
    >>> m = MultiScaleRoIAlign(["p2", "p3"], 3, 2)
    >>> feats = {"p2": torch.rand(1, 5, 32, 32), "p3": torch.rand(1, 5, 16, 16)}
    >>> m(feats, [torch.tensor([[0.0, 0.0, 40.0, 60.0]])], [(128, 128)]).shape
    torch.Size([1, 5, 3, 3])
    """

    settings = ("output_size", "sampling_ratio", "canonical_scale", "canonical_level", "data_format")
    function = staticmethod(F.multiscale_roi_align)

    def __init__(
        self,
        featmap_names: Sequence[str] | None,
        output_size: Any,
        sampling_ratio: int = -1,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if featmap_names is not None and (
            isinstance(featmap_names, str)
            or not isinstance(featmap_names, Sequence)
            or not featmap_names
            or not all(isinstance(k, str) for k in featmap_names)
        ):
            raise PoolingConfigError(
                f"{name}: featmap_names must be a non-empty list of feature-map names (or None for every map), "
                f"got {featmap_names!r}."
            )
        self.featmap_names = None if featmap_names is None else list(featmap_names)
        pooled_size(name, output_size)
        self.output_size = output_size
        self.sampling_ratio = check_int(name, "sampling_ratio", sampling_ratio)
        self.canonical_scale = check_real(
            name, "canonical_scale", canonical_scale, low=0.0, low_inclusive=False
        )
        self.canonical_level = check_int(name, "canonical_level", canonical_level)
        self._set_format(data_format)

    def forward(self, x: Any, boxes: Any, image_shapes: Any) -> torch.Tensor:  # type: ignore[override]
        if isinstance(x, Mapping):
            names = self.featmap_names
            maps = [v for k, v in x.items() if names is None or k in names]
            if not maps:
                raise PoolingInputError(
                    f"{type(self).__name__}: none of featmap_names={names} is a key of the features "
                    f"({list(x)})."
                )
        else:
            maps = x
        return type(self).function(maps, boxes, image_shapes, **self.arguments())

    def extra_repr(self) -> str:
        return f"featmap_names={self.featmap_names!r}, " + super().extra_repr()
