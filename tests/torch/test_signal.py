"""Blur, max-blur, spectral, wavelet and median pooling in torch: NumPy parity, edges, modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import poolkit.torch as PT
import poolkit.torch.functional as TF
import poolkit.torch.functional.signal as signal
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.ops import vjp
from poolkit.torch._core import generic_paths

from cases import RESEARCH_CASES, Case
from helpers import distinct
from torch_helpers import DEVICES

LAYOUTS = ["channels_first", "channels_last"]
CASES = [c.values[0] for c in RESEARCH_CASES]
IDS = [c.id for c in RESEARCH_CASES]


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _check_against_numpy(op, x, kw, rng, device="cpu", exact=False):
    """Forward and gradient against ``poolkit.ops.vjp`` in float64."""
    y, pullback = vjp(op, x, **kw)
    g = rng.standard_normal(y.shape)
    xt = torch.tensor(x, device=device, requires_grad=True)
    yt = getattr(TF, op)(xt, **kw)
    yt.backward(torch.tensor(g, device=device))
    if exact:
        np.testing.assert_array_equal(yt.detach().cpu().numpy(), y)
    else:
        np.testing.assert_allclose(yt.detach().cpu().numpy(), y, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(xt.grad.cpu().numpy(), pullback(g)["x"], rtol=1e-10, atol=1e-12)


def _blur_settings(case: Case) -> dict:
    stride = case.stride if case.stride is not None else case.kernel_size
    return dict(filt_size=case.kernel_size, stride=stride, padding=case.padding or "antialiased")


# --------------------------------------------------------------------------- parity with NumPy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize(
    "op", ["blur-reflect", "blur-constant", "max_blur", "median", "median-ties", "wavelet", "spectral"]
)
def test_research_cases_match_numpy(op, case: Case, layout, device, rng):
    kw: dict = dict(data_format=layout)
    x = case.input(rng)
    if op.startswith("blur"):
        name = "blur_pool"
        kw |= _blur_settings(case) | dict(pad_mode=op.split("-")[1])
    elif op == "max_blur":
        name, x = "max_blur_pool", distinct(case.shape, rng)  # no ties inside a max window
        kw |= dict(kernel_size=case.kernel_size, filt_size=3, stride=2)
    elif op.startswith("median"):
        name = "median_pool"
        kw |= case.window()
        if op == "median-ties":
            x = rng.integers(-2, 3, size=case.shape).astype(np.float64)
    elif op == "wavelet":
        name = "wavelet_pool"
    else:
        name = "spectral_pool"
        kw |= dict(output_size=tuple(max(1, (n + 1) // 2) for n in case.shape[2:]))
    _check_against_numpy(name, _layout(x, layout), kw, rng, device, exact=op.startswith("median"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("op", ["blur-reflect", "blur-constant", "max_blur"])
def test_blur_generic_paths_match_numpy(op, case: Case, layout, rng):
    """The depthwise convolution and PyTorch's max pooling, as on accelerators (the CPU's separable
    passes are checked above)."""
    with generic_paths():
        test_research_cases_match_numpy(op, case, layout, "cpu", rng)


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
@pytest.mark.parametrize(
    "shape,kernel", [((2, 3, 9), 3), ((2, 3, 7, 6), 2), ((1, 2, 7, 6), (3, 2)), ((1, 2, 5, 4, 6), 2)], ids=str
)
def test_max_blur_ties_and_non_finite_inputs_match_numpy(shape, kernel, path, rng):
    """Ties go to PyTorch's first maximum (the CPU's separable passes find it again by equality);
    NaN and inf take PyTorch's kernel's rules (the CPU path falls back to it)."""
    x = rng.integers(-2, 3, shape).astype(np.float64)
    kw = dict(kernel_size=kernel, filt_size=3, stride=2)
    with generic_paths(path == "generic"):
        _check_against_numpy("max_blur_pool", x, kw, rng)
        flat = x.reshape(-1)
        flat[[3, 17, 30]] = [np.inf, np.nan, -np.inf]
        y, pullback = vjp("max_blur_pool", x, **kw)
        g = rng.standard_normal(y.shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = TF.max_blur_pool(xt, **kw)
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(xt.grad.numpy(), pullback(g)["x"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "shape,kernel", [((3, 2, 9), 3), ((3, 2, 7, 6), 2), ((3, 2, 7, 6), (3, 2)), ((3, 1, 5, 4, 6), 2)], ids=str
)
def test_max_blur_cpu_backward_in_batch_chunks_matches_numpy(shape, kernel, rng, monkeypatch):
    """The CPU's stride-1 maximum runs its backward one sample at a time here (three chunks, the
    stages computed again from each chunk of the input), ties included."""
    import poolkit.torch._taps as T

    monkeypatch.setattr(T, "CHUNK", 1)
    assert len(T.batch_chunks(shape)) == 3
    x = rng.integers(-2, 3, shape).astype(np.float64)
    _check_against_numpy("max_blur_pool", x, dict(kernel_size=kernel, filt_size=3, stride=2), rng)


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_blur_on_maps_smaller_than_the_padding(size, mode, path, rng):
    # antialiased-cnns#47: torch's own reflection raises here; the reference repeats the reflection.
    x = rng.standard_normal((1, 2, size, size + 1))
    with generic_paths(path == "generic"):
        for filt in (4, 7):
            _check_against_numpy("blur_pool2d", x, dict(filt_size=filt, stride=2, pad_mode=mode), rng)


@pytest.mark.parametrize(
    "shape,kw",
    [
        ((2, 3, 11), dict(filt_size=4, stride=2, pad_mode="reflect")),
        ((1, 2, 6, 5, 4), dict(filt_size=(2, 3, 4), stride=(1, 2, 2), pad_mode="replicate")),
        ((2, 2, 7, 6), dict(filt_size=(5, 2), stride=(2, 1), pad_mode="reflect", padding="same")),
        ((1, 2, 9, 9), dict(filt_size=4, pad_mode="constant", padding=1)),
        ((2, 3, 9, 8), dict(filt_size=1, stride=(3, 1))),
    ],
    ids=["1d-even", "3d-aniso", "2d-same", "kornia-padding", "subsample"],
)
@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
def test_blur_settings_match_numpy(shape, kw, path, rng):
    with generic_paths(path == "generic"):
        _check_against_numpy("blur_pool", rng.standard_normal(shape), kw, rng)


def test_kornia_documented_examples_exactly():
    x = torch.eye(5, dtype=torch.float64)[None, None]
    expected = [[0.3125, 0.0625, 0.0], [0.0625, 0.375, 0.0625], [0.0, 0.0625, 0.3125]]
    assert TF.blur_pool2d(x, 3, pad_mode="constant")[0, 0].tolist() == expected
    assert TF.max_blur_pool2d(x, 2, 3, pad_mode="constant")[0, 0].tolist() == [
        [0.5625, 0.3125],
        [0.3125, 0.875],
    ]


@pytest.mark.parametrize(
    "shape,sizes",
    [
        ((2, 3, 8, 8), (4, 4)),
        ((1, 2, 7, 9), (3, 4)),
        ((1, 2, 6, 5), (5, 2)),
        ((2, 3, 10), 5),
        ((1, 2, 4, 6, 5), (2, None, 3)),
        ((1, 1, 6, 6), 1),
    ],
    ids=["even", "odd-in", "odd-out", "1d", "3d-none", "dc-only"],
)
def test_spectral_sizes_match_numpy(shape, sizes, rng):
    _check_against_numpy("spectral_pool", rng.standard_normal(shape), dict(output_size=sizes), rng)


@pytest.mark.parametrize("route", ["fft", "matrices"])
def test_spectral_routes_match_numpy(route, monkeypatch, rng):
    """Feature-map sizes take matrix products, long axes (and compiled graphs) the FFT pair: both
    equal the NumPy reference forward and backward, on a 3-D case with an untouched middle axis."""
    monkeypatch.setattr(signal, "_MATRIX_MAX", 0 if route == "fft" else 512)
    calls = []
    original = signal._resize_by_matrices
    monkeypatch.setattr(signal, "_resize_by_matrices", lambda *a: calls.append(1) or original(*a))
    x = rng.standard_normal((2, 3, 9, 4, 8))
    _check_against_numpy("spectral_pool", x, dict(output_size=(4, None, 5)), rng)
    assert bool(calls) == (route == "matrices")


def test_spectral_full_size_is_exactly_the_identity_and_errors(rng):
    x = torch.tensor(rng.standard_normal((1, 2, 5, 6)))
    assert torch.equal(TF.spectral_pool2d(x, (5, 6)), x)
    assert torch.equal(TF.spectral_pool2d(x, (None, 6)), x)
    with pytest.raises(PoolingInputError, match=r"output_size \(6, 6\) is larger than the input \(5, 6\)"):
        TF.spectral_pool2d(x, 6)
    with pytest.raises(PoolingConfigError, match="output_size must be >= 1"):
        TF.spectral_pool2d(x, 0)


# --------------------------------------------------------------------------- NaN, inf, ties, chunks


@pytest.mark.parametrize("path", ["cpu-network", "generic-sort"])
def test_median_nan_inf_and_ties_follow_the_numpy_rules_exactly(path, rng):
    with generic_paths(path == "generic-sort"):
        _median_nan_inf_ties(rng)


def _median_nan_inf_ties(rng):
    x = np.array(
        [
            [
                [
                    [np.nan, 1.0, 2.0, 2.0],
                    [np.inf, -np.inf, 3.0, 2.0],
                    [0.0, 5.0, 5.0, np.inf],
                    [1.0, 1.0, 1.0, 1.0],
                ]
            ]
        ]
    )
    for kw in (
        dict(kernel_size=2, stride=1, padding=1),
        dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    ):
        y, pullback = vjp("median_pool2d", x, **kw)
        g = rng.standard_normal(y.shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = TF.median_pool2d(xt, **kw)
        yt.backward(torch.tensor(g))
        np.testing.assert_array_equal(yt.detach().numpy(), y)
        np.testing.assert_allclose(xt.grad.numpy(), pullback(g)["x"], rtol=1e-15)
    # A median of +inf: the padding (+inf in the sort) must not take the gradient from the first real +inf.
    x1 = torch.tensor([[[np.inf, np.inf, 0.0, 1.0]]], requires_grad=True)
    y1 = TF.median_pool1d(x1, 3, 1, 1)
    y1.backward(torch.tensor([[[1.0, 10.0, 100.0, 1000.0]]]))
    assert y1.detach().tolist() == [[[np.inf, np.inf, 1.0, 0.0]]]
    assert x1.grad.tolist() == [[[11.0, 0.0, 1000.0, 100.0]]]


@pytest.mark.parametrize(
    "path,stack_bytes",
    [("cpu-network", 1), ("cpu-network", 3 * 6 * 5 * 9 * 8), ("generic-sort", 1)],
    ids=["network-rows", "network-planes", "sort-rows"],
)
def test_median_chunks_give_the_same_result(path, stack_bytes, rng, monkeypatch):
    """One output row per chunk, or one plane of the batch per chunk (the CPU network's choice when
    a plane fits), equal the unchunked result and the NumPy reference, ties included."""
    x = torch.tensor(rng.integers(-3, 4, size=(3, 3, 11, 9)).astype(np.float64), requires_grad=True)
    g = torch.tensor(rng.standard_normal((3, 3, 6, 5)))
    y_ref, pullback = vjp("median_pool2d", x.detach().numpy(), kernel_size=3, stride=2, padding=1)
    with generic_paths(path == "generic-sort"):
        y = TF.median_pool2d(x, 3, 2, 1)
        (gx,) = torch.autograd.grad(y, x, g)
        monkeypatch.setattr(signal, "_STACK_BYTES", stack_bytes)
        y1 = TF.median_pool2d(x, 3, 2, 1)
        (gx1,) = torch.autograd.grad(y1, x, g)
    assert torch.equal(y, y1) and torch.equal(gx, gx1)
    np.testing.assert_array_equal(y.detach().numpy(), y_ref)
    np.testing.assert_array_equal(gx.numpy(), pullback(g.numpy())["x"])


def test_median_saves_one_byte_per_output():
    x = torch.randn(2, 4, 20, 20, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = TF.median_pool2d(x, 3, 1, 1)
    assert [(t.dtype, tuple(t.shape)) for t in saved] == [(torch.uint8, tuple(y.shape))]


def test_wavelet_non_finite_values_stay_in_their_block():
    x = torch.ones(1, 1, 4, 5, dtype=torch.float64)
    x[0, 0, 0, 0], x[0, 0, 3, 4] = float("nan"), float("inf")
    x[0, 0, 2, 0], x[0, 0, 3, 1] = float("inf"), -float("inf")
    y = TF.wavelet_pool2d(x)
    # NaN and inf where NumPy has them (assert_allclose compares those exactly)
    np.testing.assert_allclose(y.numpy(), vjp("wavelet_pool2d", x.numpy())[0], rtol=1e-15)
    assert torch.isnan(y[0, 0, 0, 0]) and torch.isnan(y[0, 0, 1, 0]) and y[0, 0, 1, 2] == float("inf")
    assert torch.isfinite(y[0, 0, 0, 1:]).all() and torch.isfinite(y[0, 0, 1, 1])
    with pytest.raises(PoolingConfigError, match="wavelet must be one of 'haar', got 'db2'"):
        TF.wavelet_pool2d(x, wavelet="db2")


# --------------------------------------------------------------------------- second derivatives, dtypes, determinism

GRADGRAD = [
    ("blur_pool2d", dict(filt_size=4, stride=2)),
    ("blur_pool1d", dict(filt_size=3, stride=2, pad_mode="replicate")),
    ("max_blur_pool2d", dict(kernel_size=2, filt_size=3, stride=2)),
    ("spectral_pool2d", dict(output_size=(2, 3))),
    ("wavelet_pool3d", {}),
    ("median_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
]


@pytest.mark.parametrize("op,kw", GRADGRAD, ids=[o for o, _ in GRADGRAD])
def test_gradcheck_and_gradgradcheck(op, kw):
    nd = int(op[-2])
    x = torch.tensor(distinct((1, 2, *[5, 6, 3][:nd]), np.random.default_rng(2)), requires_grad=True)
    fn = getattr(TF, op)
    assert torch.autograd.gradcheck(lambda t: fn(t, **kw), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fn(t, **kw), (x,), fast_mode=True)


ALL = [
    ("blur_pool2d", dict(filt_size=3, stride=2)),
    ("max_blur_pool2d", dict(kernel_size=2, filt_size=3, stride=2)),
    ("spectral_pool2d", dict(output_size=(5, 4))),
    ("wavelet_pool2d", {}),
    ("median_pool2d", dict(kernel_size=3, stride=2, padding=1)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op,kw", ALL, ids=[o for o, _ in ALL])
def test_low_precision_within_tolerance_of_float32(op, kw, dtype):
    x = torch.randn(2, 3, 12, 11, generator=torch.Generator().manual_seed(0))
    fn = getattr(TF, op)
    xl = x.to(dtype).requires_grad_(True)
    y = fn(xl, **kw)
    assert y.dtype == dtype
    if op == "median_pool2d":  # a sample of the input: exact
        assert torch.equal(y, fn(x.to(dtype).float(), **kw).to(dtype))
    else:  # float32 arithmetic: only the inputs' and the result's rounding
        tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
        torch.testing.assert_close(y.float(), fn(x, **kw), rtol=tol, atol=tol)
    y.sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()


@pytest.mark.parametrize("op,kw", ALL, ids=[o for o, _ in ALL])
def test_empty_batch(op, kw):
    x = torch.zeros(0, 3, 12, 11, requires_grad=True)
    y = getattr(TF, op)(x, **kw)
    assert y.shape == (0, 3, *vjp(op, np.zeros((1, 3, 12, 11)), **kw)[0].shape[2:])
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_deterministic_algorithms_mode():
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(2, 3, 9, 9, requires_grad=True)

        def grads():
            total = sum(getattr(TF, op)(x, **kw).sum() for op, kw in ALL)
            return torch.autograd.grad(total, x)[0]

        assert torch.equal(grads(), grads())
    finally:
        torch.use_deterministic_algorithms(False)


# --------------------------------------------------------------------------- modules

MODULES = [
    (PT.BlurPool2d(filt_size=3, stride=2), TF.blur_pool2d, dict(filt_size=3, stride=2)),
    (
        PT.BlurPool1d(4, 2, "constant", padding=1),
        TF.blur_pool1d,
        dict(filt_size=4, stride=2, pad_mode="constant", padding=1),
    ),
    (
        PT.MaxBlurPool2d(kernel_size=3, stride=2),
        TF.max_blur_pool2d,
        dict(kernel_size=3, filt_size=3, stride=2),
    ),
    (PT.MaxBlurPool3d(2), TF.max_blur_pool3d, dict(kernel_size=2)),
    (PT.SpectralPool2d((3, 4)), TF.spectral_pool2d, dict(output_size=(3, 4))),
    (PT.SpectralPool1d(3), TF.spectral_pool1d, dict(output_size=3)),
    (PT.WaveletPool2d(), TF.wavelet_pool2d, {}),
    (PT.WaveletPool3d(), TF.wavelet_pool3d, {}),
    (PT.MedianPool2d(3, stride=1, padding=1), TF.median_pool2d, dict(kernel_size=3, stride=1, padding=1)),
    (PT.MedianPool1d(3, 2), TF.median_pool1d, dict(kernel_size=3, stride=2)),
]


@pytest.mark.parametrize(
    "module,fn,kw", MODULES, ids=[type(m).__name__ + str(i) for i, (m, _, _) in enumerate(MODULES)]
)
def test_modules_call_their_functional_and_have_no_state(module, fn, kw):
    nd = int(type(module).__name__[-2])
    x = torch.randn(2, 3, *[9, 8, 7][:nd], dtype=torch.float64)
    torch.testing.assert_close(module(x), fn(x, **kw), rtol=0, atol=0)
    assert list(module.parameters()) == [] and module.state_dict() == {}
    cl = type(module)(
        **{k: getattr(module, k) for k in module.settings if k != "data_format"}, data_format="channels_last"
    )
    torch.testing.assert_close(cl(x.movedim(1, -1)), module(x).movedim(1, -1))


def test_max_blur_pool_maps_the_issue_arguments():
    m = PT.MaxBlurPool2d(kernel_size=3, stride=2)
    assert (m.kernel_size, m.filt_size, m.stride) == (3, 3, 2)
    x = torch.randn(1, 2, 9, 9)
    torch.testing.assert_close(m(x), TF.blur_pool2d(F.max_pool2d(x, 3, stride=1), 3, 2))


def test_module_construction_errors():
    with pytest.raises(PoolingConfigError, match="filt_size must be between 1 and 7"):
        PT.BlurPool2d(filt_size=8)
    with pytest.raises(
        PoolingConfigError, match="pad_mode must be one of 'reflect', 'constant', 'replicate'"
    ):
        PT.BlurPool2d(pad_mode="circular")
    with pytest.raises(PoolingConfigError, match="padding must be 'antialiased'"):
        PT.BlurPool1d(padding="full")
    with pytest.raises(PoolingConfigError, match="MaxBlurPool2d: kernel_size must be >= 1"):
        PT.MaxBlurPool2d(kernel_size=0)
    with pytest.raises(PoolingConfigError, match="stride must be >= 1"):
        PT.MaxBlurPool2d(stride=0)
    with pytest.raises(PoolingConfigError, match="SpectralPool2d: output_size must be >= 1"):
        PT.SpectralPool2d((0, 3))
    with pytest.raises(PoolingConfigError, match="wavelet must be one of 'haar'"):
        PT.WaveletPool2d(wavelet="db4")
    with pytest.raises(PoolingConfigError, match="padding=2 on axis 0 is more than half of kernel_size=3"):
        PT.MedianPool2d(3, padding=2)
    with pytest.raises(PoolingConfigError, match="data_format must be one of"):
        PT.MedianPool2d(3, data_format="NHWC")
