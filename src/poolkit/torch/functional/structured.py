"""Structured pooling in torch: spatial pyramids, YOLO's SPP/SPPF, masked, attention and segment pooling.

Semantics are the NumPy reference's (:mod:`poolkit.ops.pyramid`, ``masked``,
``attention``, ``segment``); gradients come from autograd over torch ops
whose backward is deterministic (pooling kernels, matrix products,
softmax), except :func:`segment_pool`, whose segment sums are a custom
autograd pair (see there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..._validate import check_choice, check_int, check_real
from ...errors import PoolingConfigError, PoolingInputError
from ...geometry import window_spec
from ...ops.pyramid import _check_kernel, _levels
from ...ops.segment import MODES as _SEGMENT_MODES
from .._core import aliases, nd_of, param_tensor, prepare, upcast
from .._taps import window_sum
from .adaptive import _adaptive_avg_pool, _adaptive_max_pool
from .classic import _avg_pool, _max_pool

__all__ = [
    "spatial_pyramid_pool",
    "spatial_pyramid_pool1d",
    "spatial_pyramid_pool2d",
    "spatial_pyramid_pool3d",
    "spp",
    "spp1d",
    "spp2d",
    "spp3d",
    "sppf",
    "sppf1d",
    "sppf2d",
    "sppf3d",
    "masked_pool",
    "masked_pool1d",
    "masked_pool2d",
    "masked_pool3d",
    "attention_pool",
    "attention_pool1d",
    "attention_pool2d",
    "attention_pool3d",
    "segment_pool",
]


# --------------------------------------------------------------------------- pyramids


def spatial_pyramid_pool(
    x: torch.Tensor,
    levels: Any = (1, 2, 4),
    mode: str = "max",
    *,
    bins: str = "adaptive",
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Spatial pyramid pooling (He et al., ECCV 2014): a fixed-length vector from any input size.

    ``(N, C, *spatial) -> (N, C * sum(n ** ndim))``, each level flattened as
    ``torch.flatten(pooled, 1)`` (channel, then bins row-major) whatever the
    layout; see :func:`poolkit.ops.spatial_pyramid_pool` for ``bins``.
    Levels are :func:`poolkit.torch.functional.adaptive_max_pool` /
    ``adaptive_avg_pool`` (``bins="paper"``: ``max_pool`` / ``avg_pool``
    with window ``ceil(a/n)`` and stride ``floor(a/n)``).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import spatial_pyramid_pool2d
    >>> spatial_pyramid_pool2d(torch.arange(16.0).reshape(1, 1, 4, 4), (1, 2))
    tensor([[15.,  5.,  7., 13., 15.]])
    """
    return _spatial_pyramid_pool(x, levels, mode, bins=bins, data_format=data_format)


def _spatial_pyramid_pool(
    x: torch.Tensor,
    levels: Any = (1, 2, 4),
    mode: str = "max",
    *,
    bins: str = "adaptive",
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "spatial_pyramid_pool",
) -> torch.Tensor:
    levels = _levels(op, levels)
    mode = check_choice(op, "mode", mode, ("max", "avg"))
    bins = check_choice(op, "bins", bins, ("adaptive", "paper"))
    nd = nd_of(op, x, ndim)
    p = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    flat = []
    for level in levels:
        if bins == "adaptive":
            impl = _adaptive_max_pool if mode == "max" else _adaptive_avg_pool
            y = impl(p.x, level, ndim=nd, op=op)
        else:
            for axis, a in enumerate(p.spatial):
                if a < level:
                    raise PoolingInputError(
                        f"{op}: bins='paper' needs at least {level} samples per axis for level {level}, got "
                        f"{a} on spatial axis {axis}. Use bins='adaptive' (any size works)."
                    )
            k = tuple(math.ceil(a / level) for a in p.spatial)
            s = tuple(a // level for a in p.spatial)
            y = (_max_pool if mode == "max" else _avg_pool)(p.x, k, s, ndim=nd, op=op)
        flat.append(y.flatten(1))
    return torch.cat(flat, dim=1)


def spp(
    x: torch.Tensor, kernel_sizes: Any = (5, 9, 13), *, data_format: str = "channels_first"
) -> torch.Tensor:
    """YOLO's SPP block: ``concat[x, m_5(x), m_9(x), m_13(x)]`` along the channel axis.

    ``m_k`` is max pooling with kernel ``k`` (odd), stride 1 and padding
    ``k // 2``; the output has ``C * (1 + len(kernel_sizes))`` channels.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import spp2d, sppf2d
    >>> x = torch.randn(1, 2, 9, 9)
    >>> bool((spp2d(x) == sppf2d(x)).all())
    True
    """
    return _spp(x, kernel_sizes, data_format=data_format)


def sppf(
    x: torch.Tensor, kernel_size: int = 5, repeats: int = 3, *, data_format: str = "channels_first"
) -> torch.Tensor:
    """YOLOv5's SPPF: ``concat[x, m(x), m(m(x)), m(m(m(x)))]`` with ``m`` = max pooling ``(k, 1, k // 2)``.

    Equals :func:`spp` with kernels ``k, 2k-1, 3k-2, ...`` exactly, ties
    included (see :func:`poolkit.ops.sppf`).
    """
    return _sppf(x, kernel_size, repeats, data_format=data_format)


def _spp(
    x: torch.Tensor,
    kernel_sizes: Any = (5, 9, 13),
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "spp",
) -> torch.Tensor:
    if not isinstance(kernel_sizes, Sequence) or isinstance(kernel_sizes, str) or not kernel_sizes:
        raise PoolingConfigError(
            f"{op}: kernel_sizes must be a non-empty sequence of odd ints, got {kernel_sizes!r}."
        )
    ks = [_check_kernel(op, k) for k in kernel_sizes]
    nd = nd_of(op, x, ndim)
    p = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    outs = [p.x] + [_max_pool(p.x, k, 1, k // 2, ndim=nd, op=op) for k in ks]
    return p.to_user(torch.cat(outs, dim=1))


def _sppf(
    x: torch.Tensor,
    kernel_size: int = 5,
    repeats: int = 3,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "sppf",
) -> torch.Tensor:
    k = _check_kernel(op, kernel_size)
    repeats = check_int(op, "repeats", repeats, 1)
    nd = nd_of(op, x, ndim)
    p = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    outs = [p.x]
    for _ in range(repeats):
        outs.append(_max_pool(outs[-1], k, 1, k // 2, ndim=nd, op=op))
    return p.to_user(torch.cat(outs, dim=1))


# --------------------------------------------------------------------------- masked


def masked_pool(
    x: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "avg",
    kernel_size: Any = None,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Pooling over the positions a mask selects (masked average pooling of few-shot segmentation).

    Global (``kernel_size=None``): ``(N, C, *spatial) -> (N, C)``; with a
    kernel: sliding windows, ``(N, C, *out)``. ``avg``: ``sum(m x) / sum(m)``,
    ``sum``: ``sum(m x)``, ``max``: the maximum over ``m > 0``; where the
    mask (in the window) sums to 0 every mode gives 0 and no gradient. See
    :func:`poolkit.ops.masked_pool`. Gradients: ``x``, and ``mask`` for avg
    and sum (``max``: 0). The mask's values are not checked (``>= 0``,
    finite: a check would need a device sync).

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import masked_pool2d
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> masked_pool2d(x, torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
    tensor([[1.5000]])
    """
    return _masked_pool(x, mask, mode, kernel_size, stride, padding, ceil_mode, data_format=data_format)


def _masked_pool(
    x: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "avg",
    kernel_size: Any = None,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "masked_pool",
) -> torch.Tensor:
    mode = check_choice(op, "mode", mode, ("avg", "sum", "max"))
    nd = nd_of(op, x, ndim, kernel_size)
    p = prepare(x, op=op, nd=nd, data_format=data_format, allow_unbatched=False)
    if not isinstance(mask, torch.Tensor):
        raise PoolingInputError(f"{op} expects mask as a torch.Tensor, got {type(mask).__name__}.")
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise PoolingInputError(
            f"{op} expects a floating-point (or bool) mask, got dtype {str(mask.dtype).replace('torch.', '')}."
        )
    n, c = p.x.shape[:2]
    want = [(n, c, *p.spatial), (n, 1, *p.spatial)]
    if p.channels_last:
        want = [(w[0], *w[2:], w[1]) for w in want]
    if tuple(mask.shape) not in want:
        raise PoolingInputError(
            f"{op}: mask must have shape {want[0]} (like x) or {want[1]} (one channel), got {tuple(mask.shape)}."
        )
    xc = upcast(p.x, cpu_only=True)
    m = (mask.movedim(-1, 1) if p.channels_last else mask).to(xc.dtype)
    global_ = kernel_size is None
    if global_:
        spec = window_spec(p.spatial, p.spatial, op=op)
        kernel_size, stride, padding, ceil_mode = p.spatial, None, 0, False
    else:
        spec = window_spec(p.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    den = window_sum(m, spec)  # 0 means the window selects nothing
    live = den > 0
    if mode == "max":
        xm = torch.where(m > 0, xc, torch.tensor(-math.inf, dtype=xc.dtype, device=xc.device))
        y = _max_pool(xm, kernel_size, stride, padding, 1, ceil_mode, ndim=nd, op=op)
        y = torch.where(live, y, torch.zeros_like(y))
    else:
        num = window_sum(xc * m, spec)
        if mode == "sum":
            y = num
        else:
            y = torch.where(live, num / torch.where(live, den, torch.ones_like(den)), torch.zeros_like(num))
    out = p.to_user(y.to(p.dtype))
    return out.reshape(out.shape[0], -1) if global_ else out


# --------------------------------------------------------------------------- attention


def attention_pool(
    x: torch.Tensor,
    query: Any,
    wq: Any,
    wk: Any,
    wv: Any,
    wo: Any,
    num_heads: int,
    *,
    bq: Any = None,
    bk: Any = None,
    bv: Any = None,
    bo: Any = None,
    pos_embed: Any = None,
    data_format: str = "channels_first",
) -> torch.Tensor:
    """Multi-head attention pooling of the spatial positions (CLIP's AttentionPool2d, Set Transformer's PMA).

    ``query=None``: CLIP mode, the mean token queries ``[mean, t_1..t_S]``
    (``+ pos_embed``, ``(S + 1, C)``) and the result is ``(N, E_out)``; a
    ``(Q, C)`` tensor: PMA mode, ``Q`` seeds query the ``S`` tokens
    (``pos_embed`` ``(S, C)``), result ``(N, Q, E_out)``. Exactly
    ``torch.nn.functional.multi_head_attention_forward(...,
    use_separate_proj_weight=True)``; see :func:`poolkit.ops.attention_pool`.
    Plain matrix products and ``softmax``: every argument is differentiable
    (tensors with ``requires_grad``), double backward included.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import attention_pool
    >>> x = torch.arange(8.0).reshape(1, 2, 2, 2)
    >>> eye, zero = torch.eye(2), torch.zeros(2, 2)
    >>> attention_pool(x, None, zero, zero, eye, eye, num_heads=2)
    tensor([[1.5000, 5.5000]])
    """
    opt = {"bq": bq, "bk": bk, "bv": bv, "bo": bo, "pos_embed": pos_embed}
    return _attention_pool(x, query, wq, wk, wv, wo, num_heads, **opt, data_format=data_format)


def _check_shape(op: str, name: str, t: torch.Tensor, shape: tuple[int, ...], rule: str) -> None:
    if not t.is_floating_point():
        raise PoolingInputError(
            f"{op} expects a floating-point {name} (float16, float32 or float64), got dtype "
            f"{str(t.dtype).replace('torch.', '')}."
        )
    if tuple(t.shape) != shape:
        raise PoolingInputError(f"{op}: {name} must have shape {shape} ({rule}), got shape {tuple(t.shape)}.")


def _attention_pool(
    x: torch.Tensor,
    query: Any,
    wq: Any,
    wk: Any,
    wv: Any,
    wo: Any,
    num_heads: int,
    *,
    bq: Any = None,
    bk: Any = None,
    bv: Any = None,
    bo: Any = None,
    pos_embed: Any = None,
    data_format: str = "channels_first",
    ndim: int | None = None,
    op: str = "attention_pool",
) -> torch.Tensor:
    nd = nd_of(op, x, ndim)
    p = prepare(x, op=op, nd=nd, data_format=data_format)
    h = check_int(op, "num_heads", num_heads, 1)
    n, c = p.x.shape[:2]
    s = math.prod(p.spatial)
    if s == 0:
        raise PoolingInputError(f"{op}: x has no spatial positions (spatial shape {p.spatial}).")
    xc = upcast(p.x, cpu_only=True)
    a: dict[str, torch.Tensor] = {}
    wq = param_tensor(wq, xc) if not isinstance(wq, torch.Tensor) else wq
    if wq.dim() != 2 or wq.shape[1] != c or wq.shape[0] == 0:
        raise PoolingInputError(
            f"{op}: wq must have shape (E, C) = (E, {c}) with E >= 1 (C = the channels of x), "
            f"got shape {tuple(wq.shape)}."
        )
    e = wq.shape[0]
    if e % h:
        ok = [d for d in range(1, e + 1) if e % d == 0]
        raise PoolingConfigError(
            f"{op}: the embedding size E = wq.shape[0] = {e} must be divisible by num_heads={h}. "
            f"Pass num_heads in {ok}."
        )
    given = {
        "wq": (wq, (e, c), "E, C"),
        "wk": (wk, (e, c), "E, C like wq"),
        "wv": (wv, (e, c), "E, C like wq"),
    }
    wo_t = wo if isinstance(wo, torch.Tensor) else param_tensor(wo, xc)
    if wo_t.dim() != 2 or wo_t.shape[1] != e:
        raise PoolingInputError(
            f"{op}: wo must have shape (E_out, E) = (E_out, {e}) (E = wq.shape[0]), got shape {tuple(wo_t.shape)}."
        )
    e_out = wo_t.shape[0]
    given["wo"] = (wo_t, tuple(wo_t.shape), "E_out, E")
    pma = query is not None
    if pma:
        qt = query if isinstance(query, torch.Tensor) else param_tensor(query, xc)
        if qt.dim() != 2 or qt.shape[1] != c or qt.shape[0] == 0:
            raise PoolingInputError(
                f"{op}: query must be None (CLIP mode) or Q >= 1 seeds shaped (Q, C) = (Q, {c}), "
                f"got shape {tuple(qt.shape)}. Pass one seed as query[None]."
            )
        given["query"] = (qt, tuple(qt.shape), "Q, C")
    length = s if pma else s + 1
    pos_rule = (
        "S, C: one row per position in PMA mode" if pma else "S + 1, C: the mean token, then S positions"
    )
    for name, val, shape in (("bq", bq, (e,)), ("bk", bk, (e,)), ("bv", bv, (e,)), ("bo", bo, (e_out,))):
        if val is not None:
            given[name] = (val, shape, f"one per row of w{name[1]}")
    if pos_embed is not None:
        given["pos_embed"] = (pos_embed, (length, c), pos_rule)
    for name, (val, shape, rule) in given.items():
        t = val if isinstance(val, torch.Tensor) else param_tensor(val, xc)
        _check_shape(op, name, t, shape, rule)
        a[name] = t.to(device=xc.device, dtype=xc.dtype)
    xt = xc.flatten(2).transpose(1, 2)  # (N, S, C), positions row-major
    if pma:
        tokens = xt if "pos_embed" not in a else xt + a["pos_embed"]
        u = a["query"][None]  # (1, Q, C)
    else:
        tokens = torch.cat([xt.mean(dim=1, keepdim=True), xt], dim=1)
        if "pos_embed" in a:
            tokens = tokens + a["pos_embed"]
        u = tokens[:, :1]  # (N, 1, C)
    d = e // h

    def project(t: torch.Tensor, w: str, b: str) -> torch.Tensor:
        y = t @ a[w].T
        if b in a:
            y = y + a[b]
        return y.reshape(*y.shape[:-1], h, d).transpose(-2, -3)  # (.., H, T, D)

    qh = project(u, "wq", "bq") * (1.0 / math.sqrt(d))
    kh, vh = project(tokens, "wk", "bk"), project(tokens, "wv", "bv")
    att = torch.softmax(qh @ kh.transpose(-1, -2), dim=-1)  # (N, H, Q, L)
    o = (att @ vh).transpose(1, 2).reshape(n, -1, e)  # (N, Q, E)
    y = o @ a["wo"].T
    if "bo" in a:
        y = y + a["bo"]
    out = y if pma else y[:, 0]
    if not p.batched:
        out = out[0]
    return out.to(p.dtype)


# --------------------------------------------------------------------------- segments


def _segment_plan(code: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Items in segment order (a stable sort) and the length of every segment ``0 <= code < slots``."""
    if torch.onnx.is_in_onnx_export():  # no stable sort or searchsorted in ONNX: integer counts (exact)
        order = torch.argsort(code)  # the float64 running sums below do not depend on the order
        lengths = torch.zeros(slots, dtype=torch.int64, device=code.device).scatter_add(
            0, code, torch.ones_like(code)
        )
    else:
        order = torch.argsort(code, stable=True)
        starts = torch.searchsorted(code[order], torch.arange(slots, device=code.device))
        end = torch.full((1,), code.numel(), dtype=starts.dtype, device=code.device)
        lengths = torch.diff(starts, append=end)
    return order, lengths


def _segment_sums(v: torch.Tensor, order: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum of ``v``'s rows per segment, in item order within each segment."""
    vs = v.index_select(0, order)
    if not torch.onnx.is_in_onnx_export():
        return torch.segment_reduce(vs, "sum", lengths=lengths, axis=0, unsafe=True)
    # ONNX has no segment reduction: differences of a float64 running sum.
    wide = torch.cat([torch.zeros_like(vs[:1], dtype=torch.float64), vs.to(torch.float64).cumsum(0)])
    ends = lengths.cumsum(0)
    return (wide.index_select(0, ends) - wide.index_select(0, ends - lengths)).to(v.dtype)


class _SegmentSum(torch.autograd.Function):
    """Rows of ``v`` summed per segment; the adjoint is :class:`_SegmentGather` (no scatter)."""

    @staticmethod
    def forward(
        ctx: Any, v: torch.Tensor, code: torch.Tensor, order: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(code, order, lengths)
        return _segment_sums(v, order, lengths)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        code, order, lengths = ctx.saved_tensors
        return _SegmentGather.apply(g, code, order, lengths), None, None, None


class _SegmentGather(torch.autograd.Function):
    """``out[i] = g[code[i]]``; the adjoint is :class:`_SegmentSum`."""

    @staticmethod
    def forward(
        ctx: Any, g: torch.Tensor, code: torch.Tensor, order: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(code, order, lengths)
        return g.index_select(0, code)

    @staticmethod
    def backward(ctx: Any, gg: torch.Tensor) -> tuple[Any, ...]:
        code, order, lengths = ctx.saved_tensors
        return _SegmentSum.apply(gg, code, order, lengths), None, None, None


def segment_pool(
    x: torch.Tensor,
    batch: torch.Tensor,
    num_segments: int | None = None,
    mode: str = "sum",
    *,
    t: Any = 1.0,
    p: Any = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Pool the rows of ``x`` that share a segment id: ``(num_items, *F) -> (num_segments, *F)``.

    Modes, empty-segment rule (zeros, no gradient) and gradients as
    :func:`poolkit.ops.segment_pool`; ``t`` and ``p`` may be tensors with
    ``requires_grad`` (scalar or shape ``F``).

    Deterministic on every device: items are stably sorted by segment and
    each segment summed by ``torch.segment_reduce`` (one fixed order per
    segment, item order); the backward of a segment sum is a gather and the
    backward of that gather is the segment sum again (a custom autograd
    pair, so double backward works), never a scatter-add. Under ONNX export
    the sums are differences of a float64 running sum (ONNX has no segment
    reduction). ``max`` takes the segment maximum with ``scatter_reduce``
    ``amax`` (order-free) and gathers the winning item (first maximum in
    item order; the last NaN where the segment holds a NaN).

    ``num_segments=None`` reads ``batch.max() + 1`` from the device (a sync,
    and a data-dependent shape): pass it for ``torch.compile`` and export.
    With ``num_segments`` given, ids outside ``[0, num_segments)`` are
    ignored rather than reported (a check would need a sync); ``t`` and
    ``p`` given as tensors are not range-checked either.

    Examples
    --------
    >>> import torch
    >>> from poolkit.torch.functional import segment_pool
    >>> x = torch.tensor([[1.0], [2.0], [4.0]])
    >>> segment_pool(x, torch.tensor([0, 0, 2]), num_segments=4, mode="mean")
    tensor([[1.5000],
            [0.0000],
            [4.0000],
            [0.0000]])
    """
    return _segment_pool(x, batch, num_segments, mode, t=t, p=p, eps=eps)


def _segment_param(
    op: str, name: str, value: Any, feat: tuple[int, ...], positive: bool, like: torch.Tensor
) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.dim() and tuple(value.shape) != feat:
            raise PoolingInputError(
                f"{op}: {name} must be a scalar or have the feature shape {feat}, got shape {tuple(value.shape)}."
            )
        return value.to(device=like.device, dtype=like.dtype)
    try:
        shape = tuple(torch.as_tensor(value).shape)
    except (TypeError, ValueError, RuntimeError):
        shape = ()
    if shape == ():
        check_real(op, name, value, low=0.0 if positive else None, low_inclusive=not positive)
        return torch.as_tensor(float(value), dtype=like.dtype, device=like.device)
    a = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if shape != feat:
        raise PoolingInputError(
            f"{op}: {name} must be a scalar or have the feature shape {feat}, got shape {shape}."
        )
    host = a.detach().cpu()
    if not bool(torch.isfinite(host).all()) or (positive and bool((host <= 0).any())):
        raise PoolingInputError(
            f"{op}: every {name} must be finite{' and > 0' if positive else ''}, got {host}."
        )
    return a


def _segment_pool(
    x: torch.Tensor,
    batch: torch.Tensor,
    num_segments: int | None = None,
    mode: str = "sum",
    *,
    t: Any = 1.0,
    p: Any = 1.0,
    eps: float = 1e-6,
    ndim: int | None = None,
    op: str = "segment_pool",
) -> torch.Tensor:
    mode = check_choice(op, "mode", mode, _SEGMENT_MODES)
    if not isinstance(x, torch.Tensor):
        raise PoolingInputError(
            f"{op} expects a torch.Tensor, got {type(x).__name__}. Use torch.as_tensor(x), or poolkit.ops for "
            f"NumPy arrays."
        )
    if not x.is_floating_point():
        raise PoolingInputError(
            f"{op} expects a floating-point x (float16, float32 or float64), got dtype "
            f"{str(x.dtype).replace('torch.', '')}. Convert with x.float()."
        )
    if x.dim() < 1:
        raise PoolingInputError(f"{op} expects x shaped (num_items, *features), got a scalar.")
    seg = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(batch)
    if (
        seg.dim() != 1
        or seg.shape[0] != x.shape[0]
        or (seg.numel() and (seg.is_floating_point() or seg.is_complex() or seg.dtype == torch.bool))
    ):
        raise PoolingInputError(
            f"{op}: batch must be a 1-D integer array with one segment id per row of x ({x.shape[0]}), got "
            f"shape {tuple(seg.shape)} and dtype {str(seg.dtype).replace('torch.', '')}."
        )
    seg = seg.to(device=x.device, dtype=torch.int64)
    if num_segments is None:  # data-dependent output size: one sync, which also checks the ids
        lo, hi = (int(v) for v in torch.aminmax(seg)) if seg.numel() else (0, -1)
        if lo < 0:
            raise PoolingInputError(f"{op}: segment ids must be >= 0, got {lo}.")
        n = hi + 1
    else:
        n = check_int(op, "num_segments", num_segments, 0)
    xc = upcast(x)
    feat = tuple(x.shape[1:])
    # Slot 0 holds ids < 0 and slot n + 1 ids >= n (both dropped); segment s is slot s + 1.
    code = (seg + 1).clamp(0, n + 1)
    order, lengths = _segment_plan(code, n + 2)
    counts = lengths[1 : n + 1]
    shape_n = (n, *[1] * len(feat))
    nonempty = (counts > 0).reshape(shape_n)

    def seg_sum(v: torch.Tensor) -> torch.Tensor:
        return _SegmentSum.apply(v, code, order, lengths)[1 : n + 1]

    def per_item(v: torch.Tensor) -> torch.Tensor:  # (n, *F) -> (items, *F), deterministic adjoint
        padded = torch.cat([torch.zeros_like(v[:1]), v, torch.zeros_like(v[:1])])
        return _SegmentGather.apply(padded, code, order, lengths)

    def seg_max(v: torch.Tensor) -> torch.Tensor:
        idx = code.reshape(-1, *[1] * len(feat)).expand_as(v)
        init = torch.full((n + 2, *feat), -math.inf, dtype=v.dtype, device=v.device)
        m = init.scatter_reduce(0, idx, v, "amax", include_self=True)
        has_nan = torch.zeros((n + 2, *feat), dtype=v.dtype, device=v.device).scatter_reduce(
            0, idx, torch.isnan(v).to(v.dtype), "amax", include_self=True
        )
        return torch.where(has_nan > 0, torch.full_like(m, math.nan), m)[1 : n + 1]

    if mode == "sum":
        y = seg_sum(xc)
    elif mode == "mean":
        y = seg_sum(xc) / counts.clamp(min=1).reshape(shape_n).to(xc.dtype)
    elif mode == "max":
        m = seg_max(xc.detach())
        items = torch.arange(x.shape[0], device=x.device).reshape(-1, *[1] * len(feat)).expand_as(xc)
        idx = code.reshape(-1, *[1] * len(feat)).expand_as(xc)
        mi = per_item(m).detach()
        big = torch.full_like(items, x.shape[0])
        first = torch.full((n + 2, *feat), x.shape[0], dtype=torch.int64, device=x.device).scatter_reduce(
            0, idx, torch.where(xc.detach() == mi, items, big), "amin", include_self=True
        )[1 : n + 1]
        last_nan = torch.full((n + 2, *feat), -1, dtype=torch.int64, device=x.device).scatter_reduce(
            0,
            idx,
            torch.where(torch.isnan(xc.detach()), items, torch.full_like(items, -1)),
            "amax",
            include_self=True,
        )[1 : n + 1]
        winner = torch.where(torch.isnan(m), last_nan, first)
        winner = torch.where(nonempty & (winner >= 0) & (winner < x.shape[0]), winner, x.shape[0])
        spare = torch.cat([xc, torch.zeros_like(xc[:1])])  # empty segments read a zero row
        picked = spare.gather(0, winner)
        y = torch.where(nonempty, picked, torch.zeros_like(picked))
    elif mode == "softmax":
        tt = _segment_param(op, "t", t, feat, False, xc)
        tx = xc * tt
        m = seg_max(tx.detach())
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        ex = torch.exp(tx - per_item(m))
        total = seg_sum(ex)
        w = ex / per_item(torch.where(total > 0, total, torch.ones_like(total)))
        y = seg_sum(w * xc)
    else:
        pp = _segment_param(op, "p", p, feat, True, xc)
        eps = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
        xe = xc.clamp(min=eps)
        mean = seg_sum(xe**pp) / counts.clamp(min=1).reshape(shape_n).to(xc.dtype)
        safe = torch.where(nonempty, mean, torch.ones_like(mean))
        y = torch.where(nonempty, safe ** (1 / pp), torch.zeros_like(safe))
    return y.to(x.dtype)


# --------------------------------------------------------------------------- aliases

_a = aliases(spatial_pyramid_pool, _spatial_pyramid_pool, (1, 2, 3))
spatial_pyramid_pool1d, spatial_pyramid_pool2d, spatial_pyramid_pool3d = (
    _a[f"spatial_pyramid_pool{i}d"] for i in (1, 2, 3)
)
_a = aliases(spp, _spp, (1, 2, 3))
spp1d, spp2d, spp3d = (_a[f"spp{i}d"] for i in (1, 2, 3))
_a = aliases(sppf, _sppf, (1, 2, 3))
sppf1d, sppf2d, sppf3d = (_a[f"sppf{i}d"] for i in (1, 2, 3))
_a = aliases(masked_pool, _masked_pool, (1, 2, 3))
masked_pool1d, masked_pool2d, masked_pool3d = (_a[f"masked_pool{i}d"] for i in (1, 2, 3))
_a = aliases(attention_pool, _attention_pool, (1, 2, 3))
attention_pool1d, attention_pool2d, attention_pool3d = (_a[f"attention_pool{i}d"] for i in (1, 2, 3))
