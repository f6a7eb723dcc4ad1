"""Modules for the random pooling operators: stochastic, mixed and S3 pooling.

They sample only in ``train()`` mode (from an optional ``generator``, which
must live on the input's device; None is torch's global generator) and
compute the NumPy operator's ``training=False`` result in ``eval()`` mode.
"""

from __future__ import annotations

from typing import Any

import torch

from ..._validate import check_bool, check_choice, check_int
from ...errors import PoolingConfigError
from ...geometry import window_spec
from ...ops.mixed import MODES
from .. import functional as F
from ..functional.stochastic import s3_settings
from ._base import PoolModule, check_generator, clamp_straight_through

__all__ = [
    *(f"StochasticPool{n}d" for n in (1, 2, 3)),
    *(f"MixedPool{n}d" for n in (1, 2, 3)),
    *(f"S3Pool{n}d" for n in (1, 2, 3)),
]


class _Sampling(PoolModule):
    """Passes ``training`` and, in training, the module's ``generator`` as ``rng``."""

    generator: torch.Generator | None

    def arguments(self) -> dict[str, Any]:
        return {
            **super().arguments(),
            "training": self.training,
            "rng": self.generator if self.training else None,
        }


class _StochasticPool(_Sampling):
    """A sampled activation per window in training; ``sum(a^2) / sum(a)`` in evaluation."""

    settings = ("kernel_size", "stride", "padding", "ceil_mode", "data_format")

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        generator: torch.Generator | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._set_window(kernel_size, stride, padding, ceil_mode)
        self.generator = check_generator(name, generator)
        self._set_format(data_format)


class StochasticPool1d(_StochasticPool):
    """Stochastic pooling (Zeiler & Fergus 2013) over one spatial axis."""

    nd, function = 1, staticmethod(F.stochastic_pool1d)


class StochasticPool2d(_StochasticPool):
    """Stochastic pooling (Zeiler & Fergus 2013): samples in ``train()``, probability-weighted in ``eval()``.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import StochasticPool2d
    >>> m = StochasticPool2d(2, generator=torch.Generator().manual_seed(0))
    >>> m(torch.rand(1, 3, 8, 8)).shape
    torch.Size([1, 3, 4, 4])
    """

    nd, function = 2, staticmethod(F.stochastic_pool2d)


class StochasticPool3d(_StochasticPool):
    """Stochastic pooling (Zeiler & Fergus 2013) over three spatial axes."""

    nd, function = 3, staticmethod(F.stochastic_pool3d)


class _MixedPool(PoolModule):
    settings = ("kernel_size", "stride", "padding", "ceil_mode", "learnable", "mode", "data_format")

    def __init__(
        self,
        kernel_size: Any,
        stride: Any = None,
        padding: Any = 0,
        ceil_mode: bool = False,
        *,
        learnable: bool = False,
        mode: str = "layer",
        channels: int | None = None,
        input_size: Any = None,
        generator: torch.Generator | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = self._set_window(kernel_size, stride, padding, ceil_mode)
        self.learnable = check_bool(name, "learnable", learnable)
        self.mode = check_choice(name, "mode", mode, MODES)
        self.generator = check_generator(name, generator)
        self._set_format(data_format)
        if not self.learnable:
            self.register_parameter("alpha", None)
            return
        if self.mode == "layer":
            shape: tuple[int, ...] = ()
        elif self.mode == "channel":
            if channels is None:
                raise PoolingConfigError(
                    f"{name}: learnable=True with mode='channel' needs channels= (the number of "
                    f"input channels): alpha holds one value per channel."
                )
            shape = (check_int(name, "channels", channels, 1),)
        else:
            if input_size is None:
                raise PoolingConfigError(
                    f"{name}: learnable=True with mode='window' needs input_size= (the spatial input "
                    f"size): alpha holds one value per output position."
                )
            shape = window_spec(input_size, kernel_size, stride, padding, 1, ceil_mode, op=name).output_size
        self.alpha = torch.nn.Parameter(torch.full(shape, 0.5))

    def arguments(self) -> dict[str, Any]:
        """Learnable: ``alpha`` clamped to [0, 1] (straight-through). Otherwise ``lambda`` drawn
        in {0, 1} in training and 1/2 in evaluation."""
        alpha = None if self.alpha is None else clamp_straight_through(self.alpha, 0.0, 1.0)
        args = {name: getattr(self, name) for name in self.settings if name != "learnable"}
        rng = self.generator if self.training and alpha is None else None
        return {**args, "alpha": alpha, "training": self.training, "rng": rng}


class MixedPool1d(_MixedPool):
    """Mixed max-average pooling over one spatial axis (random or learnable mixing)."""

    nd, function = 1, staticmethod(F.mixed_pool1d)


class MixedPool2d(_MixedPool):
    """Mixed max-average pooling: random ``lambda`` (Yu et al. 2014) or learnable ``alpha`` (Lee et al. 2016).

    ``learnable=True`` holds ``alpha`` as a parameter of the mode's shape,
    initialised to 1/2: ``()`` for ``mode="layer"``, ``(channels,)`` for
    ``"channel"`` and the output's spatial shape for ``"window"`` (computed
    from ``input_size``). Its value is clamped to [0, 1] in the forward pass
    with a straight-through gradient, so it may leave [0, 1] and come back.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import MixedPool2d
    >>> m = MixedPool2d(2, learnable=True, mode="channel", channels=3)
    >>> m.alpha
    Parameter containing:
    tensor([0.5000, 0.5000, 0.5000], requires_grad=True)
    >>> m(torch.rand(1, 3, 8, 8)).shape
    torch.Size([1, 3, 4, 4])
    """

    nd, function = 2, staticmethod(F.mixed_pool2d)


class MixedPool3d(_MixedPool):
    """Mixed max-average pooling over three spatial axes (random or learnable mixing)."""

    nd, function = 3, staticmethod(F.mixed_pool3d)


class _S3Pool(_Sampling):
    """Random ordered rows per grid cell in training; every ``stride``-th row in evaluation."""

    settings = ("kernel_size", "grid_size", "stride", "data_format")

    def __init__(
        self,
        kernel_size: Any = 2,
        grid_size: Any = 2,
        *,
        stride: Any = 2,
        generator: torch.Generator | None = None,
        data_format: str = "channels_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size, self.grid_size, self.stride = s3_settings(
            name, self.nd, kernel_size, grid_size, stride
        )
        self.generator = check_generator(name, generator)
        self._set_format(data_format)


class S3Pool1d(_S3Pool):
    """S3Pool (Zhai et al. 2017) over one spatial axis."""

    nd, function = 1, staticmethod(F.s3_pool1d)


class S3Pool2d(_S3Pool):
    """S3Pool (Zhai et al., CVPR 2017): stride-1 max pooling, then stochastic spatial sampling.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch import S3Pool2d
    >>> S3Pool2d(2, grid_size=4).eval()(torch.rand(1, 3, 8, 8)).shape
    torch.Size([1, 3, 4, 4])
    """

    nd, function = 2, staticmethod(F.s3_pool2d)


class S3Pool3d(_S3Pool):
    """S3Pool (Zhai et al. 2017) over three spatial axes."""

    nd, function = 3, staticmethod(F.s3_pool3d)
