"""Stochastic, mixed and S3 pooling in ``keras.ops``: poolkit's random pooling operators.

Semantics are the NumPy reference's (:mod:`poolkit.ops.stochastic`,
:mod:`~poolkit.ops.mixed`, :mod:`~poolkit.ops.s3`). The random draws come
from ``keras.random`` (``seed``: None, an int or a
``keras.random.SeedGenerator``), so they differ from NumPy's; given the same
explicit draws (``samples``, or a drawn ``lambda`` passed as ``alpha``) the
results are equal. Each call draws once (one ``keras.random`` call), so an
int seed gives reproducible, independent draws for every window.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import keras
import numpy as np
from keras import ops, random

from ..._validate import check_bool, check_choice, int_tuple, is_int
from ...errors import PoolingConfigError, PoolingInputError
from ...geometry import WindowSpec, window_spec
from ...ops.mixed import MODES, _check_alpha
from ...ops.s3 import _check_samples as _check_rows_numpy
from ...ops.stochastic import _check_samples as _check_uniforms_numpy
from .._core import Layout, batch_size, pad_windows, public, separable_max, window_axes
from .classic import _setup, avg_pool, max_pool

__all__ = ["stochastic_pool", "mixed_pool", "s3_pool"]


# --------------------------------------------------------------------------- shared plumbing
# (candidates for _core: the learned family uses them too)


def is_tensor(value: Any) -> bool:
    """A backend tensor, a ``keras.Variable`` or a symbolic ``KerasTensor`` (values not readable here)."""
    return isinstance(value, (keras.Variable, keras.KerasTensor)) or ops.is_tensor(value)


def compute_dtype(x: Any) -> tuple[Any, str]:
    """``x`` in its compute dtype (float16/bfloat16 -> float32: tap loops accumulate) and its own dtype."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    return (ops.cast(x, "float32") if dtype in ("float16", "bfloat16") else x), dtype


@functools.cache
def wide_dtype() -> str:
    """``float64`` where the backend has it (JAX only with ``jax_enable_x64``), else ``float32``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.backend.standardize_dtype(ops.zeros((), dtype="float64").dtype)


def check_seed(op: str, seed: Any) -> Any:
    """``None`` (Keras' global generator), an int, or a ``keras.random.SeedGenerator``."""
    if seed is None or isinstance(seed, random.SeedGenerator):
        return seed
    if is_int(seed):
        return int(seed)
    raise PoolingConfigError(
        f"{op}: seed must be None, an int or a keras.random.SeedGenerator, got {seed!r}. "
        f"Pass e.g. seed=0, or keras.random.SeedGenerator(0) for fresh draws on every call."
    )


def tap_index(layout: Layout, spec: WindowSpec) -> Iterator[tuple[slice, ...]]:
    """For each tap, in row-major window order, the strided slice of the padded input it reads.

    Tap ``k`` of every window is one strided view (no kernel-volume copy);
    loops over taps accumulate output-sized terms.
    """
    per_axis = [
        [
            slice(k * ax.dilation, k * ax.dilation + (ax.out - 1) * ax.stride + 1, ax.stride)
            for k in range(ax.kernel)
        ]
        for ax in spec.axes
    ]
    for combo in itertools.product(*per_axis):
        yield layout.index(combo)


def tap_masks(layout: Layout, spec: WindowSpec) -> list[Any]:
    """Per tap, a static boolean mask of the windows whose tap lies inside the input (None: all do)."""
    padded = [ax.size + ax.pad_lo + ax.pad_hi + ax.overhang for ax in spec.axes]
    inside = np.zeros(layout.shape(1, 1, padded), dtype=bool)
    inside[layout.index([slice(ax.pad_lo, ax.pad_lo + ax.size) for ax in spec.axes])] = True
    masks = []
    for idx in tap_index(layout, spec):
        m = inside[idx]
        masks.append(None if m.all() else m)
    return masks


def channels_first_to(layout: Layout, t: Any) -> Any:
    """A ``(N, C, *out)`` tensor in ``layout``'s order."""
    return ops.moveaxis(t, 1, -1) if layout.channels_last else t


# --------------------------------------------------------------------------- stochastic


@public
def stochastic_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    training: bool = True,
    samples: Any = None,
    seed: Any = None,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "stochastic_pool",
) -> Any:
    """Stochastic pooling (Zeiler & Fergus, ICLR 2013) in ``keras.ops``; see :func:`poolkit.ops.stochastic_pool`.

    ``training=True`` outputs one activation per window, drawn with
    probability ``p_i = a_i / sum(a)`` (``a = max(x, 0)``); its gradient goes
    to the sampled element. ``training=False`` gives ``sum(a^2) / sum(a)``
    with the exact gradient ``(2 a_i - y) / sum(a)`` where ``x_i > 0``.

    Parameters
    ----------
    x : tensor
        ``(N, *spatial, C)`` (channels_last) or ``(N, C, *spatial)``.
    kernel_size, stride, padding, ceil_mode
        As :func:`poolkit.keras.functional.max_pool` (no dilation).
    training : bool
        Sample (True) or use the probabilistic weighting (False).
    samples : tensor or array_like, optional
        One uniform in [0, 1) per window, shaped ``(N, C, *out)`` in
        channels-first order whatever ``data_format``; given, the result
        equals the NumPy reference's with the same ``samples``. Arrays are
        checked like NumPy's; a tensor's values are not (they would have to
        leave the device).
    seed : None, int or keras.random.SeedGenerator
        Draws the uniforms (``keras.random.uniform``) when ``samples`` is not
        given. Under ``jax.jit`` pass a ``SeedGenerator`` or an int.
    data_format : {"channels_last", "channels_first"}, optional
        Defaults to ``keras.config.image_data_format()``.

    Notes
    -----
    Conventions (negative inputs, padding, non-finite values, the sampling
    rule) are the NumPy reference's; the uniforms are drawn, and multiplied
    by the window's weight sum, in float64 where the backend has it (as
    NumPy does), so given samples pick the same taps. float16/bfloat16 are
    computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import stochastic_pool1d
    >>> x = np.array([[[1.0, 3.0, 0.0, -2.0, 0.0, 4.0]]])
    >>> y = stochastic_pool1d(x, 2, training=False, data_format="channels_first")
    >>> np.asarray(y).round(4).tolist()   # (1 + 9) / 4, 0, 16 / 4
    [[[2.5, 0.0, 4.0]]]
    >>> u = np.array([[[0.3, 0.5, 0.9]]])   # 0.3 > p(1) = 1/4: the 3 wins
    >>> np.asarray(stochastic_pool1d(x, 2, samples=u, data_format="channels_first")).tolist()
    [[[3.0, 0.0, 4.0]]]
    """
    training = check_bool(op, "training", training)
    seed = check_seed(op, seed)
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride)
    spec = window_spec(spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    xc, dtype = compute_dtype(ops.convert_to_tensor(x))
    n, c = batch_size(xc), xc.shape[layout.channel_axis]
    out_cf = (n, c, *spec.output_size)
    u = None if samples is None else _uniforms(op, samples, out_cf)
    if training and u is None:
        u = random.uniform(out_cf, dtype=wide_dtype(), seed=seed)
    y = _sample(xc, u, layout, spec) if training else _weigh(xc, layout, spec)
    return ops.cast(y, dtype)


def _uniforms(op: str, samples: Any, out_cf: tuple[Any, ...]) -> Any:
    """Explicit uniforms ``(N, C, *out)``: arrays checked as NumPy does, tensors by shape and dtype."""
    if not is_tensor(samples):
        n = out_cf[0] if isinstance(out_cf[0], int) else np.shape(samples)[0]
        u = _check_uniforms_numpy(op, samples, (n, *out_cf[1:]), True)
        return ops.convert_to_tensor(u, dtype=wide_dtype())
    shape = tuple(samples.shape)
    same = len(shape) == len(out_cf) and all(
        a is None or b is None or a == b for a, b in zip(shape, out_cf) if not is_tensor(b)
    )
    if not same:
        raise PoolingInputError(
            f"{op}: samples must have shape (N, C, *out) = {out_cf} (one uniform per window, "
            f"channels-first whatever data_format), got {shape}."
        )
    if not keras.backend.is_float_dtype(samples.dtype):
        raise PoolingInputError(f"{op}: samples must be floats in [0, 1), got dtype {samples.dtype}.")
    return samples


def _scale(xs: Any, layout: Layout, spec: WindowSpec) -> tuple[Any, Any, Any]:
    """Each window's scale ``max(x)`` (1 where it is <= 0 or not finite), its NaN and its +inf windows.

    ``xs`` is the zero-padded input without gradient: padding never makes a
    scale, and a NaN wins the maximum (``separable_max``'s rule).
    """
    m = separable_max(xs, window_axes(layout, spec))[0]
    nan, inf = ops.isnan(m), ops.equal(m, float("inf"))
    ok = ops.logical_and(ops.greater(m, 0), ops.logical_not(inf))
    return ops.where(ok, m, ops.ones_like(m)), nan, inf


def _sample(xc: Any, u: Any, layout: Layout, spec: WindowSpec) -> Any:
    """Training: the first tap (row-major) whose running sum of ``a / max(a)`` exceeds ``u * sum``."""
    xp = pad_windows(xc, layout, spec, 0.0)
    xs = ops.stop_gradient(xp)  # the choice is not differentiated: the gradient goes to the sample
    scale, nan, inf = _scale(xs, layout, spec)
    taps = list(tap_index(layout, spec))

    def weight(v: Any) -> Any:
        w = ops.where(ops.greater(v, 0), v, ops.zeros_like(v)) / scale
        # +inf windows sample uniformly among their +inf taps; NaN windows never sample
        w = ops.where(inf, ops.cast(ops.equal(v, float("inf")), w.dtype), w)
        return ops.where(nan, ops.zeros_like(w), w)

    s = None
    for idx in taps:
        w = weight(xs[idx])
        s = w if s is None else s + w
    u = channels_first_to(layout, u)
    wide = wide_dtype()
    thr = ops.cast(ops.cast(u, wide) * ops.cast(s, wide), s.dtype)
    # strictly below the total, so some tap always crosses it when the total is > 0: the total is 0 or
    # >= 1 (the largest tap weighs exactly 1), where s * (1 - eps / 2) is the float just below s
    below = s * ops.convert_to_tensor(1 - np.finfo(keras.backend.standardize_dtype(s.dtype)).eps / 2, s.dtype)
    thr = ops.where(ops.less(below, thr), below, thr)  # not ops.minimum: float32 on Keras' torch backend
    c = ops.zeros_like(s)
    y = ops.zeros_like(s)
    for idx in taps:
        after = c + weight(xs[idx])
        new = ops.logical_and(ops.less_equal(c, thr), ops.greater(after, thr))
        c = after
        y = y + ops.where(new, xp[idx], ops.zeros_like(y))  # exactly the sample, gradient 1 to it
    return ops.where(nan, ops.full_like(y, float("nan")), y)


def _weigh(xc: Any, layout: Layout, spec: WindowSpec) -> Any:
    """Evaluation: ``sum(a^2) / sum(a)``, computed on ``a / max(a)`` (no overflow for large inputs).

    The value is computed without gradient; a second tap loop adds ``k_i (x_i - stop(x_i))`` (0 in
    value) with ``k_i = (2 a_i / max(a) - y / max(a)) / sum(a / max(a))``, the exact derivative in its
    scaled form: autodiff through ``max(a) * q`` would form ``g max(a) dq`` first, which overflows
    near the float maximum.
    """
    xp = pad_windows(xc, layout, spec, 0.0)
    scale, nan, inf = _scale(ops.stop_gradient(xp), layout, spec)
    # NaN and +-inf taps lie only in windows whose output is set below and that pass no gradient:
    # zeroed, they keep the gradient term finite.
    xf = ops.where(ops.isfinite(xp), xp, ops.zeros_like(xp))
    xs = ops.stop_gradient(xf)
    taps = list(tap_index(layout, spec))

    def weight(v: Any) -> Any:
        return ops.where(ops.greater(v, 0), v, ops.zeros_like(v)) / scale

    s1 = s2 = None
    for idx in taps:
        w = weight(xs[idx])
        s1 = w if s1 is None else s1 + w
        s2 = w * w if s2 is None else s2 + w * w
    has = ops.greater(s1, 0)
    safe = s1 + ops.cast(ops.logical_not(has), s1.dtype)  # 1 where no tap is positive (s2 is 0 too)
    q = s2 / safe
    y = scale * q
    live = ops.logical_and(has, ops.logical_not(ops.logical_or(nan, inf)))
    inv = ops.cast(live, s1.dtype) / safe
    for idx in taps:
        v, vs = xf[idx], xs[idx]
        k = (weight(vs) * 2 - q) * inv
        y = y + ops.where(ops.greater(vs, 0), k * (v - vs), ops.zeros_like(y))
    y = ops.where(inf, ops.full_like(y, float("inf")), y)
    return ops.where(nan, ops.full_like(y, float("nan")), y)


# --------------------------------------------------------------------------- mixed


@public
def mixed_pool(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    *,
    alpha: Any = None,
    mode: str = "layer",
    training: bool = True,
    seed: Any = None,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "mixed_pool",
) -> Any:
    """Mixed pooling ``a * max_pool(x) + (1 - a) * avg_pool(x)`` in ``keras.ops``; see :func:`poolkit.ops.mixed_pool`.

    ``alpha=None``: ``a = lambda`` drawn in {0, 1} with probability 1/2
    (``training=True``, ``keras.random.randint(seed=seed)``) or 1/2
    (``training=False``), Yu et al. 2014. ``alpha`` given (a float, an array
    or a tensor, learnable): Lee et al. 2016. ``mode`` sets its shape:
    ``"layer"`` ``()``, ``"channel"`` ``(C,)``, ``"window"`` the output's
    spatial shape. A drawn ``lambda`` passed as ``alpha`` reproduces the call.

    Notes
    -----
    The terms are poolkit's ``max_pool`` (the gradient to the first maximum)
    and ``avg_pool`` with ``count_include_pad=True``. Non-finite windows follow
    the NumPy reference: a term whose coefficient is 0 is dropped, and they
    add nothing to ``alpha``'s gradient. A tensor ``alpha`` is checked for
    shape and dtype, not for values (keep it in [0, 1]; the layers clamp it).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import mixed_pool1d
    >>> x = np.array([[[1.0, 3.0, -2.0, 0.0]], [[4.0, 0.0, 2.0, 2.0]]])
    >>> np.asarray(mixed_pool1d(x, 2, alpha=0.25, data_format="channels_first")).tolist()
    [[[2.25, -0.75]], [[2.5, 2.0]]]
    """
    mode = check_choice(op, "mode", mode, MODES)
    training = check_bool(op, "training", training)
    seed = check_seed(op, seed)
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, stride)
    spec = window_spec(spatial, kernel_size, stride, padding, 1, ceil_mode, op=op)
    xc, dtype = compute_dtype(ops.convert_to_tensor(x))
    nd, c, out = layout.nd, xc.shape[layout.channel_axis], spec.output_size
    shape = {"layer": (), "channel": (c,), "window": out}[mode]
    if alpha is not None:
        a = _alpha(op, alpha, mode, shape, xc.dtype)
    elif training:
        a = ops.cast(random.randint(shape, 0, 2, seed=seed), xc.dtype)
    else:
        a = ops.full(shape, 0.5, dtype=xc.dtype)
    a = ops.reshape(
        a, {"layer": (), "channel": layout.shape(1, c, (1,) * nd), "window": layout.shape(1, 1, out)}[mode]
    )
    win = dict(data_format=layout_name(layout), ndim=nd, op=op)
    mx = max_pool(xc, kernel_size, stride, padding, 1, ceil_mode, **win)
    av = avg_pool(xc, kernel_size, stride, padding, ceil_mode, True, **win)
    return ops.cast(_combine(a, mx, av), dtype)


def layout_name(layout: Layout) -> str:
    return "channels_last" if layout.channels_last else "channels_first"


def _alpha(op: str, alpha: Any, mode: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """The NumPy reference's checks of ``alpha``: all of them for numbers and arrays, shape and dtype
    for tensors (their values stay on the device)."""
    if not is_tensor(alpha):
        return ops.convert_to_tensor(np.asarray(_check_alpha(op, alpha, mode, shape)).reshape(shape), dtype)
    if not (keras.backend.is_float_dtype(alpha.dtype) or keras.backend.is_int_dtype(alpha.dtype)):
        raise PoolingConfigError(
            f"{op}: alpha must be real numbers in [0, 1], got dtype {alpha.dtype}. "
            f"Pass e.g. alpha=0.5 or a float tensor."
        )
    got = tuple(alpha.shape)
    if not (got == shape or (mode == "layer" and got == (1,))):
        _check_alpha(op, np.zeros(got), mode, shape)  # raises the NumPy reference's shape message
    return ops.reshape(ops.cast(alpha, dtype), shape)


def _combine(a: Any, mx: Any, av: Any) -> Any:
    """``a * mx + (1 - a) * av`` as the NumPy reference computes it.

    ``av + a * d`` for ``a <= 1/2`` and ``mx - (1 - a) * d`` above (``d = mx - av``): exact at
    ``a = 0``, ``a = 1`` and ``mx == av``. Where ``d`` is not finite a term whose coefficient is 0
    is dropped and ``a`` gets no gradient; the selects keep the unused branch's gradient finite.
    """
    d = mx - av
    fin = ops.isfinite(d)
    d0 = ops.where(fin, d, ops.zeros_like(d))
    lo = ops.less_equal(a, 0.5)
    y = ops.where(lo, av, mx) + ops.where(lo, a, a - 1) * d0
    ad = ops.stop_gradient(a)
    zero = ops.zeros_like(mx)
    special = ops.where(ops.equal(ad, 0), zero, mx) * ad + ops.where(ops.equal(ad, 1), zero, av) * (1 - ad)
    return ops.where(fin, y, special)


# --------------------------------------------------------------------------- S3


@public
def s3_pool(
    x: Any,
    kernel_size: Any = 2,
    grid_size: Any = 2,
    *,
    stride: Any = 2,
    training: bool = True,
    samples: Any = None,
    seed: Any = None,
    data_format: str | None = None,
    ndim: int | None = None,
    op: str = "s3_pool",
) -> Any:
    """S3Pool (Zhai et al., CVPR 2017) in ``keras.ops``: stride-1 max pooling, then random ordered rows.

    See :func:`poolkit.ops.s3_pool`: ``m = max_pool(x, kernel_size, 1,
    "same")``, then per spatial axis each grid cell of ``grid_size`` keeps
    ``grid_size / stride`` rows drawn uniformly without replacement (in
    order); in evaluation every ``stride``-th row. ``samples`` (one 1-D
    integer array or tensor per spatial axis: the kept positions) replaces
    the draw; given, the result equals the NumPy reference's. Tensor samples
    are checked for shape and dtype only: keep them strictly increasing and
    in range.

    Notes
    -----
    One draw per call (one ``keras.random.uniform`` for every axis), shared
    by the batch and the channels, as in the authors' code. The gradient
    goes through ``take`` (kept rows are distinct) and ``max_pool`` (to the
    first maximum of each window).

    Examples
    --------
    >>> import numpy as np
    >>> from poolkit.keras.functional import s3_pool1d
    >>> x = np.array([[[1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 6.0, -1.0]]])
    >>> y = s3_pool1d(x, 2, grid_size=4, training=False, data_format="channels_first")
    >>> np.asarray(y).tolist()   # m = [5, 5, 2, 3, 4, 6, 6, -1], every other row
    [[[5.0, 2.0, 4.0, 6.0]]]
    >>> rows = [np.array([2, 3, 6, 7])]
    >>> np.asarray(s3_pool1d(x, 2, grid_size=4, samples=rows, data_format="channels_first")).tolist()
    [[[2.0, 3.0, 6.0, -1.0]]]
    """
    training = check_bool(op, "training", training)
    seed = check_seed(op, seed)
    layout, spatial = _setup(op, x, ndim, data_format, kernel_size, grid_size, stride)
    nd = layout.nd
    k, grid, s = s3_settings(op, nd, kernel_size, grid_size, stride)
    xt = ops.convert_to_tensor(x)
    given = None if samples is None else _rows(op, samples, spatial, s)
    m = max_pool(xt, k, 1, "same", 1, False, data_format=layout_name(layout), ndim=nd, op=op)
    if not training:
        return m[layout.index([slice(None, None, st) for st in s])]
    rows = given if given is not None else _draw_rows(spatial, grid, s, seed)
    for a, r in zip(layout.spatial_axes, rows):
        m = ops.take(m, r, axis=a)
    return m


def s3_settings(
    op: str, nd: int, kernel_size: Any, grid_size: Any, stride: Any, names: Mapping[str, str] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Checked ``kernel_size``, ``grid_size`` and ``stride`` tuples (the grid a multiple of the stride).

    ``names`` are the caller's names for ``kernel_size`` and ``stride`` (the layers': ``pool_size``,
    ``strides``), for the error messages.
    """
    kn, sn = ((names or {}).get(a, a) for a in ("kernel_size", "stride"))
    k = int_tuple(op, kn, kernel_size, nd, 1)
    grid = int_tuple(op, "grid_size", grid_size, nd, 1)
    s = int_tuple(op, sn, stride, nd, 1)
    for j in range(nd):
        if grid[j] % s[j]:
            raise PoolingConfigError(
                f"{op}: grid_size must be a multiple of {sn} on every axis (each grid cell keeps "
                f"grid_size / {sn} rows), got grid_size={grid[j]} and {sn}={s[j]} on axis {j}. "
                f"Use grid_size={s[j] * max(1, round(grid[j] / s[j]))} or another multiple of {s[j]}."
            )
    return k, grid, s


def _rows(op: str, samples: Any, sizes: tuple[int, ...], s: tuple[int, ...]) -> list[Any]:
    """Explicit kept rows: arrays checked as NumPy does; tensors by count, shape and dtype."""
    nd = len(sizes)
    if not (isinstance(samples, (list, tuple)) and any(is_tensor(r) for r in samples)):
        return [ops.convert_to_tensor(r.astype(np.int32)) for r in _check_rows_numpy(op, samples, sizes, s)]
    if len(samples) != nd:
        raise PoolingInputError(
            f"{op}: samples must be a sequence of {nd} 1-D integer arrays (the kept rows of each "
            f"spatial axis), got {len(samples)} of them."
        )
    out = []
    for j, (r, n, st) in enumerate(zip(samples, sizes, s)):
        want = -(-n // st)
        shape = tuple(r.shape) if is_tensor(r) else np.shape(r)
        dtype = keras.backend.standardize_dtype(r.dtype) if is_tensor(r) else np.asarray(r).dtype.name
        if shape != (want,) or not keras.backend.is_int_dtype(dtype):
            raise PoolingInputError(
                f"{op}: samples[{j}] must be {want} integer positions (ceil({n} / stride)), got dtype "
                f"{dtype} and shape {shape}."
            )
        out.append(ops.cast(r, "int32"))
    return out


def _draw_rows(sizes: tuple[int, ...], grid: tuple[int, ...], s: tuple[int, ...], seed: Any) -> list[Any]:
    """Per axis, ``g / s`` sorted rows of each full cell and ``ceil(r / s)`` of a partial one.

    A uniform subset is the first entries of a random permutation (the
    argsort of uniforms), as NumPy draws it; all the uniforms come from one
    ``keras.random.uniform`` call, so an int seed draws every cell afresh.
    """
    u = random.uniform((sum(sizes),), seed=seed)  # one uniform per row of every axis
    rows, at = [], 0
    for n, g, st in zip(sizes, grid, s):
        q, r = divmod(n, g)
        parts = []
        if q:
            cells = ops.reshape(u[at : at + q * g], (q, g))
            pick = ops.sort(ops.argsort(cells, axis=1)[:, : g // st], axis=1)
            offset = ops.convert_to_tensor((np.arange(q) * g)[:, None].astype(np.int32))
            parts.append(ops.reshape(ops.cast(pick, "int32") + offset, (-1,)))
        if r:
            pick = ops.sort(ops.argsort(u[at + q * g : at + n])[: -(-r // st)])
            parts.append(ops.cast(pick, "int32") + q * g)
        at += n
        rows.append(parts[0] if len(parts) == 1 else ops.concatenate(parts))
    return rows
