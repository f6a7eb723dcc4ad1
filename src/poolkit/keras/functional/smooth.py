"""GeM, LSE, SoftPool and LIP pooling in ``keras.ops``: smooth, weighted relatives of max and average.

Semantics are the NumPy reference's (:mod:`poolkit.ops.gem`, ``lse``, ``soft``,
``lip``), including their rules for +-1e4, NaN, inf and degenerate windows.
Each window's taps are strided slices of a padded input, accumulated one
kernel offset at a time (no kernel-volume stack); the gradients are each
backend's own autodiff.

Keeping that autodiff exact and finite takes two tensors per input: its
finite values (non-finite ones 0) and an exponent bias (0, or ``-inf`` for
padding and non-finite taps, so they weigh exactly 0 whatever the window
maximum is). Outputs the reference defines as NaN or +-inf are selected
with ``where`` from stop-gradient values, so they pass no gradient and
never put ``0 * inf`` into the backward pass. float16 and bfloat16 are
computed in float32 and returned in their dtype.
"""

from __future__ import annotations

import itertools
from typing import Any

import keras
import numpy as np
from keras import ops

from ..._validate import check_bool, check_real
from ...errors import PoolingConfigError, PoolingInputError
from ...geometry import WindowSpec, window_spec
from ...ops._input import float_dtype_error, infer_ndim
from ...ops._params import channel_param
from ...ops.gem import _P_HINT
from ...ops.lse import _R_HINT
from .._core import (
    Layout,
    data_format_of,
    divisor,
    layout_of,
    pad_windows,
    public,
    scalar,
    separable_max,
    window_axes,
    window_sum,
)

__all__ = ["gem_pool", "global_gem_pool", "lse_pool", "soft_pool", "lip_pool"]

_INF = float("inf")
_HALF = ("float16", "bfloat16")


# --------------------------------------------------------------------------- shared plumbing
# (prepare, compute_dtype, tap_index and channel_tensor would fit poolkit.keras._core.)


class _Shape:
    def __init__(self, shape: tuple[Any, ...]) -> None:
        self.shape, self.ndim = shape, len(shape)


def prepare(
    op: str, x: Any, nd: int | None, data_format: str | None, *hints: Any, variants: bool = True
) -> tuple[Layout, tuple[int, ...]]:
    """Data format, spatial rank (alias, tuple hints or rank), layout and static spatial sizes."""
    data_format = data_format_of(op, data_format)
    nd = infer_ndim(op, _Shape(tuple(x.shape)), nd, *hints, variants=variants)
    layout = layout_of(op, tuple(x.shape), nd, data_format, getattr(x, "dtype", None))
    return layout, layout.spatial(tuple(x.shape))


def compute_dtype(x: Any) -> Any:
    """float16/bfloat16 -> float32 (exponentials and powers lose too much in half precision)."""
    x = ops.convert_to_tensor(x)
    return ops.cast(x, "float32") if keras.backend.standardize_dtype(x.dtype) in _HALF else x


def tap_index(layout: Layout, spec: WindowSpec) -> list[tuple[slice, ...]]:
    """One index per kernel offset, row-major: its strided view of a :func:`pad_windows` input."""
    per_axis = [
        [
            slice(k * ax.dilation, k * ax.dilation + (ax.out - 1) * ax.stride + 1, ax.stride)
            for k in range(ax.kernel)
        ]
        for ax in spec.axes
    ]
    return [layout.index(combo) for combo in itertools.product(*per_axis)]


def _window_max(t: Any, layout: Layout, spec: WindowSpec) -> Any:
    """Max over each window's taps inside the input (NaN wins), of a stop-gradient tensor."""
    return separable_max(pad_windows(t, layout, spec, -_INF), window_axes(layout, spec))[0]


def _weights_inputs(t: Any, layout: Layout, spec: WindowSpec) -> tuple[Any, Any, Any]:
    """For exponent weights of ``t``: the max over each window's finite taps (0 where none), and the
    padded finite values and exponent bias (``-inf`` for padding and non-finite taps)."""
    ts = ops.stop_gradient(t)
    fin = ops.isfinite(ts)
    ninf = ops.full_like(ts, -_INF)
    m = _window_max(ops.where(fin, ts, ninf), layout, spec)
    m = ops.where(ops.isfinite(m), m, ops.zeros_like(m))
    values = pad_windows(ops.where(fin, t, ops.zeros_like(t)), layout, spec, 0.0)
    bias = pad_windows(ops.where(fin, ops.zeros_like(ts), ninf), layout, spec, -_INF)
    return m, values, bias


def window_adjoint(t: Any, layout: Layout, spec: WindowSpec) -> Any:
    """The adjoint of a window sum: each input position gets the sum of ``t`` over the windows holding it.

    One axis at a time: ``t`` upsampled by the stride (zeros between), shifted
    to each kernel offset and summed, then the padding cropped.
    """
    for j, ax in enumerate(spec.axes):
        a = layout.spatial_axes[j]
        length = (ax.out - 1) * ax.stride + 1
        if ax.stride > 1:
            shape = list(ops.shape(t))
            shape[a] = ax.out * ax.stride
            t = ops.stack([t] + [ops.zeros_like(t)] * (ax.stride - 1), axis=a + 1)
            t = ops.reshape(t, shape)
            t = t[layout.index([slice(0, length) if i == j else slice(None) for i in range(layout.nd)])]
        padded = ax.size + ax.pad_lo + ax.pad_hi + ax.overhang
        total = None
        for k in range(ax.kernel):
            widths = [[0, 0] for _ in range(layout.nd + 2)]
            widths[a] = [k * ax.dilation, padded - k * ax.dilation - length]
            v = ops.pad(t, widths)
            total = v if total is None else total + v
        t = total[
            layout.index(
                [slice(ax.pad_lo, ax.pad_lo + ax.size) if i == j else slice(None) for i in range(layout.nd)]
            )
        ]
    return t


def channel_tensor(op: str, name: str, value: Any, x: Any, layout: Layout, hint: str) -> Any:
    """A scalar-or-per-channel argument (GeM's ``p``, LSE's ``r``) broadcasting against the output.

    Floats and arrays are checked as the NumPy operator does (> 0, finite);
    a tensor or ``keras.Variable`` only by shape (its values are not read:
    that would leave the graph).
    """
    c = x.shape[layout.channel_axis]
    if isinstance(value, (bool, np.bool_, int, float, np.number, np.ndarray, list, tuple)):
        param = channel_param(op, name, value, c, np.float64, hint)
        data: Any = param.scalar if param.scalar is not None else param.value
        t = ops.convert_to_tensor(np.asarray(data, dtype=np.float64), dtype=x.dtype)
    else:
        dtype = keras.backend.standardize_dtype(value.dtype)
        if dtype == "bool" or "complex" in dtype:
            raise PoolingConfigError(
                f"{op}: {name} must be a positive real number or a tensor of {c} of them (one per channel), "
                f"got a {dtype} tensor."
            )
        shape = tuple(value.shape)
        if shape not in ((), (c,)):
            raise PoolingInputError(
                f"{op}: {name} must be a scalar or have shape ({c},) (one value per channel of x), got shape "
                f"{shape}. Pass one value, or one per channel."
            )
        t = ops.cast(value, x.dtype)
    if len(t.shape) == 0:
        return t
    shape = [1] * (layout.nd + 2)
    shape[layout.channel_axis] = c
    return ops.reshape(t, shape)


def finish(y: Any, like: Any) -> Any:
    """``y`` in the dtype of the user's input ``like`` (half-precision inputs were computed in float32)."""
    dtype = keras.backend.standardize_dtype(like.dtype)
    return y if keras.backend.standardize_dtype(y.dtype) == dtype else ops.cast(y, dtype)


def _window_setup(
    op: str, x: Any, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool, ndim: int | None, fmt: Any
) -> tuple[Layout, WindowSpec, Any]:
    layout, spatial = prepare(op, x, ndim, fmt, kernel_size, stride)
    spec = window_spec(spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    return layout, spec, compute_dtype(x)


# --------------------------------------------------------------------------- GeM


def _gem(xc: Any, p: Any, eps: float, mean_of: Any) -> Any:
    """``mean_of(max(x, eps)^p)^(1/p)``; windows with a non-finite ``y / mean`` pass no gradient."""
    xs = ops.stop_gradient(xc)
    e = scalar(eps, xc)
    ps = ops.stop_gradient(p)
    # the reference's values: NaN stays NaN, -inf clamps to eps, overflow is inf
    c_raw = ops.where(ops.isnan(xs), xs, ops.where(xs >= e, xs, e))
    pw_raw = ops.power(c_raw, ps)
    ok = ops.isfinite(pw_raw)
    c = ops.where(xc >= e, xc, e)  # torch.clamp(min=eps)'s gradient: it passes where x >= eps
    c = ops.where(ok, c, ops.ones_like(c))  # overflowed or NaN taps: a finite stand-in, no gradient
    pw = ops.where(ok, ops.power(c, p), pw_raw)
    mean = mean_of(pw)
    mean_s = ops.stop_gradient(mean)
    inv = scalar(1.0, xc) / p
    y_raw = ops.power(mean_s, ops.stop_gradient(inv))
    bad = ops.logical_not(ops.isfinite(y_raw / mean_s))  # NaN, inf, overflow, underflow
    safe = ops.where(bad, ops.ones_like(mean), mean)
    return ops.where(bad, y_raw, ops.power(safe, inv))


@public
def gem_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    p: Any = 3.0,
    eps: float = 1e-6,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "gem_pool",
) -> Any:
    """GeM pooling: each window's generalized mean ``((1/|R|) sum max(x, eps)^p)^(1/p)``.

    See :func:`poolkit.ops.gem_pool` for the formula, the gradients and the
    conventions (padding is not part of the mean; overflow gives ``+inf``,
    underflow 0; windows with a non-finite or zero output pass no gradient).
    ``p`` is a float, an array, a tensor or a ``keras.Variable``: one value
    or one per channel (``(C,)``), learnable.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import gem_pool1d
    >>> x = ops.convert_to_tensor(np.array([[[1.0, 3.0, 2.0, 2.0]]], "float32"))
    >>> np.round(ops.convert_to_numpy(gem_pool1d(x, 2, p=2.0, data_format="channels_first")), 4)
    array([[[2.2361, 2.    ]]], dtype=float32)
    """
    layout, spec, xc = _window_setup(op, x, kernel_size, stride, padding, ceil_mode, ndim, data_format)
    pt = channel_tensor(op, "p", p, xc, layout, _P_HINT)
    e = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
    counts = divisor(spec, False, layout, xc.dtype)

    def mean_of(t: Any) -> Any:  # separable: one strided pass per axis
        return window_sum(t, layout, spec) / counts

    return finish(_gem(xc, pt, e, mean_of), x)


def global_gem_pool(
    x: Any,
    p: Any = 3.0,
    eps: float = 1e-6,
    *,
    keepdims: bool = False,
    data_format: str | None = None,
) -> Any:
    """Global GeM: the generalized mean of ``max(x, eps)`` over each whole plane, ``(N, C)``.

    cirtorch's ``avg_pool2d(x.clamp(min=eps).pow(p), (H, W)).pow(1/p)`` for
    any spatial rank (see :func:`poolkit.ops.global_gem_pool`); ``p`` as in
    :func:`gem_pool`.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import global_gem_pool
    >>> x = ops.convert_to_tensor(np.array([[[[1.0, 3.0], [2.0, 4.0]]]], "float32"))
    >>> ops.convert_to_numpy(global_gem_pool(x, p=1.0, data_format="channels_first"))
    array([[2.5]], dtype=float32)
    """
    op = "global_gem_pool"
    keepdims = check_bool(op, "keepdims", keepdims)
    layout, spatial = prepare(op, x, None, data_format, variants=False)
    if 0 in spatial:
        raise PoolingInputError(f"{op} needs at least one spatial position, got spatial size {spatial}.")
    xc = compute_dtype(x)
    pt = channel_tensor(op, "p", p, xc, layout, _P_HINT)
    e = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
    size = scalar(float(np.prod(spatial)), xc)

    def mean_of(t: Any) -> Any:  # ops.mean computes float64 in float32 on JAX
        return ops.sum(t, axis=layout.spatial_axes, keepdims=True) / size

    y = finish(_gem(xc, pt, e, mean_of), x)
    return y if keepdims else ops.squeeze(y, axis=layout.spatial_axes)


# --------------------------------------------------------------------------- LSE


@public
def lse_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    r: Any = 10.0,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "lse_pool",
) -> Any:
    """Log-sum-exp pooling ``m + (1/r) log((1/n) sum exp(r (x_i - m)))`` (timm's ``LsePlus``).

    See :func:`poolkit.ops.lse_pool`: ``m`` is the window maximum (no
    overflow for any ``r`` and ``x``), ``n`` the taps inside the input; a
    NaN window gives NaN, ``+inf`` wins, all ``-inf`` stays ``-inf``, and
    such windows pass no gradient. ``r`` as GeM's ``p``: shared or
    per-channel, learnable.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import lse_pool1d
    >>> x = ops.convert_to_tensor(np.array([[[0.0, np.log(3.0), 1e4, 1e4]]], "float32"))
    >>> ops.convert_to_numpy(lse_pool1d(x, 2, r=1.0, data_format="channels_first")).astype(float).round(4).tolist()
    [[[0.6931, 10000.0]]]
    """
    layout, spec, xc = _window_setup(op, x, kernel_size, stride, padding, ceil_mode, ndim, data_format)
    rt = channel_tensor(op, "r", r, xc, layout, _R_HINT)
    m_raw = _window_max(ops.stop_gradient(xc), layout, spec)
    m, values, bias = _weights_inputs(xc, layout, spec)
    s = None
    for idx in tap_index(layout, spec):
        w = ops.exp(rt * (values[idx] - m) + bias[idx])
        s = w if s is None else s + w
    log_n = ops.log(divisor(spec, False, layout, xc.dtype))
    ok = ops.isfinite(m_raw)
    s = ops.where(ok, s, ops.ones_like(s))  # windows without a finite tap: no log(0)
    y = (ops.log(s) - log_n) / rt + m
    return finish(ops.where(ok, y, m_raw), x)  # +inf wins, all -inf stays, NaN stays


# --------------------------------------------------------------------------- SoftPool


@public
def soft_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "soft_pool",
) -> Any:
    """SoftPool: each window's softmax-weighted average ``sum_i e^{x_i} x_i / sum_i e^{x_i}``.

    See :func:`poolkit.ops.soft_pool`. Computed with the window maximum
    subtracted, so +-1e4 in float32 stays finite and correct (the
    reference's ``avg_pool(x e^x) / avg_pool(e^x)`` overflows); padding is
    outside the softmax. A window holding a NaN gives NaN, ``+inf`` wins,
    all ``-inf`` stays ``-inf`` and ``-inf`` beside numbers gives NaN
    (``0 * -inf``, as the reference); those windows pass no gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import soft_pool1d
    >>> x = ops.convert_to_tensor(np.array([[[0.0, np.log(3.0), 1e4, 1e4]]], "float32"))
    >>> ops.convert_to_numpy(soft_pool1d(x, 2, data_format="channels_first")).astype(float).round(4).tolist()
    [[[0.824, 10000.0]]]
    """
    layout, spec, xc = _window_setup(op, x, kernel_size, stride, padding, ceil_mode, ndim, data_format)
    xs = ops.stop_gradient(xc)
    m_raw = _window_max(xs, layout, spec)
    # A window with a non-finite tap has a non-finite output. The reference's backward pass
    # (0 * inf = NaN, zeroed) then gives its taps no gradient at all, from any window: so here.
    flagged = _window_max(ops.cast(ops.logical_not(ops.isfinite(xs)), xs.dtype), layout, spec)
    touched = ops.greater(window_adjoint(flagged, layout, spec), 0)
    m, values, bias = _weights_inputs(ops.where(touched, xs, xc), layout, spec)
    lowest = scalar(float(np.finfo(keras.backend.standardize_dtype(xc.dtype)).min), xc)
    s = num = None
    for idx in tap_index(layout, spec):
        # y = m + sum w (x - m) / sum w: small differences, so the float32 gradient
        # w (1 + (x - m) - (y - m)) does not cancel large terms at +-1e4
        d = values[idx] - m
        d = ops.where(d >= lowest, d, lowest)  # an overflowed difference: weight 0, not 0 * -inf
        w = ops.exp(d + bias[idx])
        s, num = (w, w * d) if s is None else (s + w, num + w * d)
    ok = ops.isfinite(m_raw)
    y = m + num / ops.where(ok, s, ops.ones_like(s))
    # a -inf beside numbers: the reference's 0 * -inf is NaN
    y = ops.where(ops.greater(flagged, 0), ops.full_like(y, np.nan), y)
    return finish(ops.where(ok, y, m_raw), x)


# --------------------------------------------------------------------------- LIP


@public
def lip_pool(
    x: Any,
    logits: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "lip_pool",
) -> Any:
    """Local importance pooling ``sum_i e^{l_i} x_i / sum_i e^{l_i}`` over each window (Gao et al., ICCV 2019).

    See :func:`poolkit.ops.lip_pool`. ``logits`` has ``x``'s shape and
    layout (in the paper a small network of ``x``; :class:`poolkit.keras.LIPPool2D`
    builds one). Each window's largest logit is subtracted, so logits of
    +-1e4 stay finite. NaN, ``+inf`` or all ``-inf`` logits give NaN;
    non-finite inputs follow IEEE arithmetic on ``sum w_i x_i``; windows
    whose output is not finite pass no gradient.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> from poolkit.keras.functional import lip_pool1d
    >>> x = ops.convert_to_tensor(np.array([[[1.0, 5.0, 2.0, 4.0]]], "float32"))
    >>> logits = ops.convert_to_tensor(np.array([[[0.0, np.log(3.0), 1e4, -1e4]]], "float32"))
    >>> ops.convert_to_numpy(lip_pool1d(x, logits, 2, data_format="channels_first")).astype(float).round(4).tolist()
    [[[4.0, 2.0]]]
    """
    layout, spec, xc = _window_setup(op, x, kernel_size, stride, padding, ceil_mode, ndim, data_format)
    if not hasattr(logits, "shape") or not hasattr(logits, "dtype"):
        raise PoolingInputError(
            f"{op} expects logits as a tensor of x's shape, got {type(logits).__name__}. Use "
            f"keras.ops.convert_to_tensor(logits)."
        )
    if not keras.backend.is_float_dtype(logits.dtype):
        raise float_dtype_error(
            op, keras.backend.standardize_dtype(logits.dtype), "logits", 'astype("float32")'
        )
    if tuple(logits.shape) != tuple(x.shape):
        raise PoolingInputError(
            f"{op}: logits must have the shape of x {tuple(x.shape)} (one logit per input value, same "
            f"layout), got {tuple(logits.shape)}."
        )
    lc = ops.cast(logits, xc.dtype)
    m_raw = _window_max(ops.stop_gradient(lc), layout, spec)
    m, lvals, bias = _weights_inputs(lc, layout, spec)
    xs = ops.stop_gradient(xc)
    fin = ops.isfinite(xs)
    xv = pad_windows(ops.where(fin, xc, ops.zeros_like(xc)), layout, spec, 0.0)
    poison = pad_windows(ops.where(fin, ops.zeros_like(xs), xs), layout, spec, 0.0)  # non-finite inputs
    s = num = extra = None
    for idx in tap_index(layout, spec):
        w = ops.exp(lvals[idx] - m + bias[idx])
        pz = ops.stop_gradient(w) * poison[idx]  # IEEE: inf * w, NaN, and 0 * inf = NaN
        if s is None:
            s, num, extra = w, w * xv[idx], pz
        else:
            s, num, extra = s + w, num + w * xv[idx], extra + pz
    ok_l = ops.isfinite(m_raw)  # NaN or +inf logits: undefined weights; all -inf: none
    s = ops.where(ok_l, s, ops.ones_like(s))
    y = num / s
    y_ieee = ops.stop_gradient((num + extra) / s)  # the reference's value where it is not finite
    y = ops.where(ops.isfinite(y_ieee), y, y_ieee)
    return finish(ops.where(ok_l, y, ops.full_like(y, np.nan)), x)
