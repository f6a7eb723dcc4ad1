"""GeM, LSE, SoftPool and LIP in Keras: NumPy parity (forward and every gradient), stability, layers.

Gradients are each backend's own autodiff, compared with ``poolkit.ops.vjp``
in float64; the +-1e4, NaN and inf rules of the NumPy operators hold on
every backend (outputs equal, gradients finite and equal).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import poolkit.keras as PK
import poolkit.keras.functional as KF
from poolkit import registry
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp

from cases import RESEARCH_CASES, Case, nonfinite_gem_input, nonfinite_lip_inputs
from keras_helpers import BACKEND, X64, tensor, to_numpy, value_and_grads

OPS = ["gem_pool", "lse_pool", "soft_pool", "lip_pool"]
x64 = pytest.mark.skipif(not X64, reason="exact float64 comparisons")
CLOSE = dict(rtol=1e-10, atol=1e-12)


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _check(op, arrays, params, kw, rng, tol=CLOSE, exact_nan=False):
    """Forward and the gradient of every array and learnable setting against ``poolkit.ops.vjp``."""
    y, pullback = vjp(op, *arrays, **params, **kw)
    g = rng.standard_normal(y.shape).astype(y.dtype) if not exact_nan else np.ones_like(y)
    ref = pullback(g)
    names = [*registry.get(op).arrays[: len(arrays)], *params]
    n = len(arrays)

    def fn(*ts):
        return getattr(KF, op)(*ts[:n], **dict(zip(params, ts[n:])), **kw)

    inputs = [*arrays, *(np.asarray(v, dtype=arrays[0].dtype) for v in params.values())]
    got, grads = value_and_grads(fn, inputs, g)
    # NaN where NumPy has NaN, inf where it has inf (assert_allclose compares those exactly)
    np.testing.assert_allclose(got, y, **tol)
    for name, gr in zip(names, grads):
        assert np.isfinite(gr).all(), name
        assert np.shape(gr) == np.shape(ref[name]), name
        np.testing.assert_allclose(gr, ref[name], err_msg=name, **tol)


def _params(op: str, case: Case, rng: np.random.Generator, per_channel: bool):
    c = case.shape[1]
    x = case.input(rng)
    if op == "gem_pool":  # about half the inputs below eps: the clamp's zero gradient is covered
        return (x,), {"p": np.linspace(1.5, 4.0, c) if per_channel else 2.5}
    if op == "lse_pool":
        return (x,), {"r": np.linspace(0.5, 8.0, c) if per_channel else 3.0}
    if op == "lip_pool":
        return (x, rng.standard_normal(case.shape) * 2), {}
    return (x,), {}


# --------------------------------------------------------------------------- parity with NumPy


@x64
@pytest.mark.parametrize(
    "case,layout", [c.values for c in RESEARCH_CASES], ids=[c.id for c in RESEARCH_CASES]
)
@pytest.mark.parametrize("op", OPS)
def test_research_cases_match_numpy(op, case: Case, layout, rng):
    """Per-channel parameters on the channels-first cases, one shared value on channels-last ones."""
    arrays, params = _params(op, case, rng, per_channel=layout == "channels_first")
    arrays = tuple(_layout(a, layout) for a in arrays)
    _check(op, arrays, params, dict(data_format=layout, **case.window()), rng)


@x64
@pytest.mark.parametrize("op", OPS)
def test_padding_taps_carry_no_weight(op, rng):
    """All-negative maps with padding: a zero pad counted as a tap would pull every border output up."""
    case = Case((1, 2, 6, 5), 3, 2, 1, ceil_mode=True, kind="negative")
    arrays, params = _params(op, case, rng, per_channel=True)
    if op == "gem_pool":  # negative inputs clamp to eps: use positive ones, below the zero of a pad
        arrays = (arrays[0] + 6.0,)
    _check(op, arrays, params, dict(data_format="channels_first", **case.window()), rng)


@x64
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 5, 4), (1, 2, 3, 4, 3)], ids=["1d", "2d", "3d"])
def test_global_gem_matches_numpy(shape, keep, rng):
    layout = "channels_last" if keep else "channels_first"
    x = _layout(rng.standard_normal(shape) + 0.3, layout)
    p = np.linspace(1.5, 4.0, shape[1]) if keep else 2.5
    _check("global_gem_pool", (x,), {"p": p}, dict(keepdims=keep, data_format=layout), rng)


def test_float_and_array_parameters_are_constants(rng):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    for op, kw in [
        ("gem_pool2d", dict(p=2.0)),
        ("gem_pool2d", dict(p=np.array([1.0, 2.0, 3.0]))),
        ("lse_pool2d", dict(r=4)),
    ]:
        got = to_numpy(getattr(KF, op)(tensor(x), 3, 2, 1, data_format="channels_first", **kw))
        np.testing.assert_allclose(got, vjp(op, x, kernel_size=3, stride=2, padding=1, **kw)[0], rtol=2e-6)


# --------------------------------------------------------------------------- large values, NaN and inf


@pytest.mark.parametrize(
    "op,kw",
    [
        ("soft_pool2d", dict(kernel_size=3, stride=2, padding=1)),
        ("lse_pool2d", dict(kernel_size=3, stride=1, padding=1, r=np.array([1e3, 1.0]))),
        ("gem_pool2d", dict(kernel_size=2, p=np.array([3.0, 1.5]))),
    ],
    ids=["soft", "lse", "gem"],
)
def test_inputs_of_1e4_in_float32_are_finite_and_match_numpy(op, kw, rng):
    x = (rng.standard_normal((1, 2, 6, 6)) * 1e4).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in kw.items() if isinstance(v, np.ndarray)}
    window = {k: v for k, v in kw.items() if k not in params}
    _check(op, (x,), params, dict(window, data_format="channels_first"), rng, tol=dict(rtol=1e-4, atol=1e-5))


def test_soft_pool_at_1e4_is_max_pooling():
    """One-hot weights at this scale: the output and the gradient of max pooling (the reference overflows)."""
    x = np.array([[[[-1e4, 1e4], [2e4, 0.0]], [[3e4, 2e4], [1e4, -3e4]]]], np.float32)
    got, (gx,) = value_and_grads(
        lambda t: KF.soft_pool2d(t, 2, data_format="channels_first"), [x], np.ones((1, 2, 1, 1), np.float32)
    )
    assert got.ravel().tolist() == [2e4, 3e4]
    assert gx.ravel().tolist() == [0, 0, 1, 0, 1, 0, 0, 0]


def test_lip_logits_of_1e4_in_float32(rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    logits = np.where(rng.random(x.shape) < 0.5, 1e4, -1e4).astype(np.float32)
    _check(
        "lip_pool2d",
        (x, logits),
        {},
        dict(kernel_size=2, data_format="channels_first"),
        rng,
        tol=dict(rtol=1e-5, atol=1e-6),
    )


NAN, INF = np.nan, np.inf


def _soft_lse_input() -> np.ndarray:
    x = np.array([[[[INF, 0.0], [1.0, 2.0]], [[-INF, -INF], [-INF, -INF]], [[NAN, 0.0], [1.0, 2.0]]]])
    x = np.concatenate([x, np.tile([[1.0, 2.0], [3.0, 4.0]], (1, 3, 1, 1))], axis=-1)
    x[0, 0, 1, 3] = -INF  # -inf beside numbers: weight 0 (LSE), NaN (SoftPool: 0 * -inf)
    return x


@x64
@pytest.mark.parametrize(
    "window", [dict(kernel_size=2), dict(kernel_size=2, stride=1, padding=1)], ids=["tiles", "overlap-pad"]
)
@pytest.mark.parametrize(
    "op,arrays,params",
    [
        ("soft_pool2d", (_soft_lse_input(),), {}),
        ("lse_pool2d", (_soft_lse_input(),), {"r": np.array([1.0, 2.0, 3.0])}),
        ("gem_pool2d", (nonfinite_gem_input(),), {"p": np.array([2.0, 3.0, 4.0])}),
        ("lip_pool2d", nonfinite_lip_inputs(), {}),
    ],
    ids=["soft", "lse", "gem", "lip"],
)
def test_nan_and_inf_follow_the_numpy_rules(op, arrays, params, window, rng):
    """Outputs exactly NumPy's (NaN, +-inf included); gradients finite, 0 from non-finite windows."""
    _check(op, arrays, params, dict(window, data_format="channels_first"), rng, exact_nan=True)


def test_gem_overflow_and_underflow_pass_no_gradient():
    for value, p, expect in [(1e13, 3.0, np.inf), (-1.0, 10.0, 0.0)]:  # (1e13)^3 overflows, eps^10 underflows
        x = np.full((1, 1, 2, 2), value, np.float32)
        got, (gx, gp) = value_and_grads(
            lambda t, q: KF.gem_pool2d(t, 2, p=q, data_format="channels_first"),
            [x, np.float32(p)],
            np.ones((1, 1, 1, 1), np.float32),
        )
        assert got.item() == expect and (gx == 0).all() and gp == 0


# --------------------------------------------------------------------------- dtypes, errors


@pytest.mark.parametrize("op", OPS)
def test_float16_is_computed_in_float32(op, rng):
    x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
    extra = (rng.standard_normal(x.shape).astype(np.float32),) if op == "lip_pool" else ()
    kw = dict(kernel_size=3, stride=2, padding=1, data_format="channels_first")
    fn = getattr(KF, op + "2d")
    y = fn(tensor(x.astype(np.float16)), *(tensor(e.astype(np.float16)) for e in extra), **kw)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    ref = vjp(
        op + "2d", x.astype(np.float16).astype(np.float32), *(e.astype(np.float16) for e in extra), **kw
    )[0]
    np.testing.assert_allclose(to_numpy(y).astype(np.float32), ref, rtol=2e-3, atol=2e-3)


def test_errors_name_the_argument(rng):
    x = tensor(np.ones((1, 3, 4, 4), np.float32))
    cf = dict(data_format="channels_first")
    with pytest.raises(
        PoolingInputError, match=r"gem_pool2d: p must be a scalar or have shape \(3,\).*got shape \(2,\)"
    ):
        KF.gem_pool2d(x, 2, p=tensor(np.ones(2, np.float32)), **cf)
    with pytest.raises(PoolingInputError, match=r"p must be a scalar or have shape \(3,\)"):
        KF.gem_pool2d(x, 2, p=np.ones(4), **cf)
    with pytest.raises(PoolingConfigError, match=r"p must be > 0 and finite, got 0\.0"):
        KF.gem_pool2d(x, 2, p=0.0, **cf)
    with pytest.raises(PoolingConfigError, match="p must be a positive real number or a tensor of 3"):
        KF.global_gem_pool(x, p=tensor(np.array(True)), **cf)
    with pytest.raises(PoolingConfigError, match=r"r must be > 0 and finite, got -1\.0"):
        KF.lse_pool2d(x, 2, r=-1.0, **cf)
    with pytest.raises(PoolingConfigError, match="eps must be > 0"):
        KF.gem_pool2d(x, 2, eps=0.0, **cf)
    with pytest.raises(
        PoolingInputError, match=r"logits must have the shape of x \(1, 3, 4, 4\).*got \(1, 3, 4\)"
    ):
        KF.lip_pool2d(x, tensor(np.ones((1, 3, 4), np.float32)), 2, **cf)
    with pytest.raises(PoolingInputError, match="expects a floating-point logits .* got dtype int32"):
        KF.lip_pool2d(x, tensor(np.ones((1, 3, 4, 4), np.int32)), 2, **cf)
    with pytest.raises(PoolingInputError, match="global_gem_pool expects an array shaped"):
        KF.global_gem_pool(tensor(np.ones((4, 4), np.float32)))
    with pytest.raises(PoolingInputError, match="needs at least one spatial position"):
        KF.global_gem_pool(tensor(np.ones((1, 3, 0, 4), np.float32)), **cf)
    with pytest.raises(PoolingInputError, match=r"soft_pool2d expects a 4-D tensor"):
        KF.soft_pool2d(tensor(np.ones((4, 4), np.float32)), 2)
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=3"):
        KF.soft_pool2d(x, 3, padding=2, **cf)


# --------------------------------------------------------------------------- layers


def test_learnable_weights_shapes_and_values(rng):
    x = rng.random((2, 6, 5, 3)).astype(np.float32) + 0.1
    gem = PK.GeMPool2D(2, p=2.0, per_channel=True)
    y = gem(tensor(x))
    assert tuple(gem.p.shape) == (3,) and [w.name for w in gem.trainable_weights] == ["p"]
    np.testing.assert_allclose(
        to_numpy(y), vjp("gem_pool2d", x, kernel_size=2, p=2.0, data_format="channels_last")[0], rtol=1e-5
    )
    lse = PK.LSEPool1D(3, 2, 1, r=4.0, learnable=False)
    lse(tensor(x[:, 0]))
    assert tuple(lse.r.shape) == () and lse.trainable_weights == [] and len(lse.weights) == 1
    glob = PK.GlobalGeMPool2D(p=3.0, keepdims=True)
    assert tuple(glob(tensor(x)).shape) == (2, 1, 1, 3) and tuple(glob.p.shape) == ()
    assert gem.get_config()["p"] == 2.0 and lse.get_config()["r"] == 4.0


def test_lip_default_network_starts_as_average_pooling(rng):
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    layer = PK.LIPPool2D(3, 2, 1, data_format="channels_first")
    y = to_numpy(layer(tensor(x)))
    assert sorted(w.name for w in layer.trainable_weights) == ["beta", "gamma", "kernel"]
    ref = vjp("avg_pool2d", x, kernel_size=3, stride=2, padding=1, count_include_pad=False)[0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    layer.logit.kernel.assign(rng.standard_normal((4, 4)).astype(np.float32))
    logits = to_numpy(layer.logit(tensor(x)))
    assert (logits > 0).all() and (logits < 12).all()  # the gate bounds the logits to (0, 12)
    assert not np.allclose(to_numpy(layer(tensor(x))), ref, atol=1e-3)
    # the same weights in channels_last give the transposed result
    cl = PK.LIPPool2D(3, 2, 1, data_format="channels_last")
    cl(tensor(np.moveaxis(x, 1, -1)))
    cl.logit.set_weights(layer.logit.get_weights())
    np.testing.assert_allclose(
        to_numpy(cl(tensor(np.moveaxis(x, 1, -1)))),
        np.moveaxis(to_numpy(layer(tensor(x))), 1, -1),
        rtol=1e-5,
        atol=1e-6,
    )


def test_lip_custom_logit_layer_and_its_config(rng):
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    soft = PK.LIPPool2D(3, 2, 1, logit=keras.layers.Identity())  # e^x weights: SoftPool
    np.testing.assert_allclose(
        to_numpy(soft(tensor(x))),
        vjp("soft_pool2d", x, kernel_size=3, stride=2, padding=1, data_format="channels_last")[0],
        rtol=1e-5,
        atol=1e-6,
    )
    config = soft.get_config()
    clone = PK.LIPPool2D.from_config(config)
    assert isinstance(clone.logit, keras.layers.Identity) and clone.get_config() == config
    with pytest.raises(PoolingConfigError, match="logit must be None .* or a keras Layer"):
        PK.LIPPool2D(2, logit=lambda t: t)


def test_layer_construction_errors():
    with pytest.raises(PoolingConfigError, match="pool_size must be >= 1"):
        PK.GeMPool2D(0)
    with pytest.raises(PoolingConfigError, match=r"GeMPool2D: p must be > 0, got 0\.0"):
        PK.GeMPool2D(2, p=0.0)
    with pytest.raises(PoolingConfigError, match="per_channel must be True or False"):
        PK.GeMPool2D(2, per_channel=1)
    with pytest.raises(PoolingConfigError, match="learnable must be True or False"):
        PK.GlobalGeMPool2D(learnable="yes")
    with pytest.raises(PoolingConfigError, match="r must be a finite number"):
        PK.LSEPool2D(2, r=float("nan"))
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of pool_size=3"):
        PK.SoftPool2D(3, padding=2)
    with pytest.raises(PoolingConfigError, match="data_format must be one of"):
        PK.SoftPool2D(2, data_format="NHWC")
    with pytest.raises(PoolingInputError, match="GlobalGeMPool2D expects a 4-D tensor"):
        PK.GlobalGeMPool2D()(keras.ops.ones((1, 2, 3, 4, 5)))
    with pytest.raises(PoolingInputError, match="does not fit"):
        PK.GeMPool2D(5)(keras.Input((4, 4, 3)))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow graph with an unknown batch size")
def test_functions_trace_with_an_unknown_batch_size(rng):
    import tensorflow as tf

    x = rng.standard_normal((3, 6, 5, 2)).astype(np.float32)
    spec = tf.TensorSpec((None, 6, 5, 2), tf.float32)
    for fn in (
        lambda t: KF.gem_pool2d(t, 2, p=tf.ones((2,)), data_format="channels_last"),
        lambda t: KF.global_gem_pool(t, data_format="channels_last"),
        lambda t: KF.lse_pool2d(t, 3, 2, 1, data_format="channels_last"),
        lambda t: KF.soft_pool2d(t, 3, 2, 1, data_format="channels_last"),
        lambda t: KF.lip_pool2d(t, t * 2.0, 2, data_format="channels_last"),
    ):
        np.testing.assert_allclose(
            tf.function(fn, input_signature=[spec])(x).numpy(), fn(tf.constant(x)).numpy(), rtol=1e-6
        )
