"""attention_pool: CLIP's AttentionPool2d and PMA seed queries, against torch, a loop and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit import registry
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import global_avg_pool, vjp
from poolkit.ops.attention import attention_pool, attention_pool2d

from helpers import check_grads, numeric_grad

POSITIONAL = ("x", "query", "wq", "wk", "wv", "wo")
OPTIONAL = ("bq", "bk", "bv", "bo", "pos_embed")


def make_args(rng, n, c, spatial, e, e_out, seeds=None, biases=(), pos=False, scale=1.0):
    """Every array argument by name (query None in CLIP mode), float64."""
    s = math.prod(spatial)
    args = {
        "x": rng.standard_normal((n, c, *spatial)) * scale,
        "query": None if seeds is None else rng.standard_normal((seeds, c)),
        "wq": rng.standard_normal((e, c)) / math.sqrt(c),
        "wk": rng.standard_normal((e, c)) / math.sqrt(c),
        "wv": rng.standard_normal((e, c)) / math.sqrt(c),
        "wo": rng.standard_normal((e_out, e)) / math.sqrt(e),
    }
    for b in biases:
        args[b] = rng.standard_normal(e_out if b == "bo" else e) * 0.5
    if pos:
        args["pos_embed"] = rng.standard_normal((s if seeds else s + 1, c)) * 0.5
    return args


def call(args, num_heads, **kw):
    pos = [args[k] for k in POSITIONAL]
    opt = {k: args[k] for k in OPTIONAL if k in args}
    return attention_pool(*pos, num_heads, **opt, **kw)


def pullback_of(args, num_heads, g):
    pos = [args[k] for k in POSITIONAL]
    opt = {k: args[k] for k in OPTIONAL if k in args}
    y, pullback = vjp("attention_pool", *pos, num_heads=num_heads, **opt)
    return y, pullback(g)


def torch_pool(a, num_heads):
    """CLIP's AttentionPool2d.forward (openai/CLIP model.py), generalised to PMA seeds and N-d input."""
    x = a["x"]
    t = x.flatten(start_dim=2).permute(2, 0, 1)  # (S, N, C)
    if a["query"] is None:
        t = torch.cat([t.mean(dim=0, keepdim=True), t], dim=0)
    if a.get("pos_embed") is not None:
        t = t + a["pos_embed"][:, None, :]
    q = t[:1] if a["query"] is None else a["query"][:, None, :].expand(-1, t.shape[1], -1)
    zeros = torch.zeros(a["wq"].shape[0], dtype=torch.float64)
    bias = [a.get(b) for b in ("bq", "bk", "bv")]
    in_bias = None if all(b is None for b in bias) else torch.cat([zeros if b is None else b for b in bias])
    y, _ = F.multi_head_attention_forward(
        query=q,
        key=t,
        value=t,
        embed_dim_to_check=t.shape[-1],
        num_heads=num_heads,
        q_proj_weight=a["wq"],
        k_proj_weight=a["wk"],
        v_proj_weight=a["wv"],
        in_proj_weight=None,
        in_proj_bias=in_bias,
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=a["wo"],
        out_proj_bias=a.get("bo"),
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    return y[0] if a["query"] is None else y.permute(1, 0, 2)


def torch_vjp(args, num_heads, g):
    ta = {k: None if v is None else torch.tensor(v, requires_grad=True) for k, v in args.items()}
    y = torch_pool(ta, num_heads)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), {k: v.grad.numpy() for k, v in ta.items() if v is not None}


def assert_matches_torch(args, num_heads, rng, rtol=1e-10, atol=1e-10):
    y = call(args, num_heads)
    g = rng.standard_normal(y.shape)
    ref_y, ref_grads = torch_vjp(args, num_heads, g)
    np.testing.assert_allclose(y, ref_y, rtol=rtol, atol=atol)
    y2, grads = pullback_of(args, num_heads, g)
    np.testing.assert_array_equal(y2, y)
    assert set(grads) == set(ref_grads)
    for name, ref in ref_grads.items():
        assert grads[name].shape == ref.shape, name
        np.testing.assert_allclose(grads[name], ref, rtol=rtol, atol=atol, err_msg=name)


CLIP_CASES = [
    pytest.param((7,), 1, (), False, id="1d-h1-plain"),
    pytest.param((3, 4), 2, ("bq", "bk", "bv", "bo"), True, id="2d-h2-bias-pos"),
    pytest.param((3, 4), 4, (), True, id="2d-h4-pos"),
    pytest.param((2, 3, 2), 8, ("bq", "bk", "bv", "bo"), False, id="3d-h8-bias"),
    pytest.param((2, 2, 3), 2, ("bq", "bo"), True, id="3d-h2-some-bias-pos"),
]


@pytest.mark.parametrize("spatial,heads,biases,pos", CLIP_CASES)
def test_clip_mode_matches_torch(spatial, heads, biases, pos, rng):
    args = make_args(rng, 3, 8, spatial, 8, 5, biases=biases, pos=pos)
    assert call(args, heads).shape == (3, 5)
    assert_matches_torch(args, heads, rng)


@pytest.mark.parametrize(
    "spatial,heads,seeds,biases,pos",
    [
        pytest.param((6,), 2, 1, (), False, id="1d-h2-q1"),
        pytest.param((3, 3), 4, 3, ("bq", "bk", "bv", "bo"), True, id="2d-h4-q3-bias-pos"),
        pytest.param((2, 2, 2), 1, 4, ("bk", "bo"), True, id="3d-h1-q4-pos"),
        pytest.param((4, 5), 8, 2, (), False, id="2d-h8-q2"),
    ],
)
def test_pma_mode_matches_torch(spatial, heads, seeds, biases, pos, rng):
    args = make_args(rng, 2, 8, spatial, 8, 6, seeds=seeds, biases=biases, pos=pos)
    assert call(args, heads).shape == (2, seeds, 6)
    assert_matches_torch(args, heads, rng)


def loop_pool(args, num_heads):
    """Per-sample, per-query, per-head Python loops; E may differ from C."""
    x, query, wq, wk, wv, wo = (args[k] for k in POSITIONAL)
    e, e_out, d = wq.shape[0], wo.shape[0], wq.shape[0] // num_heads
    bq, bk, bv = (args.get(b, np.zeros(e)) for b in ("bq", "bk", "bv"))
    bo = args.get("bo", np.zeros(e_out))
    out = []
    for xn in x.reshape(*x.shape[:2], -1):
        tokens = [xn[:, i] for i in range(xn.shape[1])]
        if query is None:
            tokens = [sum(tokens) / len(tokens), *tokens]
        if "pos_embed" in args:
            tokens = [t + args["pos_embed"][i] for i, t in enumerate(tokens)]
        rows = []
        for u in [tokens[0]] if query is None else list(query):
            o = np.zeros(e)
            for h in range(num_heads):
                r = slice(h * d, (h + 1) * d)
                q = (wq[r] @ u + bq[r]) / math.sqrt(d)
                scores = [q @ (wk[r] @ t + bk[r]) for t in tokens]
                ex = [math.exp(sc - max(scores)) for sc in scores]
                o[r] = sum(w / sum(ex) * (wv[r] @ t + bv[r]) for w, t in zip(ex, tokens))
            rows.append(wo @ o + bo)
        out.append(rows[0] if query is None else np.stack(rows))
    return np.stack(out)


@pytest.mark.parametrize("seeds", [None, 2])
@pytest.mark.parametrize("spatial", [(4,), (2, 3), (2, 1, 2)], ids=["1d", "2d", "3d"])
def test_matches_per_head_loop_with_embed_size_unlike_channels(seeds, spatial, rng):
    args = make_args(rng, 2, 3, spatial, 6, 2, seeds=seeds, biases=OPTIONAL[:4], pos=True)
    np.testing.assert_allclose(call(args, 3), loop_pool(args, 3), rtol=1e-12, atol=1e-12)
    plain = make_args(rng, 2, 3, spatial, 4, 5, seeds=seeds)
    np.testing.assert_allclose(call(plain, 2), loop_pool(plain, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seeds", [None, 2], ids=["clip", "pma"])
@pytest.mark.parametrize("spatial", [(5,), (2, 2), (2, 1, 2)], ids=["1d", "2d", "3d"])
def test_finite_differences_for_every_argument(seeds, spatial, rng):
    args = make_args(rng, 2, 3, spatial, 4, 2, seeds=seeds, biases=OPTIONAL[:4], pos=True)
    opt = {k: args[k] for k in OPTIONAL}
    positional = {k: args[k] for k in POSITIONAL}
    wrt = tuple(k for k in POSITIONAL if args[k] is not None)
    analytic = check_grads("attention_pool", positional, rng, wrt=wrt, num_heads=2, **opt)
    assert set(analytic) == set(wrt) | set(OPTIONAL)
    g = rng.standard_normal(call(args, 2).shape)
    grads = pullback_of(args, 2, g)[1]
    for name in OPTIONAL:

        def f(v, name=name):
            return call({**args, name: v}, 2)

        np.testing.assert_allclose(
            grads[name], numeric_grad(f, args[name], g), rtol=1e-6, atol=1e-7, err_msg=name
        )


@pytest.mark.parametrize("seeds", [None, 3], ids=["clip", "pma"])
def test_large_inputs_stay_finite_without_warnings(seeds, rng):
    args = make_args(rng, 2, 8, (3, 3), 8, 4, seeds=seeds, biases=OPTIONAL[:4], pos=True, scale=1e3)
    if seeds:
        args["query"] *= 1e3
    with np.errstate(all="raise"):
        y = call(args, 2)
        _, grads = pullback_of(args, 2, np.ones_like(y))
    assert np.isfinite(y).all() and np.abs(y).max() > 1e2  # large, saturated attention
    for name, gval in grads.items():
        assert np.isfinite(gval).all(), name
    ref_y, ref_grads = torch_vjp(args, 2, np.ones_like(y))
    np.testing.assert_allclose(y, ref_y, rtol=1e-9, atol=1e-9 * np.abs(ref_y).max())
    # Saturated attention: the query/key gradients are exact zeros here and rounding residue in
    # torch, which grows with the scores (~1e7); compare on the scale of the largest gradient.
    atol = 1e-10 * max(np.abs(ref).max() for ref in ref_grads.values())
    for name, ref in ref_grads.items():
        np.testing.assert_allclose(grads[name], ref, rtol=1e-7, atol=atol, err_msg=name)


@pytest.mark.parametrize("seeds", [None, 2], ids=["clip", "pma"])
@pytest.mark.parametrize("spatial", [(3, 4), (2, 3, 2)], ids=["2d", "3d"])
def test_channels_last_equals_channels_first(seeds, spatial, rng):
    args = make_args(rng, 2, 4, spatial, 4, 3, seeds=seeds, biases=("bv", "bo"), pos=True)
    g = rng.standard_normal(call(args, 2).shape)
    y, grads = pullback_of(args, 2, g)
    xl = np.moveaxis(args["x"], 1, -1).copy()
    rest = [args[k] for k in POSITIONAL[1:]]
    opt = {k: args[k] for k in OPTIONAL if k in args}
    yl, pb = vjp("attention_pool", xl, *rest, num_heads=2, data_format="channels_last", **opt)
    np.testing.assert_allclose(yl, y, rtol=1e-13, atol=1e-13)
    gl = pb(g)
    assert gl["x"].shape == xl.shape and gl["x"].flags.c_contiguous
    assert grads["x"].flags.c_contiguous
    np.testing.assert_allclose(np.moveaxis(gl["x"], -1, 1), grads["x"], rtol=1e-12, atol=1e-13)
    for name in grads.keys() - {"x"}:
        np.testing.assert_allclose(gl[name], grads[name], rtol=1e-12, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("seeds", [None, 3], ids=["clip", "pma"])
def test_zero_query_key_weights_reduce_to_average_pooling(seeds, rng):
    # Uniform attention: CLIP averages [mean, t_1..t_S], PMA averages t_1..t_S; both are the mean.
    args = make_args(rng, 2, 3, (4, 5), 6, 2, seeds=seeds, biases=("bv", "bo"))
    args["wq"], args["wk"] = np.zeros((6, 3)), np.zeros((6, 3))
    mean = global_avg_pool(args["x"])
    ref = (mean @ args["wv"].T + args["bv"]) @ args["wo"].T + args["bo"]
    y = call(args, 3)
    np.testing.assert_allclose(y if seeds is None else y[:, 1], ref, rtol=1e-12)
    if seeds:
        np.testing.assert_allclose(y, np.repeat(ref[:, None], seeds, axis=1), rtol=1e-12)


def test_mean_token_only_in_clip_mode(rng):
    # A seed equal to the mean token queries the same way, but PMA has no mean token among the keys:
    # with one spatial position both modes see the same single value.
    args = make_args(rng, 2, 4, (1, 1), 4, 3)
    seed = args["x"][0, :, 0, 0][None]
    clip = call({**args, "x": args["x"][:1]}, 2)
    pma = call({**args, "x": args["x"][:1], "query": seed}, 2)
    np.testing.assert_allclose(pma[:, 0], clip, rtol=1e-12)
    big = make_args(rng, 1, 4, (3,), 4, 3)
    seed = big["x"].mean(axis=2)
    clip, pma = call(big, 2), call({**big, "query": seed}, 2)[:, 0]
    assert not np.allclose(clip, pma)  # the mean token is a key in CLIP mode only
    keys = np.concatenate([big["x"].mean(axis=2, keepdims=True), big["x"]], axis=2)
    np.testing.assert_allclose(call({**big, "x": keys, "query": seed}, 2)[:, 0], clip, rtol=1e-12)


def test_nan_and_inf_propagate_per_sample_without_warnings(rng):
    for seeds in (None, 2):
        args = make_args(rng, 3, 4, (2, 3), 4, 2, seeds=seeds)
        for bad in (np.nan, np.inf):
            x = args["x"].copy()
            x[1, 2, 0, 1] = bad
            with np.errstate(all="raise"):
                y = call({**args, "x": x}, 2)
                grads = pullback_of({**args, "x": x}, 2, np.ones_like(y))[1]
            assert np.isnan(y[1]).all()
            assert np.isfinite(y[[0, 2]]).all()
            assert np.isfinite(grads["x"][[0, 2]]).all() and np.isnan(grads["wk"]).any()


def test_dtypes_unbatched_and_empty_batch(rng):
    args = make_args(rng, 2, 4, (3, 3), 4, 3, seeds=2, biases=("bq",), pos=True)
    ref = call(args, 2)
    y32 = call({**args, "x": args["x"].astype(np.float32)}, 2)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ref, rtol=1e-5, atol=1e-5)
    y16 = call({**args, "x": args["x"].astype(np.float16)}, 2)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, ref, rtol=2e-2, atol=2e-2)
    # Gradients keep each argument's dtype.
    mixed = {**args, "wq": args["wq"].astype(np.float32), "pos_embed": args["pos_embed"].astype(np.float32)}
    grads = pullback_of(mixed, 2, np.ones_like(ref))[1]
    assert grads["wq"].dtype == np.float32 and grads["pos_embed"].dtype == np.float32
    assert grads["x"].dtype == grads["wk"].dtype == np.float64
    # Unbatched input through the rank-fixed alias.
    pos = [args[k] for k in POSITIONAL[1:]]
    kw = {"bq": args["bq"], "pos_embed": args["pos_embed"]}
    one = attention_pool2d(args["x"][1], *pos, 2, **kw)
    np.testing.assert_allclose(one, ref[1], rtol=1e-13)
    y, pb = vjp("attention_pool2d", args["x"][1], *pos, num_heads=2, **kw)
    g1 = pb(np.ones_like(y))
    g = np.zeros_like(ref)
    g[1] = 1
    full = pullback_of(args, 2, g)[1]
    assert g1["x"].shape == args["x"][1].shape
    for name in g1:
        np.testing.assert_allclose(g1[name], full[name][1] if name == "x" else full[name], atol=1e-13)
    # Empty batch.
    empty = {**args, "x": np.zeros((0, 4, 3, 3))}
    with np.errstate(all="raise"):
        y0, grads0 = pullback_of(empty, 2, np.zeros((0, 2, 3)))
    assert y0.shape == (0, 2, 3) and grads0["x"].shape == (0, 4, 3, 3)
    np.testing.assert_array_equal(grads0["wq"], 0)


def test_registered_with_its_example(rng):
    info = registry.get("attention_pool")
    assert info.family == "structured" and info.ndims == (1, 2, 3)
    assert info.differentiable == POSITIONAL
    assert registry.resolve("attention_pool3d") == (info, 3)
    x = rng.standard_normal((2, 3, 8, 8))
    arrays, settings = info.example(x)
    y, pb = vjp("attention_pool", *arrays, **settings)
    assert y.shape == (2, 2, 3)
    assert set(pb(np.ones_like(y))) == set(info.differentiable)


def _shapes(**changes):
    rng = np.random.default_rng(0)
    args = make_args(rng, 2, 4, (2, 3), 6, 3)
    return {**args, **changes}


@pytest.mark.parametrize(
    "args,heads,error,match",
    [
        (_shapes(), 4, PoolingConfigError, r"E = wq.shape\[0\] = 6 must be divisible by num_heads=4"),
        (_shapes(), 0, PoolingConfigError, "num_heads must be >= 1"),
        (_shapes(wq=np.zeros((6, 5))), 2, PoolingInputError, r"wq must have shape \(E, C\) = \(E, 4\)"),
        (_shapes(wk=np.zeros((6, 3))), 2, PoolingInputError, r"wk must have shape \(6, 4\)"),
        (_shapes(wv=np.zeros((4, 4))), 2, PoolingInputError, r"wv must have shape \(6, 4\)"),
        (
            _shapes(wo=np.zeros((3, 4))),
            2,
            PoolingInputError,
            r"wo must have shape \(E_out, E\) = \(E_out, 6\)",
        ),
        (_shapes(query=np.zeros(4)), 2, PoolingInputError, r"query must be None .* got shape \(4,\)"),
        (_shapes(bq=np.zeros(4)), 2, PoolingInputError, r"bq must have shape \(6,\)"),
        (_shapes(bo=np.zeros(6)), 2, PoolingInputError, r"bo must have shape \(3,\)"),
        (_shapes(pos_embed=np.zeros((6, 4))), 2, PoolingInputError, r"pos_embed must have shape \(7, 4\)"),
        (
            _shapes(query=np.zeros((2, 4)), pos_embed=np.zeros((7, 4))),
            2,
            PoolingInputError,
            r"pos_embed must have shape \(6, 4\) \(S, C",
        ),
        (_shapes(wk=np.zeros((6, 4), dtype=int)), 2, PoolingInputError, "floating-point wk"),
    ],
)
def test_errors(args, heads, error, match):
    with pytest.raises(error, match=match):
        call(args, heads)


def test_grad_output_shape_is_checked(rng):
    args = make_args(rng, 2, 4, (3,), 4, 3)
    y, pb = vjp("attention_pool1d", *[args[k] for k in POSITIONAL], num_heads=2)
    with pytest.raises(PoolingInputError, match=r"grad_output must have shape \(2, 3\)"):
        pb(np.ones((2, 1, 3)))
