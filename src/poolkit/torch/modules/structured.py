"""Structured pooling modules: spatial pyramids, YOLO's SPP/SPPF, masked, attention and segment pooling."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..._validate import check_choice, check_int, check_real
from ...errors import PoolingConfigError
from ...ops._input import DATA_FORMATS
from ...ops.pyramid import _check_kernel, _levels
from ...ops.segment import MODES as _SEGMENT_MODES
from .. import functional as F
from ._base import PoolModule, check_window

__all__ = ["SpatialPyramidPool", "SPP", "SPPF", "MaskedPool", "AttentionPool2d", "SegmentPool"]


class SpatialPyramidPool(PoolModule):
    """Spatial pyramid pooling (He et al., ECCV 2014): ``(N, C, *spatial) -> (N, C * sum(n ** ndim))``.

    Any spatial rank (taken from the input). See
    :func:`poolkit.torch.functional.spatial_pyramid_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import SpatialPyramidPool
    >>> SpatialPyramidPool((1, 2, 4))(torch.zeros(2, 8, 13, 9)).shape
    torch.Size([2, 168])
    """

    settings = ("levels", "mode", "bins", "data_format")
    function = staticmethod(F.spatial_pyramid_pool)

    def __init__(
        self,
        levels: Any = (1, 2, 4),
        mode: str = "max",
        *,
        bins: str = "adaptive",
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.levels = _levels(name, levels)
        self.mode = check_choice(name, "mode", mode, ("max", "avg"))
        self.bins = check_choice(name, "bins", bins, ("adaptive", "paper"))
        self._set_format(data_format)


class SPP(PoolModule):
    """YOLO's SPP pooling block ``concat[x, m_5(x), m_9(x), m_13(x)]`` (channels ``C * 4``), any spatial rank."""

    settings = ("kernel_sizes", "data_format")
    function = staticmethod(F.spp)

    def __init__(self, kernel_sizes: Any = (5, 9, 13), *, data_format: str = "channels_first") -> None:
        super().__init__()
        name = type(self).__name__
        if (
            isinstance(kernel_sizes, (int, str))
            or not isinstance(kernel_sizes, (list, tuple))
            or not kernel_sizes
        ):
            raise PoolingConfigError(
                f"{name}: kernel_sizes must be a non-empty sequence of odd ints, got {kernel_sizes!r}."
            )
        self.kernel_sizes = tuple(_check_kernel(name, k) for k in kernel_sizes)
        self._set_format(data_format)


class SPPF(PoolModule):
    """YOLOv5's SPPF pooling block ``concat[x, m(x), m(m(x)), m(m(m(x)))]``; equals :class:`SPP` ``(5, 9, 13)``."""

    settings = ("kernel_size", "repeats", "data_format")
    function = staticmethod(F.sppf)

    def __init__(
        self, kernel_size: int = 5, repeats: int = 3, *, data_format: str = "channels_first"
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _check_kernel(name, kernel_size)
        self.repeats = check_int(name, "repeats", repeats, 1)
        self._set_format(data_format)


def _rank_of(*settings: Any) -> int:
    """The spatial rank a window setting implies (1 when every setting is a scalar)."""
    for s in settings:
        if isinstance(s, (list, tuple)) and s:
            return len(s)
    return 1


class MaskedPool(PoolModule):
    """Pooling over the positions a mask selects: ``forward(x, mask)``.

    ``kernel_size=None`` (default) pools globally, ``(N, C, *spatial) -> (N, C)``
    (masked average pooling of few-shot segmentation); with a kernel it
    slides windows. Any spatial rank. See :func:`poolkit.torch.functional.masked_pool`.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import MaskedPool
    >>> MaskedPool(mode="avg")(torch.ones(2, 3, 4, 4), torch.ones(2, 1, 4, 4)).shape
    torch.Size([2, 3])
    """

    settings = ("mode", "kernel_size", "stride", "padding", "ceil_mode", "data_format")
    function = staticmethod(F.masked_pool)

    def __init__(
        self,
        kernel_size: Any = None,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        mode: str = "avg",
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.mode = check_choice(name, "mode", mode, ("avg", "sum", "max"))
        if kernel_size is not None:
            check_window(
                name, _rank_of(kernel_size, stride, padding), kernel_size, stride, padding, 1, ceil_mode
            )
        elif stride is not None or padding != 0 or ceil_mode:
            raise PoolingConfigError(
                f"{name}: stride, padding and ceil_mode need a kernel_size (kernel_size=None pools globally)."
            )
        self.kernel_size, self.stride, self.padding, self.ceil_mode = kernel_size, stride, padding, ceil_mode
        self._set_format(data_format)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return type(self).function(x, mask, **self.arguments())


class AttentionPool2d(torch.nn.Module):
    """CLIP's attention pooling (Radford et al. 2021), or PMA seed queries (Lee et al. 2019).

    ``AttentionPool2d(spacial_dim, embed_dim, num_heads, output_dim=None)``
    has CLIP's parameters under CLIP's names (``positional_embedding``,
    ``q_proj``, ``k_proj``, ``v_proj``, ``c_proj``, each projection an
    ``nn.Linear`` with bias), so an ``openai/CLIP`` ``attnpool`` state dict
    loads as is: ``(N, C, H, W) -> (N, output_dim)`` with the mean token as
    the query. With ``num_queries=Q`` it owns ``Q`` learned seeds
    (``query``, ``(Q, C)``) that attend over the ``H W`` positions
    (``positional_embedding`` then has ``H W`` rows): ``(N, Q, output_dim)``.
    ``spacial_dim`` is the side of the expected feature map (an int, or
    ``(H, W)``), or ``None`` for no positional embedding (any input size).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import AttentionPool2d
    >>> AttentionPool2d(7, 64, 4, 32)(torch.randn(2, 64, 7, 7)).shape
    torch.Size([2, 32])
    >>> AttentionPool2d(7, 64, 4, num_queries=3)(torch.randn(2, 64, 7, 7)).shape
    torch.Size([2, 3, 64])
    """

    def __init__(
        self,
        spacial_dim: Any,
        embed_dim: int,
        num_heads: int,
        output_dim: int | None = None,
        *,
        num_queries: int | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.embed_dim = check_int(name, "embed_dim", embed_dim, 1)
        self.num_heads = check_int(name, "num_heads", num_heads, 1)
        if self.embed_dim % self.num_heads:
            ok = [d for d in range(1, self.embed_dim + 1) if self.embed_dim % d == 0]
            raise PoolingConfigError(
                f"{name}: embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}. "
                f"Pass num_heads in {ok}."
            )
        self.output_dim = (
            self.embed_dim if output_dim is None else check_int(name, "output_dim", output_dim, 1)
        )
        self.num_queries = None if num_queries is None else check_int(name, "num_queries", num_queries, 1)
        if spacial_dim is None:
            self.spacial_dim = None
        elif isinstance(spacial_dim, (list, tuple)):
            if len(spacial_dim) != 2:
                raise PoolingConfigError(
                    f"{name}: spacial_dim must be an int, a (height, width) pair or None, got {spacial_dim!r}."
                )
            self.spacial_dim = tuple(check_int(name, "spacial_dim", s, 1) for s in spacial_dim)
        else:
            s = check_int(name, "spacial_dim", spacial_dim, 1)
            self.spacial_dim = (s, s)
        self.data_format = check_choice(name, "data_format", data_format, DATA_FORMATS)
        c = self.embed_dim
        if self.spacial_dim is None:
            self.positional_embedding = None
        else:
            rows = math.prod(self.spacial_dim) + (0 if self.num_queries else 1)
            self.positional_embedding = torch.nn.Parameter(torch.randn(rows, c) / c**0.5)
        self.query = (
            None
            if self.num_queries is None
            else torch.nn.Parameter(torch.randn(self.num_queries, c) / c**0.5)
        )
        self.k_proj = torch.nn.Linear(c, c)
        self.q_proj = torch.nn.Linear(c, c)
        self.v_proj = torch.nn.Linear(c, c)
        self.c_proj = torch.nn.Linear(c, self.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.attention_pool2d(
            x,
            self.query,
            self.q_proj.weight,
            self.k_proj.weight,
            self.v_proj.weight,
            self.c_proj.weight,
            self.num_heads,
            bq=self.q_proj.bias,
            bk=self.k_proj.bias,
            bv=self.v_proj.bias,
            bo=self.c_proj.bias,
            pos_embed=self.positional_embedding,
            data_format=self.data_format,
        )

    def extra_repr(self) -> str:
        return (
            f"spacial_dim={self.spacial_dim}, embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"output_dim={self.output_dim}, num_queries={self.num_queries}, data_format={self.data_format!r}"
        )


class SegmentPool(PoolModule):
    """Set pooling by segment id (graph readout): ``forward(x, batch, num_segments=None)``.

    ``mode`` as :func:`poolkit.torch.functional.segment_pool`. With
    ``learnable=True`` the softmax temperature ``t`` (``mode="softmax"``) or
    the power ``p`` (``mode="power_mean"``) is an ``nn.Parameter``: one value,
    or one per feature with ``channels=F``. Pass ``num_segments`` to
    ``forward`` to avoid a device sync (and for ``torch.compile``).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import SegmentPool
    >>> SegmentPool("mean")(torch.ones(5, 3), torch.tensor([0, 0, 1, 1, 1]), num_segments=3).shape
    torch.Size([3, 3])
    """

    settings = ("mode", "eps")
    function = staticmethod(F.segment_pool)

    def __init__(
        self,
        mode: str = "sum",
        *,
        t: float = 1.0,
        p: float = 1.0,
        eps: float = 1e-6,
        learnable: bool = False,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.mode = check_choice(name, "mode", mode, _SEGMENT_MODES)
        t = check_real(name, "t", t)
        p = check_real(name, "p", p, low=0.0, low_inclusive=False)
        self.eps = check_real(name, "eps", eps, low=0.0, low_inclusive=False)
        if not isinstance(learnable, bool):
            raise PoolingConfigError(f"{name}: learnable must be True or False, got {learnable!r}.")
        if learnable and self.mode not in ("softmax", "power_mean"):
            raise PoolingConfigError(
                f"{name}: learnable=True needs mode='softmax' (learns t) or mode='power_mean' (learns p), "
                f"got mode={self.mode!r}."
            )
        if channels is not None and not learnable:
            raise PoolingConfigError(
                f"{name}: channels= sets the size of a learned t or p; pass learnable=True."
            )
        shape = () if channels is None else (check_int(name, "channels", channels, 1),)
        self.learnable, self.channels = learnable, channels
        if learnable and self.mode == "softmax":
            self.t: Any = torch.nn.Parameter(torch.full(shape, t))
        else:
            self.t = t
        if learnable and self.mode == "power_mean":
            self.p: Any = torch.nn.Parameter(torch.full(shape, p))
        else:
            self.p = p

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, batch: torch.Tensor, num_segments: int | None = None
    ) -> torch.Tensor:
        return F.segment_pool(x, batch, num_segments, self.mode, t=self.t, p=self.p, eps=self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, learnable={self.learnable}, channels={self.channels}, eps={self.eps}"
