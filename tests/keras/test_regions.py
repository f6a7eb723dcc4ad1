"""Region pooling in Keras: forward and every gradient (features, and the boxes for precise RoI pooling)
equal to the NumPy reference's vjp in float64, on boxes inside, partly outside, reversed, empty and
sub-pixel, in both box formats and layouts; the adaptive grid, FPN level assignment, the PS channel rule,
non-finite inputs, unusable boxes, the errors, the layers' shapes, and tf.image.crop_and_resize.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import poolkit.keras as PK
import poolkit.keras.functional as KF
import poolkit.ops as P
from poolkit.errors import PoolingConfigError, PoolingInputError

from cases import mixed_boxes
from keras_helpers import BACKEND, X64, tensor, to_numpy, value_and_grads

x64 = pytest.mark.skipif(not X64, reason="exact float64 comparisons")
CLOSE = dict(rtol=1e-10, atol=1e-12)
FLT_MAX = float(np.finfo(np.float32).max)


def per_image(b: np.ndarray, n: int) -> list[np.ndarray]:
    return [b[b[:, 0] == i, 1:] for i in range(n)]


def _cl(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1).copy()


def _run(fn, *arrays: np.ndarray) -> np.ndarray:
    """``fn(*tensors)`` as NumPy; one XLA compilation on JAX (eager JAX compiles every primitive)."""
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.jit(fn)(*arrays))
    return to_numpy(fn(*[tensor(a) for a in arrays]))


def _check(op: str, x: np.ndarray, boxes, rng, box_grad: bool = False, tol=CLOSE, **kw) -> tuple:
    """Keras ``op(x, boxes, **kw)`` against NumPy's vjp: the forward, the features' gradient and, with
    ``box_grad``, the gradient of the boxes (every per-image array of a list). Returns the output and
    the gradients."""
    kw = {"data_format": "channels_first", **kw}
    with np.errstate(invalid="ignore"):  # the reference's sums over NaN
        out, pullback = P.vjp(op, x, boxes, **kw)
        g = rng.standard_normal(out.shape)
        ref = pullback(g)
    listed = isinstance(boxes, list)
    arrays = [x] + ((list(boxes) if listed else [boxes]) if box_grad else [])

    def call(xt, *bt):
        b = (list(bt) if listed else bt[0]) if box_grad else boxes
        return getattr(KF, op)(xt, b, **kw)

    got, grads = value_and_grads(call, arrays, g)
    finite = np.isfinite(out)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(out))  # NaN and +-inf bins agree exactly
    np.testing.assert_array_equal(got[~finite & ~np.isnan(out)], out[~finite & ~np.isnan(out)])
    np.testing.assert_allclose(got[finite], out[finite], **tol)
    np.testing.assert_allclose(grads[0], ref["x"], err_msg="x", **tol)
    if box_grad:
        want = ref["boxes"] if listed else [ref["boxes"]]
        for i, (a, e) in enumerate(zip(grads[1:], want)):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
            ok = ~np.isnan(e)
            np.testing.assert_allclose(a[ok], e[ok], rtol=1e-9, atol=1e-10, err_msg=f"boxes[{i}]")
    return got, grads


# --------------------------------------------------------------------------- NumPy parity

CF, CL = ("channels_first", "array"), ("channels_last", "list")
CASES = [
    ("roi_pool", dict(output_size=(2, 3), spatial_scale=0.5), CF),
    ("roi_pool", dict(output_size=(2, 3)), CL),
    ("roi_align", dict(output_size=(3, 2), sampling_ratio=-1, aligned=False), CF),
    ("roi_align", dict(output_size=(2, 2), sampling_ratio=2, aligned=True, spatial_scale=0.5), CL),
    ("roi_align", dict(output_size=2, sampling_ratio=0, aligned=True), CF),
    ("ps_roi_pool", dict(output_size=(2, 3)), CL),
    ("ps_roi_align", dict(output_size=(3, 2), sampling_ratio=0), CF),
    ("ps_roi_align", dict(output_size=(2, 2), sampling_ratio=3, spatial_scale=0.75), CL),
    ("precise_roi_pool", dict(output_size=(2, 3), spatial_scale=0.75), CF),
    ("precise_roi_pool", dict(output_size=(3, 2)), CL),
]


@x64
@pytest.mark.parametrize(
    "op,kw,setup",
    CASES,
    ids=[f"{c[0]}-{i}-{'cf-array' if c[2] == CF else 'cl-list'}" for i, c in enumerate(CASES)],
)
def test_equals_numpy_forward_and_every_gradient(op, kw, setup, rng):
    layout, fmt = setup
    n, c, h, w = 2, 12, 7, 9
    x = rng.standard_normal((n, c, h, w)) + np.arange(h * w).reshape(h, w) * 1e-3  # no ties
    b = mixed_boxes(rng, n, 24, h, w, kw.get("spatial_scale", 1.0))
    x = _cl(x) if layout == "channels_last" else x
    boxes = per_image(b, n) if fmt == "list" else b
    _check(op, x, boxes, rng, box_grad=op == "precise_roi_pool", data_format=layout, **kw)


@x64
def test_roi_pool_ties_go_to_the_first_pixel(rng):
    """Integer features: ties in every bin; the gradient reaches the first maximum in row-major order."""
    x = rng.integers(-2, 3, (2, 3, 9, 11)).astype(np.float64)
    y, _ = _check("roi_pool", x, mixed_boxes(rng, 2, 30, 9, 11), rng, output_size=(3, 4))
    assert (y == np.round(y)).all()


@x64
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_far_larger_boxes_than_the_map(aligned, rng):
    """Adaptive grids of thousands of points per bin: only the candidates near each row are evaluated."""
    b = np.array(
        [[0, -1500.3, 1.2, 2100.7, 4.9], [0, 0.7, -2300.1, 5.5, 1700.2], [0, -31.0, -29.0, 40.0, 37.0]]
    )
    x = rng.standard_normal((1, 2, 6, 7))
    _check("roi_align", x, b, rng, output_size=(2, 1), aligned=aligned)


@x64
def test_precise_box_gradient_at_kinks_and_degenerate_boxes(rng):
    """Edges on pixel coordinates (the tent's kinks), bins straddling 0 and the map's edge, zero-size
    and reversed boxes (no gradient), the batch index column (no gradient)."""
    x = rng.standard_normal((1, 2, 5, 6))
    b = np.array(
        [
            [0, 0.0, 0.0, 5.0, 4.0],
            [0, -1.0, -2.0, 2.0, 1.0],
            [0, 1.0, 1.0, 1.0, 3.0],
            [0, 3.0, 2.0, 2.0, 4.0],
            [0, 4.0, 3.0, 7.0, 6.0],
            [0, 2.5, 0.5, 3.5, 3.5],
        ]
    )
    _, (_, gb) = _check("precise_roi_pool", x, b, rng, box_grad=True, output_size=(3, 2))
    np.testing.assert_array_equal(gb[2:4], 0)
    assert not gb[:, 0].any() and gb[[0, 1, 4, 5], 1:].any()


@x64
def test_non_finite_inputs_follow_the_reference(rng):
    """NaN and +-inf read by a bin give NaN or the agreed infinity; zero-weight pixels are not read;
    precise pooling's box gradient is NaN where the support holds a non-finite value."""
    x = rng.standard_normal((2, 2, 6, 7))
    x[0, 0, 0, 0] = np.inf
    x[0, 1, 3, 3] = -np.inf
    x[1, 0, 2, 5] = np.nan
    x[1, 1, 4, 1], x[1, 1, 4, 2] = np.inf, -np.inf
    b = mixed_boxes(rng, 2, 16, 6, 7)
    b[0] = [0, 5.0, 4.5, 6.0, 5.5]  # near the -inf at (3, 3), which it gives weight 0: not read
    seen = np.zeros(2, bool)
    for op, kw in [
        ("roi_align", dict(output_size=2)),
        ("roi_align", dict(output_size=(2, 3), sampling_ratio=2, aligned=True)),
        ("precise_roi_pool", dict(output_size=(2, 2))),
        ("roi_pool", dict(output_size=(2, 2))),
    ]:
        y, _ = _check(op, x, b, rng, box_grad=op == "precise_roi_pool", **kw)
        assert np.isfinite(y[0]).all()
        seen |= [np.isnan(y).any(), np.isinf(y).any()]
    assert seen.all()  # NaN bins and infinite bins both occurred


def test_roi_pool_flt_max_rule_and_empty_bins():
    """A bin of only NaN or values <= -FLT_MAX gives -FLT_MAX (float64 too); an empty bin 0."""
    z = np.array([[[[np.nan, 1.0, -np.inf], [2.0, np.nan, -FLT_MAX]]]])
    bz = np.array([[0, 0.0, 0.0, 2.0, 1.0], [0, 5.0, 5.0, 7.0, 7.0]])
    y = _run(lambda t: KF.roi_pool(t, bz, (1, 3), data_format="channels_first"), z)
    np.testing.assert_array_equal(y[0, 0, 0], [2.0, 1.0, -FLT_MAX])
    np.testing.assert_array_equal(y[1], 0)
    np.testing.assert_array_equal(y, P.roi_pool(z, bz, (1, 3)))


# --------------------------------------------------------------------------- box formats


@pytest.mark.parametrize("op", ["roi_pool", "roi_align", "precise_roi_pool"])
def test_box_formats_agree_and_empty_boxes(op, rng):
    """(K, 5) arrays and tensors, lists of (L_i, 4) arrays or tensors (fewer than the images too), and
    Keras' batched (N, L, 4) tensor give the same rows; no boxes give no rows."""
    x = rng.standard_normal((3, 6, 6, 4)).astype(np.float32)
    b = mixed_boxes(rng, 3, 12, 6, 6)
    b = b[np.argsort(b[:, 0], kind="stable")]
    parts = per_image(b, 3)
    batched = np.stack([np.resize(p, (3, 4)) for p in parts]).astype(np.float32)  # 3 boxes per image
    flat = np.concatenate([np.repeat(np.arange(3.0), 3)[:, None], batched.reshape(9, 4)], axis=1)
    fn = getattr(KF, op)
    got = _run(
        lambda t, bt, p0, p1, p2, bb: ops.concatenate(
            [
                fn(t, b, 2),
                fn(t, bt, 2),
                fn(t, parts, 2),
                fn(t, [p0, p1, p2], 2),
                fn(t, [p0], 2),
                fn(t, bb, 2),
                fn(t, np.zeros((0, 5)), 2),  # no boxes: no rows
                fn(t, [], 2),
            ]
        ),
        x,
        b.astype(np.float32),
        *[p.astype(np.float32) for p in parts],
        batched,
    )
    ref = P.__dict__[op](x, b, 2, data_format="channels_last")
    k, k0 = len(b), len(parts[0])
    assert got.shape == (4 * k + k0 + 9, 2, 2, 4)
    for i in range(4):
        np.testing.assert_allclose(got[i * k : (i + 1) * k], ref, rtol=1e-5, atol=1e-5, err_msg=str(i))
    np.testing.assert_allclose(got[4 * k : 4 * k + k0], ref[:k0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        got[4 * k + k0 :], P.__dict__[op](x, flat, 2, data_format="channels_last"), rtol=1e-5, atol=1e-5
    )


def test_unusable_tensor_boxes_read_nothing():
    """Box values in a tensor are not checked eagerly: a batch index out of range or not an integer, a
    NaN coordinate or |coordinate| >= 2**31 outputs 0 (the reference raises on NumPy boxes)."""
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 4)).astype(np.float32)
    b = np.array(
        [[2.0, 0, 0, 3, 3], [0.5, 0, 0, 3, 3], [-1.0, 0, 0, 3, 3], [0, np.nan, 0, 3, 3], [0, 0, 0, 3e9, 3]],
        np.float32,
    )
    for op in ("roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align", "precise_roi_pool"):
        bad = b[:4] if op == "precise_roi_pool" else b  # precise pooling has no +-2**31 limit
        assert not _run(lambda t, bt, op=op: getattr(KF, op)(t, bt, 2), x, bad).any(), op
        with pytest.raises(PoolingInputError, match="batch index|finite"):
            getattr(KF, op)(x, bad[:1] if op != "precise_roi_pool" else bad[3:4], 2)  # NumPy boxes: checked


# --------------------------------------------------------------------------- position-sensitive


@pytest.mark.parametrize("op", ["ps_roi_pool", "ps_roi_align"])
def test_ps_channel_rule(op, rng):
    """Bin (ph, pw) of output channel c reads input channel (c oh + ph) ow + pw: with x[..., k] = k the
    output is that index; C / (oh ow) output channels."""
    oh, ow, groups = 2, 3, 2
    c = groups * oh * ow
    x = np.broadcast_to(np.arange(c, dtype=np.float32), (1, 8, 9, c)).copy()
    y = _run(lambda t: getattr(KF, op)(t, np.array([[0, 1.0, 1.0, 7.0, 6.0]]), (oh, ow)), x)
    assert y.shape == (1, oh, ow, groups)
    want = (np.arange(groups)[None, None, :] * oh + np.arange(oh)[:, None, None]) * ow + np.arange(ow)[
        None, :, None
    ]
    np.testing.assert_allclose(y[0], want, rtol=1e-6)
    layer = getattr(PK, "PSRoIPool" if op == "ps_roi_pool" else "PSRoIAlign")((oh, ow))
    assert layer.compute_output_shape((None, 8, 9, c), (None, 5)) == (None, oh, ow, groups)


# --------------------------------------------------------------------------- multi-scale


def pyramid_and_boxes(rng, levels, n=2, c=2):
    feats = [rng.standard_normal((n, c, -(-32 // 2**i), -(-31 // 2**i))) for i in range(levels)]
    boxes = []
    for _ in range(n):
        xy = rng.uniform(-0.1, 1.0, (12, 2)) * [124, 128]
        wh = rng.uniform(0, 1, (12, 2)) * rng.choice([0.05, 0.3, 1.0], (12, 1)) * [124, 128]
        bb = np.concatenate([xy, xy + wh], axis=1)
        bb[0, 2] = bb[0, 0] - 9  # negative area: no level
        bb[1, 3] = bb[1, 1]  # zero area: the lowest level
        bb[2, 2:] = bb[2, :2] - 30  # reversed both: positive area
        boxes.append(bb)
    return feats, boxes, [(100, 95), (128, 124)][:n]


@x64
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_multiscale_equals_numpy(sampling_ratio, rng):
    feats, boxes, sizes = pyramid_and_boxes(rng, 3)
    kw = dict(output_size=(2, 2), sampling_ratio=sampling_ratio, canonical_scale=50, canonical_level=3)
    y, pullback = P.vjp("multiscale_roi_align", feats, boxes, sizes, **kw)
    g = rng.standard_normal(y.shape)
    ref = pullback(g)["features"]
    assert sum(np.abs(e).sum() > 0 for e in ref) >= 2  # boxes on several levels
    got, grads = value_and_grads(
        lambda *fs: KF.multiscale_roi_align2d(list(fs), boxes, sizes, data_format="channels_first", **kw),
        feats,
        g,
    )
    np.testing.assert_allclose(got, y, **CLOSE)
    for a, e in zip(grads, ref):
        np.testing.assert_allclose(a, e, **CLOSE)


def test_multiscale_channels_last_dict_boxes_array_and_one_image_size(rng):
    """A dict of channels-last maps, the boxes as one (K, 5) array, and one (height, width) for every
    image (Keras' batch size may be unknown)."""
    feats, boxes, _ = pyramid_and_boxes(rng, 3)
    kw = dict(output_size=(2, 3), canonical_scale=50, canonical_level=3, data_format="channels_last")
    cl = [_cl(f).astype(np.float32) for f in feats]
    ref = P.multiscale_roi_align(cl, boxes, [(128, 124)] * 2, **kw)
    flat = np.concatenate(
        [np.concatenate([np.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
    )
    got = _run(
        lambda *fs: ops.concatenate(
            [
                KF.multiscale_roi_align(dict(zip("abc", fs)), boxes, (128, 124), **kw),
                KF.multiscale_roi_align(list(fs), flat, [(128, 124)] * 2, **kw),
            ]
        ),
        *cl,
    )
    np.testing.assert_allclose(got, np.concatenate([ref, ref]), rtol=1e-5, atol=1e-5)


def test_multiscale_level_assignment(rng):
    """torchvision's LevelMapper: floor(k0 + log2(sqrt(area) / s0) + 1e-6), clamped to the pyramid's
    levels (from the scales 1/4, 1/8, 1/16: levels 2-4). Each map is constant (its level), so the output
    is the level every box was pooled from."""
    s0, k0 = 32.0, 3
    feats = [np.full((1, 2, 64 // 2**i, 64 // 2**i), float(2 + i)) for i in range(3)]  # image 256 x 256
    sides = [1.0, 15.9, 16.0, 31.9, 32.0, 63.9, 64.0, 127.9, 128.0, 400.0]
    want = [2, 2, 2, 2, 3, 3, 4, 4, 4, 4]
    boxes = [np.array([[10.0, 10.0, 10.0 + s, 10.0 + s] for s in sides])]
    kw = dict(output_size=1, sampling_ratio=1, canonical_scale=s0, canonical_level=k0)
    y = _run(
        lambda *fs: KF.multiscale_roi_align(
            list(fs), boxes, [(256, 256)], data_format="channels_first", **kw
        ),
        *feats,
    )
    ref = P.multiscale_roi_align(feats, boxes, [(256, 256)], **kw)
    np.testing.assert_array_equal(y[:, 0, 0, 0], ref[:, 0, 0, 0])
    # The boxes stay inside the 256-pixel image, so every level reads its own constant map (no zeros).
    np.testing.assert_array_equal(ref[:, 0, 0, 0], want)


# --------------------------------------------------------------------------- TensorFlow


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.image.crop_and_resize")
def test_roi_align_equals_tf_crop_and_resize(rng):
    """crop_and_resize samples crop_size points from y1 to y2 (normalised by H - 1), bilinearly: roi_align
    with one point per bin (sampling_ratio=1, aligned=True) samples the bin centres
    y1 - 0.5 + (p + 0.5) bin. They agree where every sample is inside the map (no edge rules)."""
    import tensorflow as tf

    h, w, c, oh, ow = 9, 11, 3, 3, 4
    x = rng.standard_normal((2, h, w, c)).astype(np.float32)
    k = 10
    # the first and last sample rows/columns, inside [0, H - 1] x [0, W - 1]
    y0 = rng.uniform(0, h - 1, (k, 2))
    x0 = rng.uniform(0, w - 1, (k, 2))
    ya, yb = y0.min(1), y0.max(1)
    xa, xb = x0.min(1), x0.max(1)
    ind = rng.integers(0, 2, k)
    crops = tf.image.crop_and_resize(
        x,
        np.stack([ya / (h - 1), xa / (w - 1), yb / (h - 1), xb / (w - 1)], 1).astype(np.float32),
        ind.astype(np.int32),
        (oh, ow),
    ).numpy()
    # bin centres: y1 - 0.5 + (p + 0.5) bin = ya + p (yb - ya) / (oh - 1)
    bin_h, bin_w = (yb - ya) / (oh - 1), (xb - xa) / (ow - 1)
    y1, x1 = ya + 0.5 - 0.5 * bin_h, xa + 0.5 - 0.5 * bin_w
    boxes = np.stack([ind, x1, y1, x1 + ow * bin_w, y1 + oh * bin_h], 1)
    y = to_numpy(KF.roi_align(tensor(x.astype(np.float64)), boxes, (oh, ow), sampling_ratio=1, aligned=True))
    np.testing.assert_allclose(y, crops, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- errors

X = np.zeros((2, 5, 5, 6))  # channels_last (Keras' default): N = 2, C = 6
B = np.array([[0, 0.0, 0.0, 2.0, 2.0]])


@pytest.mark.parametrize(
    "call,err,words",
    [
        (lambda: KF.roi_align(X, np.zeros((3, 4)), 2), PoolingInputError, r"\(K, 5\) array"),
        (
            lambda: KF.roi_align(X, ops.zeros((3, 4)), 2),
            PoolingInputError,
            r"\(K, 5\) array .* got shape \(3, 4\)",
        ),
        (
            lambda: KF.roi_align(X, [np.zeros((2, 5))], 2),
            PoolingInputError,
            r"boxes\[0\] must have shape \(L, 4\)",
        ),
        (
            lambda: KF.roi_align(X, [ops.zeros((2, 5))], 2),
            PoolingInputError,
            r"boxes\[0\] must have shape \(L, 4\) holding \(x1, y1, x2, y2\), got shape \(2, 5\)",
        ),
        (
            lambda: KF.roi_pool(X, [np.zeros((1, 4))] * 3, 2),
            PoolingInputError,
            "boxes is a list of 3 per-image arrays but the input holds 2 images",
        ),
        (
            lambda: KF.roi_pool(X, np.array([[2, 0.0, 0.0, 2.0, 2.0]]), 2),
            PoolingInputError,
            r"batch index \(column 0 of boxes\) must be an integer in \[0, 2\), got values in \[2, 2\]",
        ),
        (
            lambda: KF.roi_align(X, np.array([[0, np.nan, 0.0, 2.0, 2.0]]), 2),
            PoolingInputError,
            "boxes must be finite",
        ),
        (lambda: KF.roi_align(X, B, 0), PoolingConfigError, "output_size must be >= 1"),
        (
            lambda: KF.roi_align(X, B, 2, sampling_ratio=1.5),
            PoolingConfigError,
            "sampling_ratio must be an integer",
        ),
        (lambda: KF.roi_align(X, B, 2, spatial_scale=0.0), PoolingConfigError, "spatial_scale must be > 0"),
        (lambda: KF.roi_align(X, B, 2, aligned=1), PoolingConfigError, "aligned must be True or False"),
        (lambda: KF.roi_align(X[0], B, 2), PoolingInputError, r"4-D"),
        (lambda: KF.roi_align(X, B, 2, data_format="NHWC"), PoolingConfigError, "data_format"),
        (lambda: KF.roi_pool(X.astype(np.int32), B, 2), PoolingInputError, "floating-point"),
        (lambda: KF.roi_pool(np.zeros((1, 0, 3, 1)), B, 2), PoolingInputError, "H, W >= 1"),
        (
            lambda: KF.ps_roi_pool(X, B, 2),
            PoolingInputError,
            r"C=6 must be a multiple of oh\*ow = 4 \(output_size=\(2, 2\)\).*Use C = 8 channels",
        ),
        (lambda: KF.ps_roi_align(X, B, (1, 4)), PoolingInputError, r"C=6 must be a multiple of oh\*ow = 4"),
        (lambda: KF.multiscale_roi_align([], [B[:, 1:]], [(8, 8)], 2), PoolingInputError, "non-empty list"),
        (
            lambda: KF.multiscale_roi_align([X, X[..., :2]], [B[:, 1:]] * 2, [(8, 8)] * 2, 2),
            PoolingInputError,
            r"features\[1\] has \(2, 2\)",
        ),
        (
            lambda: KF.multiscale_roi_align([X], [B[:, 1:]], [(8, 8)] * 3, 2),
            PoolingInputError,
            r"image_sizes must hold one \(height, width\) per image, 2 for these feature maps",
        ),
        (
            lambda: KF.multiscale_roi_align([X], [B[:, 1:]], [(8, 8), (8, 0)], 2),
            PoolingInputError,
            r"image_sizes\[1\] must be a \(height, width\) pair of positive ints",
        ),
        (
            lambda: KF.multiscale_roi_align([X], [B[:, 1:]], [(8, 8)], 2, canonical_scale=0),
            PoolingConfigError,
            "canonical_scale must be > 0",
        ),
        (
            lambda: KF.precise_roi_pool(X, B, (2, 2, 2)),
            PoolingConfigError,
            "output_size must be an int or a sequence",
        ),
        # layers
        (lambda: PK.RoIAlign(0), PoolingConfigError, "output_size must be >= 1"),
        (lambda: PK.RoIPool(2, -1.0), PoolingConfigError, "spatial_scale must be > 0"),
        (lambda: PK.PSRoIAlign(2, 1.0, 0.5), PoolingConfigError, "sampling_ratio must be an integer"),
        (lambda: PK.RoIAlign(2, aligned="yes"), PoolingConfigError, "aligned must be True or False"),
        (lambda: PK.PreciseRoIPool(2, data_format="NHWC"), PoolingConfigError, "data_format"),
        (lambda: PK.PSRoIPool(2)(X, B), PoolingInputError, r"C=6 must be a multiple of oh\*ow = 4"),
        (
            lambda: PK.MultiScaleRoIAlign("p2", 2),
            PoolingConfigError,
            "featmap_names must be a non-empty list",
        ),
        (
            lambda: PK.MultiScaleRoIAlign(None, 2, canonical_scale=0),
            PoolingConfigError,
            "canonical_scale must be > 0",
        ),
        (lambda: PK.MultiScaleRoIAlign(None, 2, image_size=(8,)), PoolingConfigError, "image_size must be a"),
        (
            lambda: PK.MultiScaleRoIAlign(["p9"], 2, image_size=(8, 8))({"p2": X}, [B[:, 1:]] * 2),
            PoolingInputError,
            "none of featmap_names",
        ),
        (
            lambda: PK.MultiScaleRoIAlign(None, 2)([X], [B[:, 1:]] * 2),
            PoolingInputError,
            "the level scales need the image size",
        ),
    ],
)
def test_errors_name_the_argument(call, err, words):
    with pytest.raises(err, match=words):
        call()


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    "layer,features,boxes,want",
    [
        (PK.RoIPool((2, 3)), (None, 8, 7, 6), (None, 5), (None, 2, 3, 6)),
        (PK.RoIAlign(2, data_format="channels_first"), (None, 6, 8, 7), (None, 5), (None, 6, 2, 2)),
        (PK.PSRoIAlign((1, 3)), (None, 8, 7, 6), (None, 5), (None, 1, 3, 2)),
        (PK.PreciseRoIPool(2), (None, 8, 7, 6), (2, 4, 4), (8, 2, 2, 6)),
        (PK.RoIAlign(2), (None, 8, 7, 6), [(3, 4), (2, 4)], (5, 2, 2, 6)),
    ],
    ids=["roi-pool", "roi-align-cf", "ps-roi-align", "precise-batched", "roi-align-list"],
)
def test_output_shape(layer, features, boxes, want):
    assert layer.compute_output_shape(features, boxes) == want
    box_input = (
        [keras.Input(batch_shape=s) for s in boxes]
        if isinstance(boxes, list)
        else keras.Input(batch_shape=boxes)
    )
    assert tuple(layer(keras.Input(batch_shape=features), box_input).shape) == want


def test_multiscale_layer_image_shapes_and_feature_names(rng):
    """featmap_names picks the dict's maps; torchvision's image_shapes at the call, or image_size."""
    feats, boxes, sizes = pyramid_and_boxes(rng, 2)
    cl = [_cl(f).astype(np.float32) for f in feats]
    kw = dict(canonical_scale=50, canonical_level=3)
    named = PK.MultiScaleRoIAlign(["p2", "p3"], 2, **kw)
    one = PK.MultiScaleRoIAlign(None, 2, image_size=(128, 124), **kw)
    got = _run(
        lambda f2, f3: ops.concatenate(
            [named({"p2": f2, "unused": f2, "p3": f3}, boxes, image_shapes=sizes), one([f2, f3], boxes)]
        ),
        *cl,
    )
    ref = [
        P.multiscale_roi_align(cl, boxes, s, 2, data_format="channels_last", **kw)
        for s in (sizes, [(128, 124)] * 2)
    ]
    np.testing.assert_allclose(got, np.concatenate(ref), rtol=1e-5, atol=1e-5)
    assert one.compute_output_shape([(None, 32, 31, 2), (None, 16, 16, 2)], (None, 5)) == (None, 2, 2, 2)
