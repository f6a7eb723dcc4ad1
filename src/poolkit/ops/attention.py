"""Attention pooling: CLIP's AttentionPool2d (mean-token query) and PMA (learned seed queries)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_int
from ..errors import PoolingConfigError, PoolingInputError
from ._api import define
from ._input import Batch, check_float, infer_ndim, prepare

__all__ = ["attention_pool", "attention_pool1d", "attention_pool2d", "attention_pool3d"]


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
    data_format: str = "channels_first",
) -> np.ndarray:
    r"""Multi-head attention pooling of the spatial positions (CLIP's AttentionPool2d, Set Transformer's PMA).

    The spatial positions of ``x`` become tokens; one query (CLIP mode) or
    ``Q`` learned seeds (PMA mode) attend over them with multi-head scaled
    dot-product attention, exactly as
    ``torch.nn.functional.multi_head_attention_forward(...,
    use_separate_proj_weight=True)`` (the call of CLIP's AttentionPool2d).

    Parameters
    ----------
    x : array_like, float
        ``(N, C, *spatial)`` (channels_last: ``(N, *spatial, C)``), any number
        of spatial axes; the ``attention_pool1d/2d/3d`` aliases also take
        unbatched input.
    query : None or array_like, shape (Q, C)
        ``None``: CLIP mode, a single query, the mean token. An array: PMA
        mode, ``Q`` learned seed vectors shared by the whole batch.
    wq, wk, wv : array_like, shape (E, C)
        Query, key and value projections (torch's ``q_proj_weight``,
        ``k_proj_weight``, ``v_proj_weight``; CLIP's ``q_proj.weight`` ...).
    wo : array_like, shape (E_out, E)
        Output projection (torch's ``out_proj_weight``, CLIP's ``c_proj.weight``).
    num_heads : int
        Number of heads ``H``; ``E`` must be divisible by it. Head size ``D = E / H``.
    bq, bk, bv : array_like, shape (E,), optional
        Projection biases (torch's ``in_proj_bias`` split in three); ``None`` is no bias.
    bo : array_like, shape (E_out,), optional
        Output bias; ``None`` is no bias.
    pos_embed : array_like, optional
        Added to the tokens: ``(S + 1, C)`` in CLIP mode (row 0 goes to the
        mean token), ``(S, C)`` in PMA mode, with ``S = prod(spatial)``
        positions in row-major order (as torch's ``x.flatten(2)``). It is not
        resampled to other input sizes.
    data_format : {"channels_first", "channels_last"}

    Returns
    -------
    ndarray
        CLIP mode ``(N, E_out)``, PMA mode ``(N, Q, E_out)`` (without ``N``
        for unbatched input), in the dtype of ``x``.

    Notes
    -----
    Tokens ``t_s`` (``s = 1..S``) are the channel vectors of the spatial positions.

    - CLIP mode (Radford et al., 2021; ``openai/CLIP`` ``model.py``):
      ``T = [mean_s t_s, t_1, ..., t_S] + pos_embed`` (``L = S + 1`` tokens) and
      the one query is ``u_1 = T_0``.
    - PMA mode (Lee et al., 2019): ``T = [t_1, ..., t_S] + pos_embed``
      (``L = S``); the queries are the seeds ``u_j = query[j]``. The mean
      token is *not* a key or value in PMA mode.

    For each head ``h`` (rows ``hD:(h+1)D`` of the projections):

    .. math::

        q_{jh} = (W_q u_j + b_q)_h / \sqrt{D},\quad k_{lh} = (W_k T_l + b_k)_h,\quad
        v_{lh} = (W_v T_l + b_v)_h,

        a_{jlh} = \mathrm{softmax}_l(q_{jh} \cdot k_{lh}),\quad
        o_j = \mathrm{concat}_h \sum_l a_{jlh} v_{lh},\quad y_j = W_o o_j + b_o.

    The softmax subtracts the row maximum, so large inputs do not overflow.
    Backward (hand-written, no autodiff), with ``g_j = dL/dy_j``:
    ``dW_o = sum g_j o_j^T``, ``db_o = sum g_j``, ``do_j = W_o^T g_j``;
    ``dv_lh = sum_j a_jlh do_jh``; ``da_jlh = do_jh . v_lh``; the softmax
    Jacobian-vector product ``ds_jlh = a_jlh (da_jlh - sum_l' a_jl'h da_jl'h)``;
    ``dq_jh = sum_l ds_jlh k_lh / sqrt(D)``, ``dk_lh = sum_j ds_jlh q_jh``;
    the projections give ``dW_q = sum dq_j u_j^T`` (likewise ``W_k``, ``W_v``)
    and ``dT_l = W_k^T dk_l + W_v^T dv_l`` (plus ``W_q^T dq_1`` on ``T_0`` in
    CLIP mode); ``dpos_embed = sum_n dT``; ``dx_s = dT_s + dT_0 / S`` (CLIP:
    the mean token) or ``dT_s`` (PMA); ``dquery_j = sum_n W_q^T dq_j``.

    Conventions:

    - Only the attention: Set Transformer's ``PMA_k(Z) = MAB(S, rFF(Z))`` adds
      a residual, LayerNorm and feed-forward layers around ``MHA(S, Z, Z)``;
      this operator is that ``MHA(S, Z, Z)`` (as timm's ``AttentionPoolLatent``
      core). Like CLIP and unlike timm's ``AttentionPool2d`` (self-attention
      over every token), only the mean token queries in CLIP mode.
    - ``E`` may differ from ``C`` (torch requires ``E = C``). No dropout, masks,
      ``bias_k``/``bias_v`` or ``add_zero_attn``.
    - Differentiable: ``x``, ``query`` (PMA mode), ``wq``, ``wk``, ``wv``,
      ``wo``, and each of ``bq``, ``bk``, ``bv``, ``bo``, ``pos_embed`` that is
      given; every gradient has its argument's shape and dtype.
    - Dtypes: computed in the dtype of ``x`` (float16 in float32, returned as
      float16), with the other arrays cast to it.
    - NaN or inf in any input propagates to the outputs (as in torch), with
      no NumPy warning; a sample's tokens never reach another sample's output.
      Attention weights that underflow to 0 (saturated softmax) do so silently.
    - Errors: ``PoolingConfigError`` when ``E % num_heads != 0`` or
      ``num_heads < 1``; ``PoolingInputError`` for an array of the wrong shape
      or dtype, or an input with no spatial positions.

    References
    ----------
    .. [1] A. Radford et al., "Learning Transferable Visual Models From Natural
       Language Supervision", ICML 2021.
    .. [2] J. Lee et al., "Set Transformer: A Framework for Attention-based
       Permutation-Invariant Neural Networks", ICML 2019.

    Examples
    --------
    With zero query and key weights every head attends uniformly; the tokens
    then average to the spatial mean:

    >>> import numpy as np
    >>> from poolkit.ops.attention import attention_pool
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> eye, zero = np.eye(2), np.zeros((2, 2))
    >>> attention_pool(x, None, zero, zero, eye, eye, num_heads=2)
    array([[1.5, 5.5]])
    >>> from poolkit.ops import vjp
    >>> y, pullback = vjp("attention_pool2d", x, None, zero, zero, eye, eye, num_heads=1)
    >>> grads = pullback(np.ones_like(y))
    >>> sorted(grads), grads["x"].ravel()
    (['wk', 'wo', 'wq', 'wv', 'x'], array([0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]))

    PMA mode, three seeds:

    >>> rng = np.random.default_rng(0)
    >>> w = [rng.standard_normal((4, 2)) for _ in range(3)]
    >>> attention_pool(x, np.ones((3, 2)), *w, rng.standard_normal((5, 4)), num_heads=2).shape
    (1, 3, 5)
    """
    opt = {"bq": bq, "bk": bk, "bv": bv, "bo": bo, "pos_embed": pos_embed}
    return _attention_pool(x, query, wq, wk, wv, wo, num_heads, **opt, data_format=data_format)[0]


@dataclass(frozen=True)
class _Ctx:
    batch: Batch
    pma: bool
    heads: int
    scale: float
    quiet: bool  # a non-finite input: propagate NaN without NumPy warnings
    tokens: np.ndarray  # (N, L, C) keys/values before projection
    u: np.ndarray  # queries before projection: (Q, C) seeds or (N, 1, C) mean token
    qs: np.ndarray  # (N or 1, H, Q, D) projected, scaled queries
    kh: np.ndarray  # (N, H, L, D)
    vh: np.ndarray  # (N, H, L, D)
    p: np.ndarray  # (N, H, Q, L) attention weights
    o: np.ndarray  # (N, Q, E) heads concatenated
    w: dict[str, np.ndarray]  # wq, wk, wv, wo in the compute dtype
    dtypes: dict[str, np.dtype]  # every given array argument's dtype
    out_shape: tuple[int, ...]


def _heads(t: np.ndarray, h: int) -> np.ndarray:
    """``(..., T, E) -> (..., H, T, D)``."""
    return np.swapaxes(t.reshape(*t.shape[:-1], h, t.shape[-1] // h), -2, -3)


def _merge(t: np.ndarray) -> np.ndarray:
    """``(N, H, T, D) -> (N, T, H * D)``."""
    n, h, m, d = t.shape
    return np.swapaxes(t, 1, 2).reshape(n, m, h * d)


def _array(op: str, name: str, value: Any, shape: tuple[int, ...], rule: str) -> np.ndarray:
    a = np.asarray(value)
    check_float(op, a, name)
    if a.shape != shape:
        raise PoolingInputError(f"{op}: {name} must have shape {shape} ({rule}), got shape {a.shape}.")
    return a


def _attention_pool(
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
    data_format: str = "channels_first",
    ndim: int | None = None,
    need_ctx: bool = False,
    op: str = "attention_pool",
) -> tuple[np.ndarray, _Ctx | None]:
    nd = infer_ndim(op, x, ndim)
    batch = prepare(x, op=op, nd=nd, data_format=data_format, accumulate=True)
    h = check_int(op, "num_heads", num_heads, 1)
    n, c = batch.x.shape[:2]
    s = math.prod(batch.spatial)
    if s == 0:
        raise PoolingInputError(f"{op}: x has no spatial positions (spatial shape {batch.spatial}).")
    wq = np.asarray(wq)
    if wq.ndim != 2 or wq.shape[1] != c or wq.shape[0] == 0:
        raise PoolingInputError(
            f"{op}: wq must have shape (E, C) = (E, {c}) with E >= 1 (C = the channels of x), "
            f"got shape {wq.shape}."
        )
    e = wq.shape[0]
    if e % h:
        ok = [d for d in range(1, e + 1) if e % d == 0]
        raise PoolingConfigError(
            f"{op}: the embedding size E = wq.shape[0] = {e} must be divisible by num_heads={h}. "
            f"Pass num_heads in {ok}."
        )
    arrays = {"wq": _array(op, "wq", wq, (e, c), "E, C")}
    for name, val in (("wk", wk), ("wv", wv)):
        arrays[name] = _array(op, name, val, (e, c), "E, C like wq")
    wo = np.asarray(wo)
    if wo.ndim != 2 or wo.shape[1] != e:
        raise PoolingInputError(
            f"{op}: wo must have shape (E_out, E) = (E_out, {e}) (E = wq.shape[0]), got shape {wo.shape}."
        )
    e_out = wo.shape[0]
    arrays["wo"] = _array(op, "wo", wo, wo.shape, "E_out, E")
    pma = query is not None
    if pma:
        query = np.asarray(query)
        if query.ndim != 2 or query.shape[1] != c or query.shape[0] == 0:
            raise PoolingInputError(
                f"{op}: query must be None (CLIP mode) or Q >= 1 seeds shaped (Q, C) = (Q, {c}), "
                f"got shape {query.shape}. Pass one seed as query[None]."
            )
        arrays["query"] = _array(op, "query", query, query.shape, "Q, C")
    length = s if pma else s + 1
    optional = {"bq": (bq, (e,)), "bk": (bk, (e,)), "bv": (bv, (e,)), "bo": (bo, (e_out,))}
    optional["pos_embed"] = (pos_embed, (length, c))
    pos_rule = (
        "S, C: one row per position in PMA mode" if pma else "S + 1, C: the mean token, then S positions"
    )
    for name, (val, shape) in optional.items():
        if val is not None:
            arrays[name] = _array(
                op, name, val, shape, pos_rule if name == "pos_embed" else f"one per row of w{name[1]}"
            )
    dtypes = {k: a.dtype for k, a in arrays.items()}
    ct = batch.x.dtype
    a = {k: v.astype(ct, copy=False) for k, v in arrays.items()}
    finite = bool(np.isfinite(batch.x).all()) and all(np.isfinite(v).all() for v in a.values())
    with np.errstate(all="ignore") if not finite else np.errstate(under="ignore"):
        xt = np.moveaxis(batch.x, 1, -1).reshape(n, s, c)  # free for channels_last memory
        if pma:
            tokens = xt if "pos_embed" not in a else xt + a["pos_embed"]
            u = a["query"]
        else:
            tokens = np.empty((n, length, c), ct)
            tokens[:, 1:] = xt
            np.mean(xt, axis=1, out=tokens[:, 0])
            if "pos_embed" in a:
                tokens += a["pos_embed"]
            u = tokens[:, :1]
        scale = 1.0 / math.sqrt(e // h)
        qp = u @ a["wq"].T
        if "bq" in a:
            qp += a["bq"]
        qs = _heads(qp * ct.type(scale), h)
        qs = qs[None] if pma else qs  # (N or 1, H, Q, D)
        flat = tokens.reshape(n * length, c)
        kv = []
        for wn, bn in (("wk", "bk"), ("wv", "bv")):
            t = (flat @ a[wn].T).reshape(n, length, e)
            if bn in a:
                t += a[bn]
            kv.append(_heads(t, h))
        kh, vh = kv
        p = qs @ np.swapaxes(kh, -1, -2)  # (N, H, Q, L)
        p -= p.max(axis=-1, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=-1, keepdims=True)
        o = _merge(p @ vh)  # (N, Q, E)
        y = o @ a["wo"].T
        if "bo" in a:
            y += a["bo"]
    out = y if pma else y[:, 0]
    if not batch.batched:
        out = out[0]
    out = out.astype(batch.dtype, copy=False)
    ctx = None
    if need_ctx:
        w = {k: a[k] for k in ("wq", "wk", "wv", "wo")}
        ctx = _Ctx(batch, pma, h, scale, not finite, tokens, u, qs, kh, vh, p, o, w, dtypes, out.shape)
    return out, ctx


def _attention_backward(ctx: _Ctx, grad_output: Any) -> dict[str, np.ndarray]:
    batch = ctx.batch
    g = np.asarray(grad_output)
    if g.shape != ctx.out_shape:
        raise PoolingInputError(
            f"{batch.op}: grad_output must have shape {ctx.out_shape} (the shape of the output), got {g.shape}."
        )
    ct = batch.x.dtype
    g = g.astype(ct, copy=False)
    n, c = batch.x.shape[:2]
    s = math.prod(batch.spatial)
    w, tokens = ctx.w, ctx.tokens
    length, e = tokens.shape[1], w["wq"].shape[0]
    g = g.reshape(n, ctx.o.shape[1], w["wo"].shape[0])  # (N, Q, E_out)
    quiet = ctx.quiet or not np.isfinite(g).all()
    grads: dict[str, np.ndarray] = {}
    with np.errstate(all="ignore") if quiet else np.errstate(under="ignore"):
        grads["wo"] = g.reshape(-1, g.shape[-1]).T @ ctx.o.reshape(-1, e)
        grads["bo"] = g.sum(axis=(0, 1))
        go = _heads(g @ w["wo"], ctx.heads)  # (N, H, Q, D)
        gvh = np.swapaxes(ctx.p, -1, -2) @ go
        ga = go @ np.swapaxes(ctx.vh, -1, -2)  # (N, H, Q, L)
        ga -= (ga * ctx.p).sum(axis=-1, keepdims=True)
        ga *= ctx.p  # softmax Jacobian-vector product
        gq = _merge(ga @ ctx.kh) * ct.type(ctx.scale)  # (N, Q, E)
        flat = tokens.reshape(n * length, c)
        gt = np.zeros((n * length, c), ct)
        for name, gh in (("k", np.swapaxes(ga, -1, -2) @ ctx.qs), ("v", gvh)):
            gflat = _merge(gh).reshape(n * length, e)
            grads[f"w{name}"] = gflat.T @ flat
            grads[f"b{name}"] = gflat.sum(axis=0)
            gt += gflat @ w[f"w{name}"]
        gt = gt.reshape(n, length, c)
        if ctx.pma:
            gq = gq.sum(axis=0)  # (Q, E): the seeds are shared over the batch
            grads["wq"] = gq.T @ ctx.u
            grads["query"] = gq @ w["wq"]
        else:
            gq = gq[:, 0]  # (N, E)
            grads["wq"] = gq.T @ ctx.u[:, 0]
            gt[:, 0] += gq @ w["wq"]
        grads["bq"] = gq.sum(axis=0)
        grads["pos_embed"] = gt.sum(axis=0)
        gx = batch.empty((n, c, *batch.spatial))
        view = np.moveaxis(gx, 1, -1)  # (N, *spatial, C) in the user's memory layout
        sp = (n, *batch.spatial, c)
        if ctx.pma:
            view[...] = gt.reshape(sp)
        else:
            mean_part = (gt[:, 0] / ct.type(s)).reshape(n, *[1] * batch.nd, c)
            np.add(gt[:, 1:].reshape(sp), mean_part, out=view)
    out = {"x": batch.to_user(gx)}
    for name, dtype in ctx.dtypes.items():
        out[name] = grads[name].astype(dtype, copy=False)
    return out


def _example(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    rng = np.random.default_rng(0)
    c, e, seeds = x.shape[1], 4, 2

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(x.dtype)

    return (x, w(seeds, c), w(e, c), w(e, c), w(e, c), w(c, e)), {"num_heads": 2}


_aliases = define(
    attention_pool,
    _attention_pool,
    _attention_backward,
    family="structured",
    backends=("numpy", "torch", "keras"),
    ndims=(1, 2, 3),
    differentiable=("x", "query", "wq", "wk", "wv", "wo"),
    learnable=("query", "wq", "wk", "wv", "wo"),
    example=_example,
)
attention_pool1d = _aliases["attention_pool1d"]
attention_pool2d = _aliases["attention_pool2d"]
attention_pool3d = _aliases["attention_pool3d"]
