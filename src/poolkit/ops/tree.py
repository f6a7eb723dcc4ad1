"""Tree pooling (Lee, Gallagher, Tu, AISTATS 2016): a binary tree of learned pooling filters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PoolingInputError
from ..geometry import WindowSpec, window_spec
from ._api import define
from ._engine import blockwise
from ._filters import (
    QUIET,
    Filters,
    block_channels,
    channel_index,
    check_filters,
    filter_grads,
    for_block,
    gate,
    tap_layout,
    window_dots,
    window_dots_backward,
)
from ._input import Batch, check_grad, infer_ndim, prepare
from ._taps import taps_nd

__all__ = ["tree_pool", "tree_pool1d", "tree_pool2d", "tree_pool3d"]


def tree_pool(
    x: Any,
    leaves: Any,
    gates: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
) -> np.ndarray:
    """Tree pooling: learned pooling filters combined by a binary tree of learned gates.

    Leaves are linear pooling filters ``f_m = v_m . x_R`` over the window
    ``x_R``; an internal node mixes its children,
    ``f_k = s_k f_left + (1 - s_k) f_right`` with ``s_k = sigmoid(w_k . x_R)``;
    the output is the root's value (Lee, Gallagher, Tu, "Generalizing pooling
    functions in convolutional neural networks: mixed, gated, and tree",
    AISTATS 2016). The arrays fix the depth: ``L = 2**(depth - 1)`` leaves
    and ``L - 1`` gates; the paper's tree (depth 2) is 2 leaves and 1 gate.

    Gradients (``vjp``): with ``delta_k`` the gradient reaching node ``k``
    (``delta_root = g``, ``delta_left = s_k delta_k``,
    ``delta_right = (1 - s_k) delta_k``), ``dL/dv_m = delta_m x_R``,
    ``dL/dw_k = delta_k s_k (1 - s_k) (f_left - f_right) x_R``, and ``x``
    gets the sum of those coefficients times ``v_m`` and ``w_k``.

    Parameters
    ----------
    x : array_like
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), float16/32/64.
    leaves : array_like
        Leaf filters ``(L, *kernel_size)`` (shared by every channel) or
        ``(L, C, *kernel_size)`` (one set per channel), ``L`` a power of two.
        Learnable.
    gates : array_like
        Gate filters ``(L - 1, *kernel_size)`` or ``(L - 1, C, *kernel_size)``
        in heap order: node 0 is the root, the children of node ``k`` are
        ``2k + 1`` and ``2k + 2``, and the leaves are nodes ``L - 1 ...
        2L - 2`` (leaf ``m`` is node ``L - 1 + m``). ``L = 1`` takes a
        ``(0, ...)`` array: one linear filter. Learnable.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.ops.max_pool` (no dilation).
    data_format : {"channels_first", "channels_last"}

    Notes
    -----
    Taps in padding, and those a ceil-mode window hangs past it, count as 0
    in every filter (a zero-padded convolution; the paper is silent). So
    uniform leaves ``1/K`` (``K`` the kernel volume) give
    :func:`poolkit.ops.avg_pool` with ``count_include_pad=True``, except in
    ceil-mode windows that hang past the padding, which still divide by
    ``K``. ``leaves`` and ``gates`` may be per-layer and per-channel
    independently. Non-finite inputs follow IEEE arithmetic with no warning:
    a NaN in a window gives NaN; an infinity gives an infinite or NaN output
    (``0 * inf`` where a filter weight is 0 or a gate saturates). Gates
    saturate to exactly 0 or 1 without overflow. float16 is computed in
    float32. An empty batch gives an empty output and zero filter
    gradients. Nothing is kept for the backward pass but the inputs: it
    recomputes the tree (one forward's cost) instead of storing ``2L - 1``
    output-sized arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.ops.tree import tree_pool1d
    >>> x = np.array([[[1.0, 3.0, 2.0, 0.0]]])
    >>> leaves = np.array([[0.5, 0.5], [1.0, 0.0]])   # the window's mean, its first tap
    >>> tree_pool1d(x, leaves, np.zeros((1, 2)), 2)     # gate 1/2: the average of both leaves
    array([[[1.5, 1.5]]])
    >>> tree_pool1d(x, leaves, np.full((1, 2), -1e4), 2)  # gate 0: the right leaf
    array([[[1., 2.]]])
    """
    return _tree_pool(x, leaves, gates, kernel_size, stride, padding, ceil_mode, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    spec: WindowSpec
    filters: tuple[Filters, Filters]  # gates, leaves (heap order once stacked)
    out_shape: tuple[int, ...]


def _check_tree(op: str, leaves: Filters, gates: Filters) -> None:
    n_leaves = leaves.shape[0]
    if n_leaves < 1 or n_leaves & (n_leaves - 1):
        raise PoolingInputError(
            f"{op}: leaves must hold L = 2**(depth - 1) leaf filters (1, 2, 4, 8, ...) along axis 0, "
            f"got L = {n_leaves} (leaves shape {leaves.shape}). The paper's tree has 2 leaves."
        )
    if gates.shape[0] != n_leaves - 1:
        raise PoolingInputError(
            f"{op}: a tree with L = {n_leaves} leaves has L - 1 = {n_leaves - 1} gates, got "
            f"{gates.shape[0]} (gates shape {gates.shape}). Pass gates of shape "
            f"({n_leaves - 1}, *kernel_size) or ({n_leaves - 1}, C, *kernel_size)."
        )


def _evaluate(r: list[np.ndarray], n_leaves: int) -> tuple[list[np.ndarray], list[Any]]:
    """Node values bottom-up from the filter responses (``r[k]``: gate logits, then leaf values)."""
    f = list(r)
    sig: list[Any] = [None] * (n_leaves - 1)
    for k in reversed(range(n_leaves - 1)):
        s, sc, ds = gate(r[k])
        sig[k] = (s, sc, ds)
        fk = np.multiply(s, f[2 * k + 1])
        right = np.multiply(sc, f[2 * k + 2], out=r[k])  # the logit is spent
        fk += right
        f[k] = fk
    return f, sig


def _tree_pool(
    x: Any,
    leaves: Any,
    gates: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "tree_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim, kernel_size, stride)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    spec = window_spec(batch.spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    n, c = batch.x.shape[:2]
    kernel, dtype = spec.kernel_size, batch.x.dtype
    fl = check_filters(op, "leaves", leaves, kernel, c, dtype, "L")
    fg = check_filters(op, "gates", gates, kernel, c, dtype, "L - 1")
    _check_tree(op, fl, fg)
    n_leaves = fl.shape[0]
    taps_w = tap_layout([fg, fl], nd)
    taps = taps_nd(spec.axes)
    out_shape = (n, c, *spec.output_size)
    y = batch.empty(out_shape)

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, cb = ins
        r = window_dots(xb, taps, for_block(taps_w, block_channels(cb)), outs[0].shape)
        outs[0][...] = _evaluate(r, n_leaves)[0][0]

    with np.errstate(**QUIET):
        blockwise(block, [batch.x, channel_index(n, c, nd)], [y], channels_last=batch.channels_last)
    ctx = _Ctx(batch, spec, (fg, fl), out_shape) if need_ctx else None
    return batch.to_user(y), ctx


def _tree_pool_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = check_grad(batch, grad_output, ctx.out_shape).astype(batch.x.dtype, copy=False)
    n, c = batch.x.shape[:2]
    fg, fl = ctx.filters
    n_leaves = fl.shape[0]
    taps_w = tap_layout([fg, fl], batch.nd)
    taps = taps_nd(ctx.spec.axes)
    acc = np.zeros((taps_w.shape[0], c, taps_w.shape[1]))
    gx = batch.empty(batch.x.shape, fill=0)

    def block(ins: list[Any], outs: list[Any], _axes: Any) -> None:
        xb, cb, gb = ins
        sl = block_channels(cb)
        wb = for_block(taps_w, sl)
        f, sig = _evaluate(window_dots(xb, taps, wb, gb.shape), n_leaves)
        delta: list[Any] = [None] * len(f)
        delta[0] = gb
        coefs = list(delta)
        for k in range(n_leaves - 1):  # top-down: a node's delta is known before its children's
            s, sc, ds = sig[k]
            left, right = 2 * k + 1, 2 * k + 2
            delta[left] = np.multiply(s, delta[k])
            delta[right] = np.multiply(sc, delta[k])
            dz = np.subtract(f[left], f[right])
            dz *= ds
            dz *= delta[k]
            coefs[k] = dz
        coefs[n_leaves - 1 :] = delta[n_leaves - 1 :]
        window_dots_backward(xb, taps, wb, coefs, outs[0], acc, sl)

    with np.errstate(**QUIET):
        blockwise(block, [batch.x, channel_index(n, c, batch.nd), g], [gx], channels_last=batch.channels_last)
    g_gates, g_leaves = filter_grads(acc, [fg, fl])
    return {"x": batch.to_user(gx), "leaves": g_leaves, "gates": g_gates}


def _example(x: np.ndarray) -> tuple[tuple[Any, ...], dict[str, Any]]:
    c = x.shape[1]
    leaves = np.stack([np.full((c, 2, 2), 0.25), np.eye(2)[None].repeat(c, 0) * 0.5])
    return (x, leaves, np.full((1, c, 2, 2), 0.1)), {"kernel_size": 2}


_aliases = define(
    tree_pool,
    _tree_pool,
    _tree_pool_backward,
    family="research",
    backends=("numpy", "torch", "keras"),
    differentiable=("x", "leaves", "gates"),
    learnable=("leaves", "gates"),
    stochastic=False,
    example=_example,
)
tree_pool1d = _aliases["tree_pool1d"]
tree_pool2d = _aliases["tree_pool2d"]
tree_pool3d = _aliases["tree_pool3d"]
