"""Spatial pyramids, YOLO's SPP/SPPF, masked, attention and segment pooling in ``keras.ops``.

Each function has the NumPy operator's signature (``data_format`` defaults
to Keras' image data format) and its semantics: see :mod:`poolkit.ops.pyramid`,
``masked``, ``attention`` and ``segment``. Max-type selections keep the
reference's winner (the first maximum, a NaN wins), so every gradient equals
the NumPy ``vjp``; sums over windows are strided slices (``_core``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from ..._validate import check_choice, check_int, check_real
from ...errors import PoolingConfigError, PoolingInputError
from ...geometry import window_spec
from ...ops._input import float_dtype_error
from ...ops.pyramid import _check_kernel, _levels
from ...ops.segment import MODES as SEGMENT_MODES
from .._core import Layout, MaxAxis, pad_windows, public, scalar, separable_max, window_axes, window_sum
from .classic import _setup, adaptive_avg_pool, adaptive_max_pool, avg_pool, max_pool

__all__ = ["spatial_pyramid_pool", "spp", "sppf", "masked_pool", "attention_pool", "segment_pool"]


def _compute(x: Any) -> Any:
    """Half precision is computed in float32 (as the reference)."""
    return ops.cast(x, "float32") if str(x.dtype) in ("float16", "bfloat16") else x


def _tensor(x: Any) -> Any:
    return ops.convert_to_tensor(x) if isinstance(x, (np.ndarray, np.generic, list, tuple, float)) else x


# --------------------------------------------------------------------------- pyramids


@public
def spatial_pyramid_pool(
    x: Any,
    levels: Any = (1, 2, 4),
    mode: str = "max",
    *,
    bins: str = "adaptive",
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "spatial_pyramid_pool",
) -> Any:
    """Spatial pyramid pooling (see :func:`poolkit.ops.spatial_pyramid_pool`): ``(N, C * sum(n ** ndim))``.

    Each level is flattened channel first, then its bins in row-major order
    (``torch.flatten(pooled, 1)``), whatever the ``data_format``.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import spatial_pyramid_pool2d
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> np.asarray(spatial_pyramid_pool2d(x, (1, 2), data_format="channels_first")).tolist()
    [[15.0, 5.0, 7.0, 13.0, 15.0]]
    """
    levels = _levels(op, levels)
    mode = check_choice(op, "mode", mode, ("max", "avg"))
    bins = check_choice(op, "bins", bins, ("adaptive", "paper"))
    x = _tensor(x)
    layout, spatial = _setup(op, x, ndim, data_format)
    df = "channels_last" if layout.channels_last else "channels_first"
    c = x.shape[layout.channel_axis]
    flat = []
    for level in levels:
        if bins == "adaptive":
            pool = adaptive_max_pool if mode == "max" else adaptive_avg_pool
            y = pool(x, (level,) * layout.nd, data_format=df, ndim=layout.nd, op=op)
        else:
            for axis, a in enumerate(spatial):
                if a < level:
                    raise PoolingInputError(
                        f"{op}: bins='paper' needs at least {level} samples per axis for level {level}, got "
                        f"{a} on spatial axis {axis}. Use bins='adaptive' (any size works)."
                    )
            k = tuple(math.ceil(a / level) for a in spatial)
            s = tuple(a // level for a in spatial)
            pool = max_pool if mode == "max" else avg_pool
            y = pool(x, k, s, data_format=df, ndim=layout.nd, op=op)
        if layout.channels_last:  # channel first, then the bins in row-major order
            y = ops.moveaxis(y, -1, 1)
        flat.append(ops.reshape(y, (-1, c * math.prod(y.shape[2:]))))
    return ops.concatenate(flat, axis=1)


def _odd_kernels(op: str, kernel_sizes: Any) -> list[int]:
    if not isinstance(kernel_sizes, Sequence) or isinstance(kernel_sizes, str) or not kernel_sizes:
        raise PoolingConfigError(
            f"{op}: kernel_sizes must be a non-empty sequence of odd ints, got {kernel_sizes!r}."
        )
    return [_check_kernel(op, k) for k in kernel_sizes]


@public
def spp(
    x: Any,
    kernel_sizes: Any = (5, 9, 13),
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "spp",
) -> Any:
    """YOLO's SPP block ``concat[x, m_5(x), m_9(x), m_13(x)]`` on the channel axis (see :func:`poolkit.ops.spp`).

    ``m_k`` is max pooling with kernel ``k``, stride 1 and ``k // 2`` padding
    (``-inf``), so every branch keeps the spatial size.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import spp2d
    >>> tuple(spp2d(np.zeros((1, 6, 6, 2)), data_format="channels_last").shape)
    (1, 6, 6, 8)
    """
    ks = _odd_kernels(op, kernel_sizes)
    x = _tensor(x)
    layout, _ = _setup(op, x, ndim, data_format)
    df = "channels_last" if layout.channels_last else "channels_first"
    outs = [x] + [max_pool(x, k, 1, k // 2, data_format=df, ndim=layout.nd, op=op) for k in ks]
    return ops.concatenate(outs, axis=layout.channel_axis)


@public
def sppf(
    x: Any,
    kernel_size: int = 5,
    repeats: int = 3,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "sppf",
) -> Any:
    """YOLOv5's SPPF ``concat[x, m(x), m(m(x)), ...]`` (see :func:`poolkit.ops.sppf`); equals ``spp(x, (5, 9, 13))``.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import spp2d, sppf2d
    >>> x = np.random.default_rng(0).standard_normal((1, 9, 9, 2))
    >>> bool(np.array_equal(spp2d(x, data_format="channels_last"), sppf2d(x, data_format="channels_last")))
    True
    """
    k = _check_kernel(op, kernel_size)
    repeats = check_int(op, "repeats", repeats, 1)
    x = _tensor(x)
    layout, _ = _setup(op, x, ndim, data_format)
    df = "channels_last" if layout.channels_last else "channels_first"
    outs = [x]
    for _ in range(repeats):
        outs.append(max_pool(outs[-1], k, 1, k // 2, data_format=df, ndim=layout.nd, op=op))
    return ops.concatenate(outs, axis=layout.channel_axis)


# --------------------------------------------------------------------------- masked


def _check_mask(op: str, x: Any, mask: Any, layout: Layout) -> Any:
    """The mask's shape (like ``x`` or one channel) and dtype (float or bool); NumPy masks' values too."""
    if isinstance(mask, np.ndarray):
        m = mask.astype(np.float64) if mask.dtype == bool else mask
        if np.issubdtype(m.dtype, np.floating) and (np.any(m < 0) or not np.isfinite(m).all()):
            raise PoolingInputError(f"{op}: mask values must be finite and >= 0 (binary or soft weights).")
    mask = _tensor(mask)
    dtype = keras.backend.standardize_dtype(mask.dtype)
    if not (keras.backend.is_float_dtype(dtype) or dtype == "bool"):
        raise float_dtype_error(op, dtype, "mask", 'astype("float32")')
    shape = tuple(x.shape)
    one = list(shape)
    one[layout.channel_axis] = 1
    got = tuple(mask.shape)

    def same(a: Sequence[Any], b: Sequence[Any]) -> bool:
        return len(a) == len(b) and all(u is None or v is None or u == v for u, v in zip(a, b))

    if not (same(got, shape) or same(got, one)):
        raise PoolingInputError(
            f"{op}: mask must have shape {shape} (like x) or {tuple(one)} (one channel), got {got}."
        )
    return mask


@public
def masked_pool(
    x: Any,
    mask: Any,
    mode: str = "avg",
    kernel_size: Any = None,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "masked_pool",
) -> Any:
    """Pooling over the positions a mask selects (see :func:`poolkit.ops.masked_pool`).

    ``kernel_size=None`` pools globally to ``(N, C)``; with a kernel it slides
    windows (PyTorch's geometry, padding masked out). ``avg`` is
    ``sum(m x) / sum(m)``, ``sum`` ``sum(m x)``, ``max`` the first maximum over
    ``m > 0``; an empty mask gives 0 with no gradient. Gradients for ``x`` and
    ``mask`` (0 for ``max``) come from autodiff and equal the reference's.
    Mask values given as tensors are not checked (``>= 0``, finite): that
    needs their values; NumPy masks are.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import masked_pool2d
    >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
    >>> np.asarray(masked_pool2d(x, np.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 2, 2, 1))).tolist()
    [[1.5]]
    """
    mode = check_choice(op, "mode", mode, ("avg", "sum", "max"))
    x = _tensor(x)
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size)
    m = _check_mask(op, x, mask, layout)
    dtype = x.dtype
    xc = _compute(x)
    m = ops.cast(m, xc.dtype)
    if kernel_size is None:
        if not (stride is None and padding in (0, "valid") and not ceil_mode):
            raise PoolingConfigError(
                f"{op}: stride, padding and ceil_mode need a kernel_size (kernel_size=None pools globally)."
            )
        den = ops.sum(ops.broadcast_to(m, ops.shape(xc)), axis=layout.spatial_axes)
        if mode == "max":
            xm = ops.where(ops.greater(m, 0), xc, float("-inf"))
            y = separable_max(xm, [MaxAxis(a, s, None) for a, s in zip(layout.spatial_axes, spatial)])[0]
            y = ops.squeeze(y, axis=layout.spatial_axes)
        else:
            num = ops.sum(xc * m, axis=layout.spatial_axes)
    else:
        spec = window_spec(spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
        den = window_sum(ops.broadcast_to(m, ops.shape(xc)), layout, spec)
        if mode == "max":
            xm = ops.where(ops.greater(m, 0), xc, float("-inf"))  # unused positions never win
            y = separable_max(pad_windows(xm, layout, spec, float("-inf")), window_axes(layout, spec))[0]
        else:
            num = window_sum(xc * m, layout, spec)
    live = ops.greater(den, 0)
    if mode == "max":
        y = ops.where(live, y, ops.zeros_like(y))
    elif mode == "sum":
        y = num
    else:
        y = ops.where(live, num / ops.where(live, den, ops.ones_like(den)), ops.zeros_like(num))
    return ops.cast(y, dtype)


# --------------------------------------------------------------------------- attention


def _weight(op: str, name: str, value: Any, shape: tuple[int, ...], rule: str, dtype: Any) -> Any:
    t = _tensor(value)
    if not keras.backend.is_float_dtype(t.dtype):
        raise float_dtype_error(op, keras.backend.standardize_dtype(t.dtype), name, 'astype("float32")')
    if tuple(t.shape) != shape:
        raise PoolingInputError(f"{op}: {name} must have shape {shape} ({rule}), got shape {tuple(t.shape)}.")
    return ops.cast(t, dtype)


def _heads(t: Any, h: int) -> Any:
    """``(B, T, E) -> (B, H, T, D)``."""
    e = t.shape[-1]
    return ops.transpose(ops.reshape(t, (-1, t.shape[1], h, e // h)), (0, 2, 1, 3))


@public
def attention_pool(
    x: Any,
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
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "attention_pool",
) -> Any:
    """Multi-head attention pooling of the spatial positions (see :func:`poolkit.ops.attention_pool`).

    ``query=None``: CLIP's AttentionPool2d (the mean token queries, output
    ``(N, E_out)``); a ``(Q, C)`` array: PMA seeds, output ``(N, Q, E_out)``.
    The softmax subtracts its row maximum; every gradient is autodiff's.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import attention_pool2d
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> eye, zero = np.eye(2), np.zeros((2, 2))
    >>> np.asarray(attention_pool2d(x, None, zero, zero, eye, eye, 2, data_format="channels_first")).round(6).tolist()
    [[1.5, 5.5]]
    """
    x = _tensor(x)
    layout, spatial = _setup(op, x, ndim, data_format)
    h = check_int(op, "num_heads", num_heads, 1)
    c = x.shape[layout.channel_axis]
    s = math.prod(spatial)
    if s == 0:
        raise PoolingInputError(f"{op}: x has no spatial positions (spatial shape {spatial}).")
    dtype = x.dtype
    xc = _compute(x)
    ct = xc.dtype
    wq_shape = tuple(getattr(wq, "shape", np.shape(wq)))
    if len(wq_shape) != 2 or wq_shape[1] != c or wq_shape[0] == 0:
        raise PoolingInputError(
            f"{op}: wq must have shape (E, C) = (E, {c}) with E >= 1 (C = the channels of x), got shape {wq_shape}."
        )
    e = wq_shape[0]
    if e % h:
        ok = [d for d in range(1, e + 1) if e % d == 0]
        raise PoolingConfigError(
            f"{op}: the embedding size E = wq.shape[0] = {e} must be divisible by num_heads={h}. "
            f"Pass num_heads in {ok}."
        )
    w = {"wq": _weight(op, "wq", wq, (e, c), "E, C", ct)}
    for name, val in (("wk", wk), ("wv", wv)):
        w[name] = _weight(op, name, val, (e, c), "E, C like wq", ct)
    wo_shape = tuple(getattr(wo, "shape", np.shape(wo)))
    if len(wo_shape) != 2 or wo_shape[1] != e:
        raise PoolingInputError(
            f"{op}: wo must have shape (E_out, E) = (E_out, {e}) (E = wq.shape[0]), got shape {wo_shape}."
        )
    w["wo"] = _weight(op, "wo", wo, wo_shape, "E_out, E", ct)
    pma = query is not None
    if pma:
        q_shape = tuple(getattr(query, "shape", np.shape(query)))
        if len(q_shape) != 2 or q_shape[1] != c or q_shape[0] == 0:
            raise PoolingInputError(
                f"{op}: query must be None (CLIP mode) or Q >= 1 seeds shaped (Q, C) = (Q, {c}), got shape "
                f"{q_shape}. Pass one seed as query[None]."
            )
        w["query"] = _weight(op, "query", query, q_shape, "Q, C", ct)
    length = s if pma else s + 1
    pos_rule = (
        "S, C: one row per position in PMA mode" if pma else "S + 1, C: the mean token, then S positions"
    )
    optional = {"bq": (bq, (e,)), "bk": (bk, (e,)), "bv": (bv, (e,)), "bo": (bo, (wo_shape[0],))}
    optional["pos_embed"] = (pos_embed, (length, c))
    for name, (val, shape) in optional.items():
        if val is not None:
            rule = pos_rule if name == "pos_embed" else f"one per row of w{name[1]}"
            w[name] = _weight(op, name, val, shape, rule, ct)
    # tokens (N, S, C), positions in row-major order (torch's x.flatten(2))
    xt = xc if layout.channels_last else ops.moveaxis(xc, 1, -1)
    xt = ops.reshape(xt, (-1, s, c))
    if pma:
        tokens = xt
        u = w["query"][None]  # (1, Q, C): shared by the batch
    else:
        mean = ops.sum(xt, axis=1, keepdims=True) / scalar(float(s), xt)  # ops.mean is float32 on JAX
        tokens = ops.concatenate([mean, xt], axis=1)
    if "pos_embed" in w:
        tokens = tokens + w["pos_embed"]
    if not pma:
        u = tokens[:, :1]

    def project(t: Any, wn: str, bn: str) -> Any:
        out = ops.einsum("btc,ec->bte", t, w[wn])
        return out + w[bn] if bn in w else out

    qs = _heads(project(u, "wq", "bq") * scalar(1.0 / math.sqrt(e // h), xt), h)  # (1 or N, H, Q, D)
    kh, vh = _heads(project(tokens, "wk", "bk"), h), _heads(project(tokens, "wv", "bv"), h)
    if pma:
        scores = ops.einsum("hqd,bhld->bhql", qs[0], kh)
    else:
        scores = ops.einsum("bhqd,bhld->bhql", qs, kh)
    scores = scores - ops.stop_gradient(ops.max(scores, axis=-1, keepdims=True))  # softmax is shift-invariant
    p = ops.exp(scores)
    p = p / ops.sum(p, axis=-1, keepdims=True)
    o = ops.einsum("bhql,bhld->bqhd", p, vh)
    o = ops.reshape(o, (-1, o.shape[1], e))
    y = ops.einsum("bqe,fe->bqf", o, w["wo"])
    if "bo" in w:
        y = y + w["bo"]
    return ops.cast(y if pma else y[:, 0], dtype)


# --------------------------------------------------------------------------- segments


def _segment_param(op: str, name: str, value: Any, feat: tuple[Any, ...], positive: bool, like: Any) -> Any:
    """``t`` or ``p``: a scalar or one value per feature; Python and NumPy values are range-checked."""
    if hasattr(value, "shape") and not isinstance(value, (np.ndarray, np.generic)):
        if len(value.shape) and tuple(value.shape) != feat:
            raise PoolingInputError(
                f"{op}: {name} must be a scalar or have the feature shape {feat}, got shape {tuple(value.shape)}."
            )
        return ops.cast(value, like.dtype)
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        check_real(op, name, float(a), low=0.0 if positive else None, low_inclusive=not positive)
    elif a.shape != feat:
        raise PoolingInputError(
            f"{op}: {name} must be a scalar or have the feature shape {feat}, got shape {a.shape}."
        )
    elif not np.isfinite(a).all() or (positive and (a <= 0).any()):
        raise PoolingInputError(
            f"{op}: every {name} must be finite{' and > 0' if positive else ''}, got {a}."
        )
    return ops.convert_to_tensor(a, dtype=like.dtype)


def _segment_count(op: str, x: Any, batch: Any, num_segments: int | None) -> tuple[Any, int]:
    """The segment ids as an int32 tensor and the (static) number of segments."""
    items = x.shape[0]
    static = isinstance(batch, (np.ndarray, list, tuple))
    seg = np.asarray(batch) if static else batch
    bad_dtype = (
        len(seg.shape) == 1
        and seg.shape[0] != 0
        and not (
            np.issubdtype(seg.dtype, np.integer)
            if static
            else keras.backend.standardize_dtype(seg.dtype).startswith(("int", "uint"))
        )
    )
    if len(seg.shape) != 1 or (None not in (seg.shape[0], items) and seg.shape[0] != items) or bad_dtype:
        raise PoolingInputError(
            f"{op}: batch must be a 1-D integer array with one segment id per row of x ({items}), got "
            f"shape {tuple(seg.shape)} and dtype {seg.dtype}."
        )
    if static:  # values known without running anything: the reference's checks
        if seg.size and seg.min() < 0:
            raise PoolingInputError(f"{op}: segment ids must be >= 0, got {int(seg.min())}.")
        top = int(seg.max()) + 1 if seg.size else 0
        n = top if num_segments is None else check_int(op, "num_segments", num_segments, 0)
        if n < top:
            raise PoolingInputError(
                f"{op}: num_segments={n} but batch holds segment id {top - 1}. Pass at least {top}."
            )
        return ops.convert_to_tensor(seg.astype(np.int32)), n
    if num_segments is None:
        raise PoolingConfigError(
            f"{op}: num_segments=None needs the largest segment id, a value of the tensor batch, but Keras "
            f"needs the number of output rows when the graph is built. Pass num_segments (e.g. the number "
            f"of graphs per batch); trailing empty segments then give rows of zeros."
        )
    return ops.cast(seg, "int32"), check_int(op, "num_segments", num_segments, 0)


@public
def segment_pool(
    x: Any,
    batch: Any,
    num_segments: int | None = None,
    mode: str = "sum",
    *,
    t: Any = 1.0,
    p: Any = 1.0,
    eps: float = 1e-6,
    ndim: int | None = None,
    op: str = "segment_pool",
) -> Any:
    """Pool the rows of ``x`` that share a segment id: ``(num_items, *F) -> (num_segments, *F)``.

    Modes, the empty-segment rule (zeros, no gradient) and gradients as
    :func:`poolkit.ops.segment_pool`; ``t`` and ``p`` may be tensors or
    weights (scalar or shape ``F``), differentiated by autodiff.

    Keras needs ``num_segments`` statically: ``None`` works only for ids given
    as a NumPy array (its maximum is read there). Ids in a tensor are not
    checked; ids outside ``[0, num_segments)`` are ignored. ``max`` sends the
    gradient to the first maximum in item order (the last NaN where one is).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import segment_pool
    >>> x = np.array([[1.0], [2.0], [4.0]])
    >>> np.asarray(segment_pool(x, [0, 0, 2], num_segments=4, mode="mean")).ravel().tolist()
    [1.5, 0.0, 4.0, 0.0]
    """
    mode = check_choice(op, "mode", mode, SEGMENT_MODES)
    x = _tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        raise float_dtype_error(op, keras.backend.standardize_dtype(x.dtype), "x", 'astype("float32")')
    if len(x.shape) < 1:
        raise PoolingInputError(f"{op} expects x shaped (num_items, *features), got a scalar.")
    seg, n = _segment_count(op, x, batch, num_segments)
    xc = _compute(x)
    feat = tuple(x.shape[1:])
    tail = (1,) * len(feat)
    # Ids outside [0, n) match no row of the one-hot matrix and are dropped. Segment sums are products
    # with it: deterministic on every device, exact in float64 (Keras' torch segment_sum casts to float32).
    code = ops.where(ops.logical_and(ops.greater_equal(seg, 0), ops.less(seg, n)), seg, n)
    member = ops.equal(code[None, :], ops.arange(n, dtype="int32")[:, None])  # (n, items)
    onehot = ops.cast(member, xc.dtype)

    def seg_sum(v: Any) -> Any:  # einsum: ops.matmul and ops.tensordot return float32 on Keras' torch
        rest = tuple(v.shape[1:])
        return ops.reshape(ops.einsum("nm,mf->nf", onehot, ops.reshape(v, (-1, math.prod(rest)))), (n, *rest))

    def per_item(v: Any) -> Any:  # (n, *F) -> (items, *F); an id outside [0, n) reads a zero row
        return ops.take(ops.concatenate([v, ops.zeros_like(v[:1])], axis=0), code, axis=0)

    counts = seg_sum(ops.ones_like(code, dtype=xc.dtype))
    nonempty = ops.reshape(ops.greater(counts, 0), (n, *tail))
    if mode == "sum":
        y = seg_sum(xc)
    elif mode == "mean":
        y = seg_sum(xc) / ops.reshape(
            ops.where(ops.greater(counts, 1), counts, ops.ones_like(counts)), (n, *tail)
        )
    elif mode == "max":
        y = _segment_max(xc, member, nonempty)
    elif mode == "softmax":
        tt = _segment_param(op, "t", t, feat, False, xc)
        tx = xc * tt
        # The maximum is only a shift (the result does not depend on it): float32 on Keras' torch is fine.
        m = ops.segment_max(ops.stop_gradient(tx), code, num_segments=n + 1)[:n]
        m = ops.where(ops.isfinite(m), m, ops.zeros_like(m))
        ex = ops.exp(tx - per_item(m))
        total = seg_sum(ex)
        w = ex / per_item(ops.where(ops.greater(total, 0), total, ops.ones_like(total)))
        y = seg_sum(w * xc)
    else:
        pp = _segment_param(op, "p", p, feat, True, xc)
        eps = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
        e = scalar(eps, xc)
        xe = ops.where(ops.greater_equal(xc, e), xc, e)  # clamp(min=eps); the gradient passes at x == eps
        mean = seg_sum(ops.power(xe, pp)) / ops.reshape(
            ops.where(ops.greater(counts, 1), counts, ops.ones_like(counts)), (n, *tail)
        )
        safe = ops.where(nonempty, mean, ops.ones_like(mean))
        y = ops.where(nonempty, ops.power(safe, 1 / pp), ops.zeros_like(safe))
    return ops.cast(y, x.dtype)


def _segment_max(xc: Any, member: Any, nonempty: Any) -> Any:
    """Segment maxima, the gradient to the first maximum in item order (the last NaN in a segment with one).

    Computed densely over ``(num_segments, items + 1, *F)`` (exact in every dtype, which Keras' torch
    ``segment_max`` is not); the winner is then gathered, so the gradient reaches exactly one item.
    ``member`` is ``(num_segments, items)``. A spare zero row, in no segment, keeps the reductions over
    the items non-empty when ``x`` has no rows (``max`` of an empty axis raises on JAX and torch), and
    is what an empty segment reads.
    """
    n, feat = member.shape[0], tuple(xc.shape[1:])
    spare = ops.concatenate([xc, ops.zeros((1, *feat), dtype=xc.dtype)], axis=0)
    member = ops.concatenate([member, ops.zeros((n, 1), dtype="bool")], axis=1)
    for _ in feat:
        member = ops.expand_dims(member, -1)  # (n, items + 1, 1, ...)
    xs = ops.stop_gradient(spare)[None]
    nan = ops.isnan(xs)
    m = ops.max(ops.where(ops.logical_and(member, ops.logical_not(nan)), xs, float("-inf")), axis=1)
    items_n = ops.shape(xc)[0]  # the spare row's index
    items = ops.reshape(ops.arange(items_n + 1, dtype="int32"), (1, -1) + (1,) * len(feat))
    hit = ops.logical_and(member, ops.equal(xs, m[:, None]))
    first = ops.min(ops.where(hit, items, items_n), axis=1)
    last_nan = ops.max(ops.where(ops.logical_and(member, nan), items, -1), axis=1)
    winner = ops.where(ops.greater_equal(last_nan, 0), last_nan, first)
    winner = ops.where(nonempty, winner, items_n)
    picked = ops.take_along_axis(spare, winner, axis=0)
    return ops.where(nonempty, picked, ops.zeros_like(picked))
