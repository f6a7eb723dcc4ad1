"""Max, average and Lp pooling in torch: native kernels when the call is one torch supports.

poolkit adds what ``torch.nn.functional`` lacks: ``padding="same"/"valid"``
and per-axis ``(lo, hi)`` pairs, dilation for average pooling, Lp pooling
that is correct for negative inputs, ``data_format="channels_last"`` and
TensorFlow's argmax format. Semantics are the NumPy reference's
(:mod:`poolkit.ops`), which are PyTorch's where PyTorch has the operator.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..._validate import check_bool, check_choice, check_int, check_real
from ...errors import PoolingConfigError
from ...geometry import WindowSpec
from .._core import aliases, crop_output, divisor, pad_to_windows, portable, upcast, windowed
from .._taps import AVG_POOL, MAX_POOL, native_padding, window_max, window_sum

__all__ = [
    "max_pool",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "lp_pool",
    "lp_pool1d",
    "lp_pool2d",
    "lp_pool3d",
]


def _unpad_indices(idx: torch.Tensor, spec: WindowSpec, padded: tuple[int, ...]) -> torch.Tensor:
    """Flat indices over the padded plane -> flat indices over the input plane."""
    flat = torch.zeros_like(idx)
    rest = idx
    coords = []
    for size in reversed(padded):
        coords.append(rest % size)
        rest = torch.div(rest, size, rounding_mode="floor")
    coords.reverse()
    for c, ax in zip(coords, spec.axes):
        flat = flat * ax.size + (c - ax.pad_lo)
    return flat


def tf_indices(flat: torch.Tensor, spatial: tuple[int, ...], include_batch: bool) -> torch.Tensor:
    """PyTorch per-plane indices (channels-first) -> ``tf.nn.max_pool_with_argmax``'s format."""
    n, c = flat.shape[:2]
    tail = (1,) * (flat.dim() - 2)
    out = flat * c + torch.arange(c, device=flat.device).reshape(1, c, *tail)
    if include_batch:
        out = out + torch.arange(n, device=flat.device).reshape(n, 1, *tail) * (math.prod(spatial) * c)
    return out


# --------------------------------------------------------------------------- max


def max_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    data_format: str = "channels_first",
    index_format: str = "torch",
    include_batch_in_index: bool = False,
) -> Any:
    """Max pooling (see :func:`poolkit.ops.max_pool` for the semantics).

    Calls ``torch.nn.functional.max_pool{1,2,3}d`` directly when the padding
    is symmetric and within PyTorch's limit; otherwise pads with ``-inf``
    (explicit padding plus the ceil-mode overhang) and runs the native
    kernel without padding, mapping indices back to the input plane.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import max_pool2d
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> max_pool2d(x, 3, stride=2, padding="same")  # TensorFlow's rule: pad 0 before, 1 after
    tensor([[[[10., 11.],
              [14., 15.]]]])
    """
    return _max_pool(
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        return_indices,
        data_format=data_format,
        index_format=index_format,
        include_batch_in_index=include_batch_in_index,
    )


def _max_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    data_format: str = "channels_first",
    index_format: str = "torch",
    include_batch_in_index: bool = False,
    ndim: int | None = None,
    op: str = "max_pool",
) -> Any:
    p, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format, dilation)
    return_indices = check_bool(op, "return_indices", return_indices)
    index_format = check_choice(op, "index_format", index_format, ("torch", "tf"))
    include_batch_in_index = check_bool(op, "include_batch_in_index", include_batch_in_index)
    if include_batch_in_index and index_format != "tf":
        raise PoolingConfigError(
            f"{op}: include_batch_in_index=True needs index_format='tf'; PyTorch indices are always per "
            f"(n, c) plane."
        )
    native = MAX_POOL[p.nd]
    pads = native_padding(spec)
    if pads is not None:
        out = native(p.x, spec.kernel_size, spec.stride, pads, spec.dilation, spec.ceil_mode, return_indices)
        y, idx = out if return_indices else (out, None)
    else:
        xp = pad_to_windows(p.x, spec, float("-inf"))
        out = native(xp, spec.kernel_size, spec.stride, 0, spec.dilation, False, return_indices)
        y, idx = out if return_indices else (out, None)
        y = crop_output(y, spec)
        if idx is not None:
            idx = _unpad_indices(crop_output(idx, spec), spec, tuple(xp.shape[2:]))
    if idx is None:
        return p.to_user(y)
    if index_format == "tf":
        idx = tf_indices(idx, spec.input_size, include_batch_in_index)
    return p.to_user(y), p.to_user(idx)


# --------------------------------------------------------------------------- average


def avg_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    dilation: Any = 1,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Average pooling (see :func:`poolkit.ops.avg_pool` for the divisor rules).

    Calls ``torch.nn.functional.avg_pool{1,2,3}d`` when PyTorch supports the
    call; with ``"same"``/asymmetric padding or dilation it sums strided
    views of a zero-padded input and divides by the geometry's divisor.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import avg_pool2d
    >>> x = torch.tensor([[[[1.0, 2], [3, 4]]]])
    >>> avg_pool2d(x, 2, stride=1, padding="same", count_include_pad=False)
    tensor([[[[2.5000, 3.0000],
              [3.5000, 4.0000]]]])
    """
    return _avg_pool(
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        count_include_pad,
        divisor_override,
        dilation=dilation,
        data_format=data_format,
    )


def _avg_pool(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    dilation: Any = 1,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "avg_pool",
) -> torch.Tensor:
    p, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format, dilation)
    include = check_bool(op, "count_include_pad", count_include_pad)
    if divisor_override is not None:
        divisor_override = check_int(op, "divisor_override", divisor_override, 1)
    nd = p.nd
    xc = upcast(p.x, cpu_only=True)
    pads = native_padding(spec)
    native_ok = (
        pads is not None
        and all(ax.dilation == 1 for ax in spec.axes)
        and not (nd == 1 and divisor_override is not None)
        # avg_pool3d's extra check, and its CUDA backward, which has no deterministic version
        and not (nd == 3 and (any(ax.size < ax.kernel for ax in spec.axes) or portable(xc)))
    )
    if native_ok:
        args: tuple[Any, ...] = (spec.kernel_size, spec.stride, pads, spec.ceil_mode, include)
        if nd > 1:
            args += (divisor_override,)
        y = AVG_POOL[nd](xc, *args)
    else:
        s = window_sum(xc, spec)
        y = s / divisor_override if divisor_override is not None else s / divisor(spec, include, s)
    return p.to_user(y.to(p.dtype))


# --------------------------------------------------------------------------- Lp


def lp_pool(
    x: torch.Tensor,
    norm_type: float,
    kernel_size: Any,
    stride: Any = None,
    ceil_mode: bool = False,
    *,
    padding: Any = 0,
    dilation: Any = 1,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Lp pooling ``(sum |x|^p)^(1/p)`` (see :func:`poolkit.ops.lp_pool`).

    Uses ``|x|``, so negative inputs with non-integer ``p`` give finite
    results (``torch.nn.functional.lp_pool2d`` returns NaN there,
    pytorch#184037); the gradient is 0 where a window sums to 0 and at
    ``x = 0``, including for ``p < 1`` and in double backward.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import lp_pool1d
    >>> lp_pool1d(torch.tensor([[[3.0, -4.0, 1.0, 0.0]]]), 2, 2)
    tensor([[[5., 1.]]])
    """
    return _lp_pool(
        x,
        norm_type,
        kernel_size,
        stride,
        ceil_mode,
        padding=padding,
        dilation=dilation,
        data_format=data_format,
    )


def _lp_pool(
    x: torch.Tensor,
    norm_type: Any,
    kernel_size: Any,
    stride: Any = None,
    ceil_mode: bool = False,
    *,
    padding: Any = 0,
    dilation: Any = 1,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "lp_pool",
) -> torch.Tensor:
    pw = check_real(op, "norm_type", norm_type, low=0.0, low_inclusive=False, allow_inf=True)
    p, spec = windowed(op, x, ndim, kernel_size, stride, padding, ceil_mode, data_format, dilation)
    if math.isinf(pw):
        return p.to_user(window_max(p.x.abs(), spec))
    xc = upcast(p.x, cpu_only=True)
    if pw == 1.0:
        a = xc.abs()
    elif pw == 2.0:
        a = xc * xc
    else:  # |x|^p with a zero, not NaN, gradient at x = 0 (double-where keeps autograd finite)
        zero = xc == 0
        a = torch.where(zero, torch.zeros_like(xc), torch.where(zero, torch.ones_like(xc), xc).abs() ** pw)
    s = window_sum(a, spec)
    if pw == 1.0:
        y = s
    else:
        live = s > 0
        y = torch.where(live, torch.where(live, s, torch.ones_like(s)) ** (1.0 / pw), torch.zeros_like(s))
    return p.to_user(y.to(p.dtype))


_a = aliases(max_pool, _max_pool, (1, 2, 3))
max_pool1d, max_pool2d, max_pool3d = _a["max_pool1d"], _a["max_pool2d"], _a["max_pool3d"]
_a = aliases(avg_pool, _avg_pool, (1, 2, 3))
avg_pool1d, avg_pool2d, avg_pool3d = _a["avg_pool1d"], _a["avg_pool2d"], _a["avg_pool3d"]
_a = aliases(lp_pool, _lp_pool, (1, 2, 3))
lp_pool1d, lp_pool2d, lp_pool3d = _a["lp_pool1d"], _a["lp_pool2d"], _a["lp_pool3d"]
