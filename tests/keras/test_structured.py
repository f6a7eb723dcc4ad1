"""Pyramids, SPP/SPPF, masked, attention and segment pooling in Keras: forward and every gradient (input,
mask, projections, biases, positional embedding, seeds, temperature, power) equal to the NumPy reference's
vjp in float64, at the operators' edge cases (paper bins, ties, empty masks and segments, NaN winners,
huge scores), the errors, and the layers' weights and declared shapes.
"""

from __future__ import annotations

import inspect
import math

import keras
import numpy as np
import pytest
from keras import ops

import poolkit.keras as PK
import poolkit.keras.functional as KF
import poolkit.ops as P
from poolkit import registry
from poolkit.errors import PoolingConfigError, PoolingInputError

from cases import RESEARCH_CASES, Case
from keras_helpers import BACKEND, X64, tensor, to_numpy, value_and_grads

x64 = pytest.mark.skipif(not X64, reason="exact float64 comparisons")
CLOSE = dict(rtol=1e-10, atol=1e-12)


def _cl(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1).copy()


def _check(name: str, args: dict, rng: np.random.Generator, tol=CLOSE, **settings) -> np.ndarray:
    """``name(*args.values(), **settings)``, Keras against NumPy's vjp: the forward and the gradient of
    every floating-point NumPy array among the positional and keyword arguments (the others are passed
    as they are: ``None``, integer ids, settings)."""
    if "data_format" in inspect.signature(registry.get(name).function).parameters:
        settings = {"data_format": "channels_first", **settings}  # NumPy's default; Keras' is channels_last
    out, pullback = P.vjp(name, *args.values(), **settings)
    g = rng.standard_normal(np.shape(out))
    ref = pullback(g)
    leaves = [
        (k, v)
        for k, v in [*args.items(), *settings.items()]
        if isinstance(v, np.ndarray) and v.dtype.kind == "f"
    ]
    names = [k for k, _ in leaves]

    def call(*ts: object) -> object:
        sub = dict(zip(names, ts))
        return getattr(KF, name)(
            *[sub.get(k, v) for k, v in args.items()], **{k: sub.get(k, v) for k, v in settings.items()}
        )

    got, grads = value_and_grads(call, [v for _, v in leaves], g)
    np.testing.assert_allclose(got, out, **tol)
    for (label, value), gr in zip(leaves, grads):
        want = ref[label] if label in ref else np.zeros_like(value)
        np.testing.assert_allclose(gr, want, err_msg=label, **tol)
    return got


def _run(fn, *arrays: np.ndarray) -> np.ndarray:
    """``fn(*tensors)`` as NumPy; one XLA compilation on JAX (eager JAX compiles every primitive)."""
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.jit(fn)(*arrays))
    return to_numpy(fn(*[tensor(a) for a in arrays]))


def _no_ties(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape) + np.arange(math.prod(shape)).reshape(shape) * 1e-3


# --------------------------------------------------------------------------- pyramids


@x64
@pytest.mark.parametrize(
    "shape,layout",
    [((2, 2, 7, 5), "channels_first"), ((1, 2, 6, 9), "channels_last"), ((2, 2, 11), "channels_first")],
    ids=["2d", "2d-channels-last", "1d"],
)
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("bins", ["adaptive", "paper"])
def test_spatial_pyramid_equals_numpy(shape, layout, mode, bins, rng):
    """Levels 1-3 on sizes that are not multiples of them: adaptive bins overlap, 'paper' bins
    (kernel ceil(a / n), stride floor(a / n)) may give more than n bins (7 with n = 3: 3 bins of 3, stride 2)."""
    x = _no_ties(shape, rng)
    x = _cl(x) if layout == "channels_last" else x
    nd = len(shape) - 2
    _check(
        f"spatial_pyramid_pool{nd}d",
        {"x": x},
        rng,
        levels=(1, 2, 3),
        mode=mode,
        bins=bins,
        data_format=layout,
    )


@x64
@pytest.mark.parametrize("bins", ["adaptive", "paper"])
def test_spatial_pyramid_3d_channels_last_and_rank_from_input(bins, rng):
    x = _cl(_no_ties((1, 2, 5, 4, 3), rng))
    _check(
        "spatial_pyramid_pool",
        {"x": x},
        rng,
        levels=(1, 2),
        mode="max",
        bins=bins,
        data_format="channels_last",
    )


def test_spatial_pyramid_flattens_channel_first_in_both_layouts(rng):
    """The same vector whatever the layout (torch.flatten(pooled, 1) order), and 'paper' bins' count."""
    x = _no_ties((2, 3, 7, 5), rng)
    first, last = _run(
        lambda a, b: ops.stack(
            [
                KF.spatial_pyramid_pool2d(a, (1, 3), bins="paper", data_format="channels_first"),
                KF.spatial_pyramid_pool2d(b, (1, 3), bins="paper", data_format="channels_last"),
            ]
        ),
        x,
        _cl(x),
    )
    np.testing.assert_array_equal(first, last)
    # level 3 on 7 x 5: kernel (3, 2), stride (2, 1): (7 - 3) // 2 + 1 = 3 rows, (5 - 2) // 1 + 1 = 4 columns
    assert first.shape == (2, 3 * (1 + 3 * 4))
    layer = PK.SpatialPyramidPool2D((1, 3), bins="paper", data_format="channels_first")
    assert layer.compute_output_shape((None, 3, 7, 5)) == (None, 3 * 13)


@x64
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_spp_and_sppf_equal_numpy_with_ties(layout, rng):
    """Integer inputs: ties everywhere, the gradient goes to PyTorch's winner through the cascade too."""
    for shape in [(2, 2, 7, 6), (1, 2, 9)]:
        x = rng.integers(-2, 3, shape).astype(np.float64)
        x = _cl(x) if layout == "channels_last" else x
        nd = len(shape) - 2
        _check(f"spp{nd}d", {"x": x}, rng, kernel_sizes=(3, 5), data_format=layout)
        _check(f"sppf{nd}d", {"x": x}, rng, kernel_size=3, repeats=2, data_format=layout)


@pytest.mark.parametrize("shape", [(2, 11, 9, 3), (1, 8, 9, 7, 2)], ids=["2d", "3d"])
def test_sppf_equals_spp_5_9_13_exactly(shape, rng):
    """SPPF(5) three times = SPP((5, 9, 13)) bit for bit (ties included), and YOLOv5's module."""
    x = tensor(rng.integers(-2, 3, shape).astype(np.float32))
    spp, sppf = to_numpy(KF.spp(x, (5, 9, 13))), to_numpy(KF.sppf(x, 5, 3))
    np.testing.assert_array_equal(sppf, spp)
    np.testing.assert_array_equal(sppf, P.spp(to_numpy(x), (5, 9, 13), data_format="channels_last"))
    if len(shape) == 4:
        y1 = KF.max_pool2d(x, 5, 1, 2)
        y2 = KF.max_pool2d(y1, 5, 1, 2)
        yolo = ops.concatenate([x, y1, y2, KF.max_pool2d(y2, 5, 1, 2)], axis=-1)
        np.testing.assert_array_equal(sppf, to_numpy(yolo))
        layers = to_numpy(PK.SPPF2D()(x)), to_numpy(PK.SPP2D()(x))
        np.testing.assert_array_equal(layers[0], layers[1])


# --------------------------------------------------------------------------- masked


def _masks(x: np.ndarray, rng: np.random.Generator, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """A soft one-channel mask with zeros (some windows empty) and a binary per-channel one."""
    n, c, *spatial = x.shape if layout == "channels_first" else (x.shape[0], x.shape[-1], *x.shape[1:-1])
    one = rng.uniform(0.0, 1.0, (n, 1, *spatial))
    one[one < 0.35] = 0
    full = (rng.random((n, c, *spatial)) > 0.4).astype(np.float64)
    return (_cl(one), _cl(full)) if layout == "channels_last" else (one, full)


@x64
@pytest.mark.parametrize("mode", ["avg", "sum", "max"])
@pytest.mark.parametrize("case,layout", [RESEARCH_CASES[i] for i in (1, 4, 5, 6)])
def test_masked_equals_numpy(case: Case, layout, mode, rng):
    x = case.input(rng)
    x = _cl(x) if layout == "channels_last" else x
    one, full = _masks(x, rng, layout)
    window = case.window()
    name = f"masked_pool{case.nd}d"
    for mask in (one, full):
        _check(name, {"x": x, "mask": mask, "mode": mode}, rng, **window, data_format=layout)
    _check(name, {"x": x, "mask": one, "mode": mode}, rng, data_format=layout)  # global


@x64
@pytest.mark.parametrize("mode", ["avg", "sum", "max"])
def test_masked_empty_windows_give_zero_and_no_gradient(mode, rng):
    x = rng.standard_normal((1, 2, 4, 4))
    mask = np.zeros((1, 1, 4, 4))
    mask[..., :2, :2] = 1.0
    y = _check("masked_pool2d", {"x": x, "mask": mask, "mode": mode, "kernel_size": 2}, rng)
    assert (y[..., 1, :] == 0).all() and (y[..., :, 1] == 0).all()
    _, (gx,) = value_and_grads(
        lambda t: KF.masked_pool2d(t, mask, mode, 2, data_format="channels_first"), [x], np.ones((1, 2, 2, 2))
    )
    assert not gx[..., 2:, :].any() and not gx[..., :, 2:].any()
    empty = to_numpy(KF.masked_pool2d(tensor(x), np.zeros((1, 1, 4, 4)), mode, data_format="channels_first"))
    np.testing.assert_array_equal(empty, np.zeros((1, 2)))  # an all-empty mask: 0, not NaN


@x64
@pytest.mark.parametrize("mode", ["avg", "sum", "max"])
def test_masked_bool_mask_negative_values_padding_and_ceil_mode(mode, rng):
    """A bool mask (not differentiated), all-negative values, padding and a ceil-mode overhang: padded
    and masked-out positions never win a maximum nor count in an average."""
    x = -rng.uniform(1.0, 5.0, (2, 5, 6, 3))
    mask = rng.random((2, 5, 6, 1)) > 0.5
    settings = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, data_format="channels_last")
    y = _check("masked_pool2d", {"x": x, "mask": mask, "mode": mode}, rng, **settings)
    assert (y < 0).any() and (y <= 0).all()


# --------------------------------------------------------------------------- attention


def _attention(rng, c, spatial, e, e_out, seeds=None, biases=(), pos=False, layout="channels_first"):
    s = math.prod(spatial)
    x = rng.standard_normal((2, c, *spatial))
    args = {
        "x": _cl(x) if layout == "channels_last" else x,
        "query": None if seeds is None else rng.standard_normal((seeds, c)),
        "wq": rng.standard_normal((e, c)) / math.sqrt(c),
        "wk": rng.standard_normal((e, c)) / math.sqrt(c),
        "wv": rng.standard_normal((e, c)) / math.sqrt(c),
        "wo": rng.standard_normal((e_out, e)) / math.sqrt(e),
    }
    opt = {b: rng.standard_normal(e_out if b == "bo" else e) * 0.5 for b in biases}
    if pos:
        opt["pos_embed"] = rng.standard_normal((s if seeds else s + 1, c)) * 0.5
    return args, opt


ATTENTION = [
    pytest.param((7,), 1, None, (), False, "channels_first", id="1d-clip-plain"),
    pytest.param((3, 4), 2, None, ("bq", "bk", "bv", "bo"), True, "channels_last", id="2d-clip-bias-pos-cl"),
    pytest.param((3, 4), 4, 3, ("bk", "bo"), True, "channels_first", id="2d-pma-bias-pos"),
    pytest.param((2, 3, 2), 2, 2, ("bq", "bv"), False, "channels_last", id="3d-pma-cl"),
]


@x64
@pytest.mark.parametrize("spatial,heads,seeds,biases,pos,layout", ATTENTION)
def test_attention_equals_numpy(spatial, heads, seeds, biases, pos, layout, rng):
    """Every gradient: x, the seeds, the four projections, the biases and the positional embedding."""
    args, opt = _attention(rng, 4, spatial, 8, 6, seeds, biases, pos, layout)
    y = _check(f"attention_pool{len(spatial)}d", {**args, "num_heads": heads}, rng, **opt, data_format=layout)
    assert y.shape == ((2, 6) if seeds is None else (2, seeds, 6))


@x64
def test_attention_huge_scores_stay_finite(rng):
    """Scores of order 1e4: the softmax subtracts its maximum (one-hot attention, finite gradients)."""
    args, opt = _attention(rng, 4, (3, 3), 4, 4, None, ("bq",), True)
    args["x"] = args["x"] * 300.0
    y = _check("attention_pool2d", {**args, "num_heads": 2}, rng, **opt)
    assert np.isfinite(y).all()


# --------------------------------------------------------------------------- segments

SEGMENT_IDS = np.array([0, 5, 2, 0, 2, 3, 2, 5, 3, 0, 5, 2, 5])  # segments 1, 4 and 6 (trailing) empty


@x64
@pytest.mark.parametrize("mode", ["sum", "mean", "max", "softmax", "power_mean"])
def test_segment_equals_numpy_with_empty_segments(mode, rng):
    x = rng.uniform(0.1, 2.0, (13, 2, 3)) + np.arange(78).reshape(13, 2, 3) * 1e-3  # no ties
    extra = {}
    if mode == "softmax":
        extra = {"t": rng.uniform(0.2, 2.0, (2, 3))}
    elif mode == "power_mean":
        extra = {"p": rng.uniform(1.0, 3.0, (2, 3))}
    y = _check("segment_pool", {"x": x, "batch": SEGMENT_IDS, "num_segments": 7, "mode": mode}, rng, **extra)
    assert not y[[1, 4, 6]].any()
    if extra:  # one scalar (0-d) value: a scalar gradient
        key = next(iter(extra))
        _check(
            "segment_pool",
            {"x": x, "batch": SEGMENT_IDS, "num_segments": 7, "mode": mode},
            rng,
            **{key: np.array(1.7)},
        )


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32", "int64"])
def test_segment_integer_id_dtypes_as_arrays_and_tensors(dtype, rng):
    x = rng.standard_normal((13, 3)).astype(np.float32)
    ids = SEGMENT_IDS.astype(dtype)
    ref = P.segment_pool(x, SEGMENT_IDS, 7, "mean")
    np.testing.assert_allclose(to_numpy(KF.segment_pool(x, ids, 7, "mean")), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(KF.segment_pool(tensor(x), ops.convert_to_tensor(ids), 7, "mean")), ref, rtol=1e-6, atol=1e-6
    )
    got = to_numpy(KF.segment_pool(x, ids, mode="mean"))  # num_segments from a NumPy array's maximum: 6
    np.testing.assert_allclose(got, ref[:6], rtol=1e-6, atol=1e-6)


@x64
def test_segment_max_ties_and_nan_winners(rng):
    """The first maximum in item order gets the gradient; a NaN wins, the last one."""
    x = np.array([[1.0], [3.0], [3.0], [np.nan], [2.0], [np.nan]])
    ids = np.array([0, 0, 0, 1, 1, 1])
    y, (gx,) = value_and_grads(lambda t: KF.segment_pool(t, ids, mode="max"), [x], np.ones((2, 1)))
    assert y[0, 0] == 3.0 and np.isnan(y[1, 0])
    assert gx[:, 0].tolist() == [0, 1, 0, 0, 0, 1]
    _, pullback = P.vjp("segment_pool", x, ids, mode="max")
    np.testing.assert_array_equal(gx, pullback(np.ones((2, 1)))["x"])


def test_segment_tensor_ids_outside_the_range_are_ignored_and_empty_input():
    """Ids in a tensor are not checked: ids outside [0, num_segments) are dropped. No items: zeros (every
    mode; max used to fail on JAX and torch, a reduction over an empty axis)."""
    y = _run(lambda v, i: KF.segment_pool(v, i, 2), np.ones((4, 2)), np.array([0, 5, -1, 1], np.int32))
    np.testing.assert_array_equal(y, [[1.0, 1.0], [1.0, 1.0]])
    modes = ("sum", "mean", "max", "softmax", "power_mean")
    z = _run(
        lambda v: ops.stack([KF.segment_pool(v, np.zeros(0, np.int64), 2, m) for m in modes]),
        np.zeros((0, 3)),
    )
    np.testing.assert_array_equal(z, np.zeros((5, 2, 3)))


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", ["float16"])
def test_dtype_is_kept(dtype, rng):
    x = rng.standard_normal((2, 6, 5, 4)).astype(dtype)
    mask = (rng.random((2, 6, 5, 1)) > 0.3).astype(dtype)
    eye = np.eye(4)
    calls = {
        "spatial_pyramid_pool2d": ((x, (1, 2), "avg"), {}),
        "sppf2d": ((x, 3), {}),
        "masked_pool2d": ((x, mask, "avg", 2), {}),
        "attention_pool2d": ((x, None, eye, eye, eye, eye, 2), {}),
        "segment_pool": ((x.reshape(12, 20), np.arange(12) % 3, 3, "softmax"), {}),
    }
    for name, (args, kw) in calls.items():
        first, rest = args[0], args[1:]  # the input as a tensor, the rest (mask of x's dtype too) as NumPy
        y = _run(lambda t, name=name, rest=rest, kw=kw: getattr(KF, name)(t, *rest, **kw), first)
        assert y.dtype == np.dtype(dtype), name
        if name != "segment_pool":
            kw = {"data_format": "channels_last"}
        ref = getattr(P, name)(*args, **kw)
        np.testing.assert_allclose(y.astype(np.float64), ref, rtol=3e-3, atol=3e-3, err_msg=name)


# --------------------------------------------------------------------------- errors

X = np.zeros((1, 4, 4, 2))  # channels_last (Keras' default): C = 2, 4 x 4


@pytest.mark.parametrize(
    "call,err,words",
    [
        (lambda: KF.sppf2d(X, 4), PoolingConfigError, "kernel_size must be odd"),
        (lambda: KF.spp2d(X, ()), PoolingConfigError, "kernel_sizes must be a non-empty"),
        (lambda: KF.sppf2d(X, 3, 0), PoolingConfigError, "repeats must be >= 1"),
        (lambda: KF.spatial_pyramid_pool2d(X, (0, 1)), PoolingConfigError, "levels must be >= 1, got 0"),
        (lambda: KF.spatial_pyramid_pool2d(X, ()), PoolingConfigError, "levels must be a non-empty sequence"),
        (lambda: KF.spatial_pyramid_pool2d(X, 2, "sum"), PoolingConfigError, "mode must be one of"),
        (
            lambda: KF.spatial_pyramid_pool2d(np.zeros((1, 3, 8, 1)), (4,), bins="paper"),
            PoolingInputError,
            "bins='paper' needs at least 4 samples per axis for level 4, got 3 on spatial axis 0",
        ),
        (lambda: KF.spatial_pyramid_pool2d(X[0]), PoolingInputError, "4-D"),
        (
            lambda: KF.masked_pool2d(X, np.ones((4, 4))),
            PoolingInputError,
            r"mask must have shape \(1, 4, 4, 2\) \(like x\) or \(1, 4, 4, 1\) \(one channel\), got \(4, 4\)",
        ),
        (
            lambda: KF.masked_pool2d(X, np.ones((1, 4, 4, 1)), "mean"),
            PoolingConfigError,
            "mode must be one of",
        ),
        (
            lambda: KF.masked_pool2d(X, -np.ones((1, 4, 4, 1))),
            PoolingInputError,
            "mask values must be finite and >= 0",
        ),
        (lambda: KF.masked_pool2d(X, np.ones((1, 4, 4, 1), np.int32)), PoolingInputError, "mask"),
        (
            lambda: KF.masked_pool2d(X, np.ones((1, 4, 4, 1)), stride=2),
            PoolingConfigError,
            "stride, padding and ceil_mode need a kernel_size",
        ),
        (lambda: KF.masked_pool2d(X, np.ones((1, 4, 4, 1)), "avg", 5), PoolingInputError, "does not fit"),
        (
            lambda: KF.attention_pool2d(X, None, *[np.zeros((3, 2))] * 3, np.zeros((2, 3)), 2),
            PoolingConfigError,
            r"E = wq.shape\[0\] = 3 must be divisible by num_heads=2. Pass num_heads in \[1, 3\]",
        ),
        (
            lambda: KF.attention_pool2d(X, None, np.zeros((4, 3)), *[np.zeros((4, 2))] * 3, 2),
            PoolingInputError,
            r"wq must have shape \(E, C\) = \(E, 2\)",
        ),
        (
            lambda: KF.attention_pool2d(
                X, None, *[np.zeros((2, 2))] * 2, np.zeros((2, 3)), np.zeros((2, 2)), 1
            ),
            PoolingInputError,
            r"wv must have shape \(2, 2\)",
        ),
        (
            lambda: KF.attention_pool2d(X, None, *[np.zeros((2, 2))] * 3, np.zeros((3, 4)), 1),
            PoolingInputError,
            r"wo must have shape \(E_out, E\) = \(E_out, 2\)",
        ),
        (
            lambda: KF.attention_pool2d(X, np.zeros(2), *[np.zeros((2, 2))] * 4, 2),
            PoolingInputError,
            r"query must be None \(CLIP mode\) or Q >= 1 seeds",
        ),
        (
            lambda: KF.attention_pool2d(X, None, *[np.zeros((2, 2))] * 4, 2, pos_embed=np.zeros((16, 2))),
            PoolingInputError,
            r"pos_embed must have shape \(17, 2\) \(S \+ 1, C",
        ),
        (
            lambda: KF.attention_pool2d(
                X, np.zeros((1, 2)), *[np.zeros((2, 2))] * 4, 2, pos_embed=np.zeros((17, 2))
            ),
            PoolingInputError,
            r"pos_embed must have shape \(16, 2\) \(S, C: one row per position in PMA mode",
        ),
        (
            lambda: KF.attention_pool2d(X, None, *[np.zeros((2, 2))] * 4, 2, bo=np.zeros(3)),
            PoolingInputError,
            r"bo must have shape \(2,\)",
        ),
        (
            lambda: KF.attention_pool2d(X, None, *[np.zeros((2, 2), np.int32)] * 4, 2),
            PoolingInputError,
            "wq",
        ),
        (
            lambda: KF.attention_pool2d(X, None, *[np.zeros((2, 2))] * 4, 0),
            PoolingConfigError,
            "num_heads must be >= 1",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), np.array([0, 1]), 2),
            PoolingInputError,
            r"batch must be a 1-D integer array with one segment id per row of x \(4\)",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), np.array([0.0, 1, 1, 0])),
            PoolingInputError,
            "batch must be a 1-D integer array",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), ops.zeros((4,), "float32"), 2),
            PoolingInputError,
            "batch must be a 1-D integer array",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), np.array([0, -1, 0, 0])),
            PoolingInputError,
            "segment ids must be >= 0, got -1",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), np.array([0, 3, 0, 0]), 2),
            PoolingInputError,
            "num_segments=2 but batch holds segment id 3. Pass at least 4",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), ops.zeros((4,), "int32")),
            PoolingConfigError,
            "num_segments=None needs the largest segment id",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), np.zeros(4, np.int64), mode="median"),
            PoolingConfigError,
            "mode must be one of",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), np.zeros(4, np.int64), 1, "power_mean", p=0.0),
            PoolingConfigError,
            "p must be > 0",
        ),
        (
            lambda: KF.segment_pool(
                np.zeros((4, 2)), np.zeros(4, np.int64), 1, "power_mean", p=np.array([1.0, -1.0])
            ),
            PoolingInputError,
            "every p must be finite and > 0",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), np.zeros(4, np.int64), 1, "softmax", t=ops.ones((3,))),
            PoolingInputError,
            r"t must be a scalar or have the feature shape \(2,\), got shape \(3,\)",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2)), np.zeros(4, np.int64), 1, "power_mean", eps=0.0),
            PoolingConfigError,
            "eps must be > 0",
        ),
        (
            lambda: KF.segment_pool(np.zeros((4, 2), np.int32), np.zeros(4, np.int64), 1),
            PoolingInputError,
            "floating-point",
        ),
        # layers
        (lambda: PK.SpatialPyramidPool2D(()), PoolingConfigError, "levels must be a non-empty sequence"),
        (lambda: PK.SpatialPyramidPool2D(bins="exact"), PoolingConfigError, "bins must be one of"),
        (lambda: PK.SPP2D((3, 4)), PoolingConfigError, "pool_sizes must be odd"),
        (lambda: PK.SPP2D(5), PoolingConfigError, "pool_sizes must be a non-empty sequence"),
        (lambda: PK.SPPF2D(5, 0), PoolingConfigError, "repeats must be >= 1"),
        (lambda: PK.SPPF2D(4), PoolingConfigError, "pool_size must be odd"),
        (lambda: PK.MaskedPool(2, padding=2), PoolingConfigError, "padding"),
        (
            lambda: PK.MaskedPool(strides=2),
            PoolingConfigError,
            "strides, padding and ceil_mode need a pool_size",
        ),
        (lambda: PK.MaskedPool(mode="mean"), PoolingConfigError, "mode must be one of 'avg', 'sum', 'max'"),
        (
            lambda: PK.AttentionPool2D(7, 10, 4),
            PoolingConfigError,
            "embed_dim=10 must be divisible by num_heads=4",
        ),
        (lambda: PK.AttentionPool2D(7, 8, 4, num_queries=0), PoolingConfigError, "num_queries must be >= 1"),
        (
            lambda: PK.AttentionPool2D((7, 7, 7), 8, 4),
            PoolingConfigError,
            "spacial_dim must be an int, a .height, width. pair or None",
        ),
        (
            lambda: PK.AttentionPool2D(4, 3, 1)(X),
            PoolingInputError,
            "the input has 2 channels but embed_dim=3",
        ),
        (
            lambda: PK.AttentionPool2D(3, 2, 1)(X),
            PoolingInputError,
            r"positional embedding is for a \(3, 3\) map",
        ),
        (lambda: PK.SegmentPool(None), PoolingConfigError, "num_segments is required"),
        (
            lambda: PK.SegmentPool(2, "mean", learnable=True),
            PoolingConfigError,
            "learnable=True needs mode='softmax'",
        ),
        (lambda: PK.SegmentPool(2, "power_mean", p=-1.0), PoolingConfigError, "p must be > 0"),
        (lambda: PK.SegmentPool(2, "softmax", channels=3), PoolingConfigError, "channels= sets the size"),
        (
            lambda: PK.SegmentPool(2, "softmax", learnable=True, channels=3)(
                np.zeros((4, 2)), np.zeros(4, np.int32)
            ),
            PoolingInputError,
            "channels=3 must equal the feature shape",
        ),
    ],
)
def test_errors_name_the_argument(call, err, words):
    with pytest.raises(err, match=words):
        call()


# --------------------------------------------------------------------------- layers


def test_attention_layer_weights_shapes_seeds_and_trainable(rng):
    clip = PK.AttentionPool2D((3, 4), 8, 2, output_dim=5, seed=3)
    clip.build((None, 3, 4, 8))
    shapes = {w.name: tuple(w.shape) for w in clip.weights}
    assert shapes == {
        "positional_embedding": (13, 8),
        **{f"{k}_proj_weight": (8, 8) for k in "qkv"},
        **{f"{k}_proj_bias": (8,) for k in "qkv"},
        "c_proj_weight": (5, 8),
        "c_proj_bias": (5,),
    }
    assert [w.name for w in clip.non_trainable_weights] == ["k_proj_bias"]  # the softmax ignores it
    values = [to_numpy(w).ravel()[:4] for w in clip.weights]
    assert len({v.tobytes() for v in values}) == len(values)  # no two weights drawn alike
    again = PK.AttentionPool2D((3, 4), 8, 2, output_dim=5, seed=3)
    again.build((None, 3, 4, 8))
    for a, b in zip(again.weights, clip.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    pos = to_numpy(clip.positional_embedding)
    assert 0.5 / math.sqrt(8) < pos.std() < 1.5 / math.sqrt(8)  # torch.randn / sqrt(C)
    assert np.abs(to_numpy(clip.q_proj_weight)).max() <= 1 / math.sqrt(8)
    pma = PK.AttentionPool2D((3, 4), 8, 4, num_queries=2, seed=0)
    pma.build((None, 3, 4, 8))
    assert tuple(pma.query.shape) == (2, 8) and tuple(pma.positional_embedding.shape) == (12, 8)
    free = PK.AttentionPool2D(None, 8, 2)
    free.build((None, 5, 2, 8))  # any input size
    assert free.positional_embedding is None and len(free.weights) == 8


def test_segment_layer_learns_t_and_p(rng):
    for mode, key in (("softmax", "t"), ("power_mean", "p")):
        layer = PK.SegmentPool(4, mode, learnable=True, channels=3, **{key: 2.0})
        x = rng.uniform(0.5, 1.5, (10, 3)).astype(np.float32)
        y = layer(tensor(x), np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3]))
        assert [w.name for w in layer.trainable_weights] == [key]
        assert tuple(layer.param.shape) == (3,) and (to_numpy(layer.param) == 2.0).all()
        ref = P.segment_pool(x, np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3]), 4, mode, **{key: 2.0})
        np.testing.assert_allclose(to_numpy(y), ref, rtol=1e-5, atol=1e-6)
    scalar = PK.SegmentPool(2, "softmax", learnable=True)
    scalar(tensor(np.ones((3, 2), np.float32)), np.array([0, 1, 1]))
    assert tuple(scalar.param.shape) == ()
    assert not PK.SegmentPool(2, "max").weights


@pytest.mark.parametrize(
    "layer,shape,want",
    [
        (PK.SpatialPyramidPool1D((1, 2, 3)), (None, 9, 3), (None, 18)),
        (PK.SpatialPyramidPool2D((1, 2), bins="paper"), (None, 7, 5, 3), (None, 3 * (1 + 4))),
        (PK.SpatialPyramidPool3D((1, 2)), (None, 4, 6, 5, 2), (None, 2 * 9)),
        (PK.SPP2D((3, 5)), (None, 8, 7, 3), (None, 8, 7, 9)),
        (PK.SPP3D((3,), data_format="channels_first"), (None, 2, 4, 6, 5), (None, 4, 4, 6, 5)),
        (PK.SPPF1D(3, 2), (None, 9, 3), (None, 9, 9)),
        (PK.AttentionPool2D((3, 4), 4, 2, output_dim=3, seed=0), (None, 3, 4, 4), (None, 3)),
        (PK.AttentionPool2D(None, 4, 2, num_queries=2, seed=0), (None, 3, 4, 4), (None, 2, 4)),
    ],
    ids=["spp1d", "spp2d-paper", "spp3d", "yolo-spp2d", "yolo-spp3d-cf", "sppf1d", "attention", "pma"],
)
def test_output_shape_with_an_unknown_batch(layer, shape, want):
    assert layer.compute_output_shape(shape) == want
    out = layer(keras.Input(shape[1:], batch_size=None))
    assert tuple(out.shape) == want


def test_masked_and_segment_layers_in_a_model_with_an_unknown_batch(rng):
    inp = keras.Input((6, 5, 3))
    mask = keras.Input((6, 5, 1))
    masked = PK.MaskedPool(2, strides=2, ceil_mode=True, mode="max")
    out = masked(inp, mask)
    assert tuple(out.shape) == (None, 3, 3, 3)
    assert masked.compute_output_shape((None, 6, 5, 3)) == (None, 3, 3, 3)
    assert PK.MaskedPool().compute_output_shape((None, 6, 5, 3)) == (None, 3)
    model = keras.Model([inp, mask], out)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    m = (rng.random((2, 6, 5, 1)) > 0.5).astype(np.float32)
    np.testing.assert_allclose(
        to_numpy(model([tensor(x), tensor(m)])),
        P.masked_pool2d(x, m, "max", 2, 2, ceil_mode=True, data_format="channels_last"),
        rtol=1e-6,
    )
    seg = PK.SegmentPool(3, "mean")
    assert seg.compute_output_shape((None, 4)) == (3, 4)
    items = keras.Input((4,))
    ids = keras.Input((), dtype="int32")
    assert tuple(seg(items, ids).shape) == (3, 4)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a TensorFlow graph with an unknown batch size")
def test_traces_with_an_unknown_batch_in_tf_function(rng):
    import tensorflow as tf

    x = rng.standard_normal((3, 6, 5, 4)).astype(np.float32)
    m = (rng.random((3, 6, 5, 1)) > 0.3).astype(np.float32)
    eye = np.eye(4, dtype=np.float32)

    @tf.function(input_signature=[tf.TensorSpec((None, 6, 5, 4)), tf.TensorSpec((None, 6, 5, 1))])
    def f(a, b):
        return (
            KF.spatial_pyramid_pool2d(a, (1, 2), bins="paper"),
            KF.sppf2d(a, 3),
            KF.masked_pool2d(a, b, "avg", 2),
            KF.attention_pool2d(a, eye[:2], eye, eye, eye, eye, 2),
        )

    got = f(tf.constant(x), tf.constant(m))
    refs = (
        P.spatial_pyramid_pool2d(x, (1, 2), bins="paper", data_format="channels_last"),
        P.sppf2d(x, 3, data_format="channels_last"),
        P.masked_pool2d(x, m, "avg", 2, data_format="channels_last"),
        P.attention_pool2d(x, eye[:2], eye, eye, eye, eye, 2, data_format="channels_last"),
    )
    for y, ref in zip(got, refs):
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-6)
