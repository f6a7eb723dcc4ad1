"""Gated, tree and detail-preserving pooling in ``keras.ops``: poolkit's learned pooling operators.

Semantics are the NumPy reference's (:mod:`poolkit.ops.gated`,
:mod:`~poolkit.ops.tree`, :mod:`~poolkit.ops.dpp`). Window filters
``sum_k w_k x_k`` are tap loops over strided views of the zero-padded input
(no kernel-volume copy); every gradient is the backend's own autodiff,
equal to the NumPy reference's ``vjp``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from ..._validate import check_bool, check_real
from ...errors import PoolingInputError
from ...geometry import WindowSpec, window_spec
from ...ops._filters import check_filters
from ...ops._taps import tap_counts
from ...ops.dpp import _limits
from ...ops.dpp import _param as _check_dpp_param
from ...ops.tree import _check_tree
from .._core import Layout, pad_windows, public, window_sum
from .classic import _setup, avg_pool, max_pool
from .stochastic import compute_dtype, is_tensor, layout_name, tap_index, tap_masks

__all__ = ["gated_pool", "tree_pool", "dpp_pool"]


# --------------------------------------------------------------------------- shared pieces


def _filters(
    op: str,
    name: str,
    value: Any,
    kernel: tuple[int, ...],
    c: int,
    layout: Layout,
    dtype: Any,
    lead: str | None,
) -> tuple[Any, Any]:
    """A filter argument as ``(J, K, *b)`` (``b`` broadcasts against the output: one filter for every
    channel, or one per channel) in ``dtype``, and its shape checked as NumPy checks it.

    Arrays get every NumPy check; tensors their shape and dtype (values stay on the device).
    """
    if is_tensor(value):
        if not (keras.backend.is_float_dtype(value.dtype) or keras.backend.is_int_dtype(value.dtype)):
            raise PoolingInputError(
                f"{op}: {name} must be a real-valued tensor, got dtype {value.dtype}. Convert with "
                f"keras.ops.cast({name}, 'float32')."
            )
        info = check_filters(op, name, np.zeros(tuple(value.shape)), kernel, c, np.float64, lead)
        t = ops.cast(value, dtype)
    else:
        info = check_filters(op, name, value, kernel, c, np.float64, lead)
        t = ops.convert_to_tensor(np.asarray(value), dtype)
    j, cw, k = info.value.shape  # (J, 1 or C, K)
    t = ops.transpose(ops.reshape(t, (j, cw, k)), (0, 2, 1))  # (J, K, Cw)
    return ops.reshape(t, (j, k, *layout.shape(1, cw, (1,) * layout.nd))), info


def _dots(xp: Any, w: Any, layout: Layout, spec: WindowSpec) -> list[Any]:
    """``r_j = sum_k w[j, k] x_k`` over each window's taps (``xp`` zero-padded: padding counts as 0)."""
    r: list[Any] = [None] * w.shape[0]
    for t, idx in enumerate(tap_index(layout, spec)):
        v = xp[idx]
        for j in range(len(r)):
            term = v * w[j, t]
            r[j] = term if r[j] is None else r[j] + term
    return r


def _gate(z: Any) -> tuple[Any, Any]:
    """``sigmoid(z)`` and ``1 - sigmoid(z)`` as the NumPy reference computes them (no overflow, each
    accurate when saturated: ``1/(1+e)`` or ``e/(1+e)`` with ``e = exp(-|z|)``).

    ``-|z|`` is a select, not ``abs``: ``abs``' derivative at 0 is 0 on JAX, which would stall a gate
    whose filter starts at 0 (the layers' initialisation).
    """
    pos = ops.greater_equal(z, 0)
    e = ops.exp(ops.where(pos, -z, z))
    a = ops.cast(pos, z.dtype) * (1 - e)
    inv = 1 / (1 + e)
    return (e + a) * inv, (1 - a) * inv


# --------------------------------------------------------------------------- gated


@public
def gated_pool(
    x: Any,
    weight: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "gated_pool",
) -> Any:
    """Gated max-average pooling (Lee, Gallagher, Tu, AISTATS 2016) in ``keras.ops``.

    ``y = s max(x_R) + (1 - s) avg(x_R)`` with ``s = sigmoid(w . x_R)``; see
    :func:`poolkit.ops.gated_pool`. ``weight`` is ``kernel_size`` shaped (one
    gate filter for every channel) or ``(C, *kernel_size)`` (one per
    channel); learnable.

    Notes
    -----
    The max branch pads with ``-inf``; the gate and the average count
    explicit padding as 0 (``avg_pool`` with ``count_include_pad=True``),
    ceil-mode overhang not at all. A window holding a NaN or an infinity gives
    NaN. float16/bfloat16 are computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import gated_pool1d
    >>> x = np.array([[[1.0, 3.0, 2.0, 0.0]]])
    >>> np.asarray(gated_pool1d(x, np.zeros(2), 2, data_format="channels_first")).tolist()  # s = 1/2
    [[[2.5, 1.5]]]
    >>> np.asarray(gated_pool1d(x, np.full(2, 1e4), 2, data_format="channels_first")).tolist()  # s = 1
    [[[3.0, 2.0]]]
    """
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride)
    spec = window_spec(spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    xc, dtype = compute_dtype(ops.convert_to_tensor(x))
    c = xc.shape[layout.channel_axis]
    w, _ = _filters(op, "weight", weight, spec.kernel_size, c, layout, xc.dtype, None)
    (z,) = _dots(pad_windows(xc, layout, spec, 0.0), w, layout, spec)
    s, sc = _gate(z)
    win = dict(data_format=layout_name(layout), ndim=layout.nd, op=op)
    mx = max_pool(xc, kernel_size, stride, padding, 1, ceil_mode, **win)
    av = avg_pool(xc, kernel_size, stride, padding, ceil_mode, True, **win)
    # + 0 * (max - avg): NaN exactly in windows holding a NaN or an infinity, whatever the gate
    return ops.cast(s * mx + sc * av + (mx - av) * 0.0, dtype)


# --------------------------------------------------------------------------- tree


@public
def tree_pool(
    x: Any,
    leaves: Any,
    gates: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "tree_pool",
) -> Any:
    """Tree pooling (Lee, Gallagher, Tu, AISTATS 2016) in ``keras.ops``: a binary tree of learned filters.

    Leaves ``f_m = v_m . x_R``; node ``k`` mixes its children
    ``f_k = s_k f_{2k+1} + (1 - s_k) f_{2k+2}`` with ``s_k = sigmoid(w_k . x_R)``;
    the output is the root. See :func:`poolkit.ops.tree_pool`: ``leaves``
    ``(L, *kernel_size)`` or ``(L, C, *kernel_size)`` (``L`` a power of two),
    ``gates`` ``(L - 1, ...)`` in heap order, each per layer or per channel.

    Notes
    -----
    Taps in padding and ceil-mode overhang count as 0 in every filter.
    Non-finite inputs follow IEEE arithmetic (NaN in a window gives NaN).
    float16/bfloat16 are computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import tree_pool1d
    >>> x = np.array([[[1.0, 3.0, 2.0, 0.0]]])
    >>> leaves = np.array([[0.5, 0.5], [1.0, 0.0]])   # the window's mean, its first tap
    >>> y = tree_pool1d(x, leaves, np.zeros((1, 2)), 2, data_format="channels_first")
    >>> np.asarray(y).tolist()   # gate 1/2: the average of both leaves
    [[[1.5, 1.5]]]
    """
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride)
    spec = window_spec(spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    xc, dtype = compute_dtype(ops.convert_to_tensor(x))
    c, kernel = xc.shape[layout.channel_axis], spec.kernel_size
    wl, fl = _filters(op, "leaves", leaves, kernel, c, layout, xc.dtype, "L")
    wg, fg = _filters(op, "gates", gates, kernel, c, layout, xc.dtype, "L - 1")
    _check_tree(op, fl, fg)
    n_leaves = fl.shape[0]
    xp = pad_windows(xc, layout, spec, 0.0)
    # node k < L - 1 is gate k; node L - 1 + m is leaf m (heap order)
    f = (_dots(xp, wg, layout, spec) if n_leaves > 1 else []) + _dots(xp, wl, layout, spec)
    for k in reversed(range(n_leaves - 1)):
        s, sc = _gate(f[k])
        f[k] = s * f[2 * k + 1] + sc * f[2 * k + 2]
    return ops.cast(f[0], dtype)


# --------------------------------------------------------------------------- detail-preserving


@public
def dpp_pool(
    x: Any,
    alpha: Any,
    lam: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    asymmetric: bool = False,
    eps: float = 1e-3,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "dpp_pool",
) -> Any:
    """Detail-preserving pooling (Saeedan, Weber, Goesele, Roth, CVPR 2018) in ``keras.ops``.

    ``D = sum_q w_q I_q / sum_q w_q`` over the window's taps inside the input,
    ``w_q = alpha + rho(I_q - Itilde)``, ``Itilde`` the taps' plain average and
    ``rho(d) = sqrt(d^2 + eps^2)^lam`` (``asymmetric=True``: ``max(0, d)``).
    See :func:`poolkit.ops.dpp_pool`. ``alpha, lam >= 0``: scalars or ``(C,)``,
    learnable.

    Notes
    -----
    As the NumPy reference, the weights are computed in log space relative
    to the window's largest weight, so they neither overflow nor vanish for
    any finite input, ``alpha = 0`` included (its gradient stays finite there
    too); ``d^2`` is capped at a quarter of the dtype's maximum (the gradient
    then keeps ``rho'``'s formula, as NumPy's). A tensor ``alpha`` or ``lam``
    is checked for shape and dtype only (the layers clamp them at 0). Padding
    and overhang take no part. float16/bfloat16 are computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import dpp_pool1d
    >>> x = np.array([[[0.0, 0.0, 0.0, 3.0]]])
    >>> np.asarray(dpp_pool1d(x, 1.0, 0.0, 4, data_format="channels_first")).tolist()  # lam = 0: the mean
    [[[0.75]]]
    >>> np.asarray(dpp_pool1d(x, 0.0, 1.0, 4, data_format="channels_first")).round(3).tolist()
    [[[1.5]]]
    """
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride)
    spec = window_spec(spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    asym = check_bool(op, "asymmetric", asymmetric)
    eps = check_real(op, "eps", eps, low=0.0, low_inclusive=False)
    xc, dtype = compute_dtype(ops.convert_to_tensor(x))
    c = xc.shape[layout.channel_axis]
    alpha_t = _dpp_param(op, "alpha", alpha, c, layout, xc.dtype)
    lam_t = _dpp_param(op, "lam", lam, c, layout, xc.dtype)
    return ops.cast(_dpp(xc, alpha_t, lam_t, layout, spec, asym, eps), dtype)


def _dpp_param(op: str, name: str, value: Any, c: int, layout: Layout, dtype: Any) -> Any:
    """``alpha`` or ``lam`` as a tensor broadcasting against the output (scalar or per channel)."""
    if is_tensor(value):
        shape = tuple(value.shape)
        if shape not in ((), (c,)):
            raise PoolingInputError(
                f"{op}: {name} must be a scalar (one per layer) or shaped (C,) = ({c},) (one per "
                f"channel), got shape {shape}."
            )
        if not (keras.backend.is_float_dtype(value.dtype) or keras.backend.is_int_dtype(value.dtype)):
            raise PoolingInputError(f"{op}: {name} must be a real-valued tensor, got dtype {value.dtype}.")
        t = ops.cast(value, dtype)
    else:
        p = _check_dpp_param(op, name, value, c, np.float64)  # shape, finite and >= 0
        t = ops.convert_to_tensor(np.asarray(value, dtype=np.float64).reshape(p.shape), dtype)
    size = 1 if len(t.shape) == 0 else c
    return ops.reshape(t, layout.shape(1, size, (1,) * layout.nd))


# ops.minimum/maximum are avoided: on Keras' torch backend they return float32 for float64 tensors.


def _dpp(xc: Any, alpha: Any, lam: Any, layout: Layout, spec: WindowSpec, asym: bool, eps: float) -> Any:
    cdt = np.dtype(keras.backend.standardize_dtype(xc.dtype))
    eps2_np, big_np = _limits(cdt, eps)
    # dtype given: Keras' torch backend makes 0-d arrays float32
    eps2, big = (ops.convert_to_tensor(np.asarray(v, cdt), dtype=cdt.name) for v in (eps2_np, big_np))
    out = spec.output_size
    inv = (1.0 / tap_counts(spec.axes)).astype(cdt).reshape(layout.shape(1, 1, out))
    m = window_sum(xc, layout, spec) * ops.convert_to_tensor(
        inv, dtype=cdt.name
    )  # Itilde: the taps' plain mean
    xp = pad_windows(xc, layout, spec, 0.0)
    taps = list(tap_index(layout, spec))
    masks = [None if mk is None else ops.convert_to_tensor(mk) for mk in tap_masks(layout, spec)]

    def squared(v: Any, mean: Any) -> Any:
        """``min(d^2, big) + eps^2``, whose gradient is ``2 d`` even where capped (NumPy's rule)."""
        d = v - mean
        if asym:
            d = ops.where(ops.greater(d, 0), d, ops.zeros_like(d))
        ds = ops.stop_gradient(d)
        dd = ds * ds
        q = ops.where(ops.greater(dd, big), big, dd) + eps2
        return q + 2 * ds * (d - ds)  # + 0 in value: the gradient of d^2 without the cap's select

    # The largest weight's log, lmax = max(lam/2 log(max q), log alpha): weights relative to it are in
    # (0, 1]. D does not depend on it, so it carries no gradient.
    xs, ms, hl_s = ops.stop_gradient(xp), ops.stop_gradient(m), ops.stop_gradient(lam) / 2
    alpha_s = ops.stop_gradient(alpha)
    qmax = None
    for idx, mk in zip(taps, masks):
        q = squared(xs[idx], ms)
        q = q if mk is None else ops.where(mk, q, ops.zeros_like(q))
        qmax = q if qmax is None else ops.where(ops.greater(q, qmax), q, qmax)
    la = ops.log(alpha_s)  # -inf for alpha = 0: that weight term vanishes
    lmax = ops.log(qmax) * hl_s
    lmax = ops.where(ops.greater(la, lmax), la, lmax)
    # alpha / exp(lmax) in value; its derivative exp(-lmax) written out, so alpha = 0 has a finite one
    # (through log(alpha) it would be 0 * inf)
    dea = ops.exp(-lmax)
    top = ops.convert_to_tensor(np.asarray(np.finfo(cdt).max, cdt), dtype=cdt.name)
    dea = ops.where(ops.isinf(dea), top, dea)
    ea = ops.exp(la - lmax) + (alpha - alpha_s) * dea
    hl = lam / 2
    s = y = None
    for idx, mk in zip(taps, masks):
        v = xp[idx]
        w = ops.exp(ops.log(squared(v, m)) * hl - lmax) + ea  # rho / max weight, plus alpha's term
        w = w if mk is None else ops.where(mk, w, ops.zeros_like(w))
        s = w if s is None else s + w
        y = w * v if y is None else y + w * v
    return y / s
