"""Stochastic, mixed and S3 pooling in torch: NumPy parity with identical draws, sampling, modules.

Named test_torch_stochastic, not test_stochastic: pytest imports test files by basename, and
tests/ops/test_stochastic.py has that one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import poolkit.ops as P
import poolkit.torch as PT
import poolkit.torch.functional as TF
from poolkit.errors import PoolingConfigError, PoolingInputError
from poolkit.geometry import window_spec
from poolkit.ops.s3 import _rows as numpy_rows
from poolkit.torch._core import generic_paths

from cases import RESEARCH_CASES, Case
from helpers import chisquare_p, distinct
from torch_helpers import DEVICES


def _layout(a, layout):
    return np.moveaxis(a, 1, -1).copy() if layout == "channels_last" else a


def _cf(a, layout):
    return np.moveaxis(a, -1, 1) if layout == "channels_last" else a


def _tensor(a, device="cpu", grad=False):
    return torch.tensor(a, dtype=torch.float64, device=device, requires_grad=grad)


def _out_shape(case: Case) -> tuple[int, ...]:
    spec = window_spec(case.shape[2:], **case.window())
    return (*case.shape[:2], *spec.output_size)


def _check_parity(op, x, settings, tsettings, rng, device, wrt=(), rtol=1e-12):
    """Forward and every gradient (``x`` and the keyword arguments in ``wrt``) against ``P.vjp``."""
    y, pullback = P.vjp(op, x, **settings)
    g = rng.standard_normal(y.shape)
    ref = pullback(g)
    xt = _tensor(x, device, True)
    targs = {k: (_tensor(v, device, True) if k in wrt else v) for k, v in tsettings.items()}
    yt = getattr(TF, op)(xt, **targs)
    np.testing.assert_allclose(yt.detach().cpu().numpy(), y, rtol=rtol, atol=1e-14)
    yt.backward(torch.tensor(g, device=device))
    np.testing.assert_allclose(xt.grad.cpu().numpy(), ref["x"], rtol=1e-10, atol=1e-12, err_msg="x")
    for name in wrt:
        np.testing.assert_allclose(
            targs[name].grad.cpu().numpy(), ref[name], rtol=1e-10, atol=1e-12, err_msg=name
        )


# ------------------------------------------------------------------- stochastic pooling


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_stochastic_matches_numpy_with_the_same_samples(case: Case, layout, training, device, rng):
    x = _layout(case.input(rng), layout)
    u = rng.random(_out_shape(case))  # channels-first whatever the layout, as the reference draws
    kw = dict(case.window(), training=training, data_format=layout)
    _check_parity(
        f"stochastic_pool{case.nd}d",
        x,
        dict(kw, samples=u),
        dict(kw, samples=torch.tensor(u, device=device)),
        rng,
        device,
    )


@pytest.mark.parametrize("chunk", [1, 2 * 3 * 4 * 4], ids=["one-sample", "two-samples"])
@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "inf-in-last-chunk"])
def test_stochastic_cpu_batch_chunks_match_numpy(chunk, nonfinite, rng, monkeypatch):
    """The CPU sampler runs a batch chunk at a time: chunks of one sample and of two with a shorter
    last one (5 samples), against NumPy; a +inf in the last chunk sends the whole call to the
    generic path, which follows the reference's rules for it."""
    import poolkit.torch._taps as T

    monkeypatch.setattr(T, "CHUNK", chunk)
    x = rng.standard_normal((5, 3, 7, 6))
    if nonfinite:
        x[4, 1, 2, 3] = np.inf
    u = rng.random((5, 3, 4, 4))
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, training=True)
    assert len(T.batch_chunks(u.shape)) == (5 if chunk == 1 else 3)
    _check_parity("stochastic_pool2d", x, dict(kw, samples=u), dict(kw, samples=torch.tensor(u)), rng, "cpu")


@pytest.mark.parametrize("window", [(2, 1, 0), (3, 1, 1), (2, 2, 0), (3, 2, 1)], ids=str)
@pytest.mark.parametrize(
    "op",
    [
        lambda x, k, s, p: TF.stochastic_pool2d(x, k, s, p, training=True),
        lambda x, k, s, p: TF.dpp_pool2d(x, 0.5, 2.0, k, s, p),
        lambda x, k, s, p: TF.gated_pool2d(x, torch.randn(k, k, dtype=x.dtype), k, s, p),
        lambda x, k, s, p: TF.tree_pool2d(
            x, torch.randn(2, k, k, dtype=x.dtype), torch.randn(1, k, k, dtype=x.dtype), k, s, p
        ),
        lambda x, k, s, p: TF.max_blur_pool2d(x, k, 3, 2),
    ],
    ids=["stochastic", "dpp", "gated", "tree", "max_blur"],
)
def test_cpu_tap_loops_leave_the_input_alone(op, window, rng):
    """The chunked CPU loops work on copies (at unit strides too, where a phase is the input
    itself): the input and a second call's result are unchanged."""
    x = torch.tensor(rng.standard_normal((3, 2, 7, 6)), requires_grad=True)
    before = x.detach().clone()
    torch.manual_seed(0)
    y = op(x, *window)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.detach(), before, rtol=0, atol=0)
    torch.manual_seed(0)
    torch.testing.assert_close(op(x, *window), y, rtol=0, atol=0)


def test_stochastic_degenerate_windows_follow_the_reference():
    x = np.array(
        [
            [
                [
                    [0.0, 0.0, -1.0, -2.0, np.nan, 1.0, np.inf, 1.0],
                    [0.0, 0.0, -3.0, -np.inf, 2.0, 3.0, 2.0, np.inf],
                ]
            ]
        ]
    )  # windows: all zero | all negative | NaN | two +inf
    u = np.array([[[[0.0, 0.5, 0.5, 0.99]]]])
    for training in (True, False):
        y, pullback = P.vjp("stochastic_pool2d", x, kernel_size=2, training=training, samples=u)
        xt = _tensor(x, grad=True)
        yt = TF.stochastic_pool2d(xt, 2, training=training, samples=torch.tensor(u))
        np.testing.assert_array_equal(yt.detach().numpy(), y)
        yt.backward(torch.ones_like(yt))
        np.testing.assert_array_equal(xt.grad.numpy(), pullback(np.ones_like(y))["x"])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_stochastic_gradgradcheck(training):
    gen = torch.Generator().manual_seed(0)
    sign = torch.where(torch.rand(1, 1, 4, 5, generator=gen) < 0.3, -1.0, 1.0)
    x = ((torch.rand(1, 1, 4, 5, generator=gen) + 0.2) * sign).double().requires_grad_(True)  # away from 0
    u = torch.rand(1, 1, 3, 3, generator=gen, dtype=torch.float64)
    fn = lambda v: TF.stochastic_pool2d(v, 3, 2, 1, ceil_mode=True, training=training, samples=u)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_sampling_frequencies_match_probabilities():
    # 4000 identical windows [[1, 0, 2], [-1, 3, 4]]: p = [.1, 0, .2, 0, .3, .4]
    m = 4000
    pattern = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 3.0, 4.0]], dtype=torch.float64)
    x = pattern.repeat(1, m)[None, None].requires_grad_(True)
    y = TF.stochastic_pool2d(x, (2, 3), rng=torch.Generator().manual_seed(12345))
    y.sum().backward()
    picked = x.grad.reshape(2, m, 3)
    assert (picked.sum(dim=(0, 2)) == 1).all()  # one sample per window, and the output is that value
    torch.testing.assert_close(y.flatten(), (picked * pattern[:, None, :]).sum(dim=(0, 2)))
    counts = picked.sum(dim=1).flatten().numpy()
    p = np.maximum(pattern.numpy(), 0).ravel() / 10.0
    assert counts[p == 0].sum() == 0
    assert chisquare_p(counts[p > 0], m * p[p > 0]) > 1e-3


def test_seeded_runs_are_reproducible(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 8, 8)))
    calls = [
        (TF.stochastic_pool2d, dict(kernel_size=2)),
        (TF.s3_pool2d, dict(kernel_size=2, grid_size=4)),
        (TF.mixed_pool2d, dict(kernel_size=2, mode="window")),
    ]
    for op, kw in calls:
        a = op(x, **kw, rng=torch.Generator().manual_seed(5))
        torch.testing.assert_close(op(x, **kw, rng=torch.Generator().manual_seed(5)), a, rtol=0, atol=0)
        torch.testing.assert_close(op(x, **kw, rng=5), a, rtol=0, atol=0)  # an int seeds a Generator
        gen = torch.Generator().manual_seed(1)
        assert not torch.equal(op(x, **kw, rng=gen), op(x, **kw, rng=gen))
    torch.manual_seed(3)
    a = TF.stochastic_pool2d(x, 2)  # rng=None: torch's global generator
    torch.manual_seed(3)
    torch.testing.assert_close(TF.stochastic_pool2d(x, 2), a, rtol=0, atol=0)


def test_stochastic_errors(rng):
    x = torch.tensor(rng.standard_normal((1, 1, 4, 4)))
    with pytest.raises(PoolingConfigError, match="rng must be None .* or a torch.Generator"):
        TF.stochastic_pool2d(x, 2, rng=np.random.default_rng(0))
    with pytest.raises(PoolingConfigError, match="training must be True or False"):
        TF.stochastic_pool2d(x, 2, training=1)
    with pytest.raises(PoolingInputError, match=r"samples must have shape \(N, C, \*out\) = \(1, 1, 2, 2\)"):
        TF.stochastic_pool2d(x, 2, samples=torch.rand(1, 1, 3, 3))
    with pytest.raises(PoolingInputError, match=r"samples must be floats in \[0, 1\)"):
        TF.stochastic_pool2d(x, 2, samples=np.full((1, 1, 2, 2), 1.0))
    with pytest.raises(PoolingInputError, match="stochastic_pool2d expects a 4-D tensor"):
        TF.stochastic_pool2d(x[0, 0], 2)


# ------------------------------------------------------------------- mixed pooling


def _alpha(rng, case: Case, mode):
    c = case.shape[1]
    return {
        "layer": rng.uniform(),
        "channel": rng.uniform(size=c),
        "window": rng.uniform(size=_out_shape(case)[2:]),
    }[mode]


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["layer", "channel", "window"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_mixed_matches_numpy(case: Case, layout, mode, device, path, rng):
    """The CPU's one-gradient Function (contiguous inputs) and the generic autograd path."""
    with generic_paths(path == "generic"):
        _mixed_parity(case, layout, mode, device, rng)


def _mixed_parity(case: Case, layout, mode, device, rng):
    x = _layout(distinct(case.shape, rng), layout)  # tie-free: both backends' max rules agree anyway
    alpha = np.array(_alpha(rng, case, mode))
    kw = dict(case.window(), mode=mode, data_format=layout)
    op = f"mixed_pool{case.nd}d"
    _check_parity(op, x, dict(kw, alpha=alpha), dict(kw, alpha=alpha), rng, device, wrt=("alpha",))
    # evaluation (1/2) and a random draw passed back as alpha: the two ways the reference is random
    _check_parity(op, x, dict(kw, training=False), dict(kw, training=False), rng, device)
    drawn = np.array(_alpha(rng, case, mode)).round()
    _check_parity(
        op, x, dict(kw, alpha=drawn), dict(kw, alpha=torch.tensor(drawn, device=device)), rng, device
    )


def test_mixed_draws_lambda_in_zero_one_per_mode_and_alpha_one_is_max():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    mx, av = TF.max_pool2d(x, 2), TF.avg_pool2d(x, 2)
    gen = torch.Generator().manual_seed(0)
    # the axes one lambda is shared over: all for "layer", batch and space per channel, batch and channels
    shared = {"layer": (0, 1, 2, 3), "channel": (0, 2, 3), "window": (0, 1)}
    for mode, dims in shared.items():
        drawn = []
        for _ in range(20):
            lam = (TF.mixed_pool2d(x, 2, mode=mode, rng=gen) == mx).double()
            assert (lam.amax(dim=dims) == lam.amin(dim=dims)).all()  # one draw per shared group
            torch.testing.assert_close(
                TF.mixed_pool2d(x, 2, alpha=lam.amax(dim=dims), mode=mode), lam * mx + (1 - lam) * av
            )
            drawn.append(lam.mean().item())
        assert 0.2 < np.mean(drawn) < 0.8
    torch.testing.assert_close(TF.mixed_pool2d(x, 2, alpha=1.0), mx, rtol=0, atol=0)
    torch.testing.assert_close(TF.mixed_pool2d(x, 2, alpha=0.0), av, rtol=0, atol=0)
    torch.testing.assert_close(TF.mixed_pool2d(x, 2, training=False), (mx + av) / 2)


@pytest.mark.parametrize("path", ["cpu-fast", "generic"])
def test_mixed_non_finite_windows_follow_the_reference(path):
    x = np.array([[[np.inf, -np.inf, 1.0, np.nan, 2.0, 3.0]]])
    for alpha in (0.0, 0.3, 1.0):
        xt = _tensor(x, grad=True)
        at = _tensor(alpha, grad=True)
        y, pullback = P.vjp("mixed_pool1d", x, kernel_size=2, alpha=alpha)
        with generic_paths(path == "generic"):
            yt = TF.mixed_pool1d(xt, 2, alpha=at)
            yt.backward(torch.ones_like(yt))
        np.testing.assert_array_equal(yt.detach().numpy(), y)
        ref = pullback(np.ones_like(y))
        assert np.isfinite(at.grad.item()) and at.grad.item() == pytest.approx(float(ref["alpha"]))
        np.testing.assert_allclose(xt.grad.numpy(), ref["x"])


def test_mixed_gradgradcheck():
    x = torch.tensor(distinct((1, 2, 4, 5), np.random.default_rng(0)) * 10, requires_grad=True)
    a = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    fn = lambda v, w: TF.mixed_pool2d(v, 3, 2, 1, alpha=w, mode="channel")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, a))


def test_mixed_errors(rng):
    x = torch.tensor(rng.standard_normal((1, 2, 4, 4)))
    with pytest.raises(PoolingInputError, match=r"with mode='channel' alpha must have shape \(2,\)"):
        TF.mixed_pool2d(x, 2, alpha=torch.zeros(3), mode="channel")
    with pytest.raises(PoolingInputError, match=r"with mode='channel' alpha must have shape \(2,\)"):
        TF.mixed_pool2d(x, 2, alpha=0.5, mode="channel")
    with pytest.raises(PoolingConfigError, match=r"alpha must lie in \[0, 1\]"):
        TF.mixed_pool2d(x, 2, alpha=1.5)
    with pytest.raises(PoolingConfigError, match="mode must be one of"):
        TF.mixed_pool2d(x, 2, mode="pixel")
    with pytest.raises(PoolingConfigError, match="alpha must be real numbers"):
        TF.mixed_pool2d(x, 2, alpha=torch.tensor(True))


# ------------------------------------------------------------------- S3 pooling


def _s3_settings(case: Case) -> dict:
    stride = case.stride if case.stride is not None else case.kernel_size
    grid = tuple(2 * s for s in stride) if isinstance(stride, tuple) else 2 * stride
    return dict(kernel_size=case.kernel_size, grid_size=grid, stride=stride)


@pytest.mark.parametrize("path", ["cpu-kept-windows", "generic"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case,layout", RESEARCH_CASES)
def test_s3_matches_numpy_with_the_same_rows(case: Case, layout, training, device, path, rng):
    """The CPU's kept-window maxima and the generic stride-1 map, against NumPy."""
    with generic_paths(path == "generic"):
        _s3_parity(case, layout, training, device, rng)


@pytest.mark.parametrize("path", ["cpu-kept-windows", "generic"])
@pytest.mark.parametrize("kernel", [2, 3, (3, 2)])
@pytest.mark.parametrize("chunk", [None, 1], ids=["whole-batch", "per-sample"])
def test_s3_ties_nan_and_edges_follow_numpy(kernel, path, chunk, rng, monkeypatch):
    """Integer values (ties everywhere), NaNs, and windows over the 'same' padding at both edges;
    the CPU's kept-window loops also one sample at a time (batch chunks)."""
    import poolkit.torch._taps as T

    if chunk is not None:
        monkeypatch.setattr(T, "CHUNK", chunk)
    x = rng.integers(-2, 3, size=(2, 3, 9, 8)).astype(np.float64)
    x[0, 0, 0, 0] = x[1, 2, 4, 5] = x[1, 2, 5, 5] = np.nan
    rows = [np.array([0, 5, 8]), np.array([0, 2, 5, 7])]  # one per cell, both edges
    kw = dict(kernel_size=kernel, grid_size=(3, 2), stride=(3, 2))
    y, pullback = P.vjp("s3_pool2d", x, **kw, samples=rows)
    g = rng.standard_normal(y.shape)
    xt = torch.tensor(x, requires_grad=True)
    with generic_paths(path == "generic"):
        yt = TF.s3_pool2d(xt, **kw, samples=[torch.tensor(r) for r in rows])
        yt.backward(torch.tensor(g))
    np.testing.assert_array_equal(yt.detach().numpy(), y)
    np.testing.assert_array_equal(xt.grad.numpy(), pullback(g)["x"])


def _s3_parity(case: Case, layout, training, device, rng):
    x = _layout(distinct(case.shape, rng), layout)
    kw = dict(_s3_settings(case), training=training, data_format=layout)
    nd = case.nd
    grid, stride = (kw[n] if isinstance(kw[n], tuple) else (kw[n],) * nd for n in ("grid_size", "stride"))
    gen = np.random.default_rng(7)
    rows = [numpy_rows(gen, case.shape[2 + j], grid[j], stride[j]) for j in range(nd)]
    trows = [torch.tensor(r, device=device) for r in rows]
    _check_parity(f"s3_pool{nd}d", x, dict(kw, samples=rows), dict(kw, samples=trows), rng, device)
    if training:  # the numpy draws given as a list of arrays (validated on the host) work too
        y = getattr(TF, f"s3_pool{nd}d")(torch.tensor(x, device=device), **kw, samples=rows)
        np.testing.assert_array_equal(y.cpu().numpy(), getattr(P, f"s3_pool{nd}d")(x, **kw, samples=rows))


def test_s3_draws_ordered_rows_from_every_cell_and_uniform_subsets():
    # 1-D, kernel 1: the output is the kept positions. 1500 cells of 4 keep 2 rows: 6 subsets, p = 1/6.
    n_cells = 1500
    x = torch.arange(4.0 * n_cells)[None, None]
    y = TF.s3_pool1d(x, 1, grid_size=4, stride=2, rng=31)[0, 0].long().reshape(n_cells, 2)
    assert (y[:, 1] > y[:, 0]).all() and (y // 4 == torch.arange(n_cells)[:, None]).all()
    pairs = (y % 4).tolist()
    subsets = {s: pairs.count(list(s)) for s in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]}
    assert sum(subsets.values()) == n_cells
    assert chisquare_p(list(subsets.values())) > 1e-3
    tail = TF.s3_pool1d(torch.arange(7.0)[None, None], 1, grid_size=4, rng=2)[0, 0]  # partial cell: 2 of 3
    assert tail.shape == (4,) and set(tail[2:].tolist()) <= {4.0, 5.0, 6.0} and tail[3] > tail[2]


def test_s3_gradgradcheck_and_one_draw_shared_by_batch_and_channels():
    x = torch.tensor(distinct((1, 2, 6, 5), np.random.default_rng(1)), requires_grad=True)
    rows = [torch.tensor([1, 2, 4]), torch.tensor([0, 3, 4])]
    fn = lambda v: TF.s3_pool2d(v, 2, 4, samples=rows)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x,))
    pos = torch.arange(16.0).reshape(4, 4).expand(3, 5, 4, 4)
    y = TF.s3_pool2d(pos, 1, grid_size=4, stride=2, rng=2)
    assert (y == y[:1, :1]).all()


def test_s3_errors(rng):
    x = torch.tensor(rng.standard_normal((1, 1, 8, 8)))
    with pytest.raises(PoolingConfigError, match="grid_size must be a multiple of stride on every axis"):
        TF.s3_pool2d(x, 2, grid_size=3, stride=2)
    with pytest.raises(PoolingInputError, match=r"samples\[1\] must be 4 integer positions"):
        TF.s3_pool2d(x, samples=[torch.arange(4), torch.arange(3)])
    with pytest.raises(
        PoolingInputError, match=r"samples\[0\] must be strictly increasing positions in \[0, 8\)"
    ):
        TF.s3_pool2d(x, samples=[np.array([0, 0, 1, 2]), np.arange(4)])
    with pytest.raises(PoolingInputError, match="samples must be a sequence of 2 1-D integer arrays"):
        TF.s3_pool2d(x, samples=[torch.arange(4)])


# ------------------------------------------------------------------- dtypes and determinism

LOW_PRECISION_CALLS = [
    ("stochastic_pool2d", dict(kernel_size=3, stride=2, padding=1, training=False)),
    (
        "stochastic_pool2d",
        dict(kernel_size=2, samples=torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))),
    ),
    ("mixed_pool2d", dict(kernel_size=3, stride=2, padding=1, alpha=0.3)),
    ("mixed_pool2d", dict(kernel_size=2, training=False)),
    ("s3_pool2d", dict(kernel_size=2, grid_size=4, training=False)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op,kw", LOW_PRECISION_CALLS, ids=lambda v: v if isinstance(v, str) else None)
def test_low_precision_within_tolerance_of_float32(op, kw, dtype):
    x = torch.rand(2, 3, 12, 11, generator=torch.Generator().manual_seed(1)) * 2 - 0.5
    fn = getattr(TF, op)
    xl = x.to(dtype).requires_grad_(True)
    y = fn(xl, **kw)
    assert y.dtype == dtype
    # computed in float32: the low-precision result is the float32 one on the rounded input, rounded
    torch.testing.assert_close(y, fn(xl.detach().float(), **kw).to(dtype), rtol=0, atol=0)
    if "samples" not in kw:  # (a sampled value may change with the input's rounding)
        tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
        torch.testing.assert_close(y.float(), fn(x, **kw), rtol=tol, atol=tol)
    y.sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_algorithms_mode(device):
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(2, 3, 9, 9, device=device, requires_grad=True)
        for training in (True, False):
            TF.stochastic_pool2d(x, 3, 2, 1, training=training, rng=0).sum().backward()
            TF.mixed_pool2d(x, 3, 2, 1, mode="window", training=training, rng=0).sum().backward()
            TF.s3_pool2d(x, 3, 4, training=training, rng=0).sum().backward()
        a = torch.full((3,), 0.4, device=device, requires_grad=True)
        TF.mixed_pool2d(x, 2, alpha=a, mode="channel").sum().backward()
        assert a.grad is not None
    finally:
        torch.use_deterministic_algorithms(False)


def test_unbatched_input_and_samples(rng):
    x = torch.tensor(rng.standard_normal((3, 6, 6)))
    u = torch.rand(3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(
        TF.stochastic_pool2d(x, 2, samples=u), TF.stochastic_pool2d(x[None], 2, samples=u[None])[0]
    )


# ------------------------------------------------------------------- modules


def test_stochastic_module_samples_in_train_and_weighs_in_eval(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 8, 8)))
    m = PT.StochasticPool2d(2, generator=torch.Generator().manual_seed(0))
    assert m.training and list(m.parameters()) == []
    a = m(x)
    m.generator.manual_seed(0)
    torch.testing.assert_close(m(x), a, rtol=0, atol=0)  # the module's generator drives the draws
    torch.testing.assert_close(
        a, TF.stochastic_pool2d(x, 2, rng=torch.Generator().manual_seed(0)), rtol=0, atol=0
    )
    m.eval()
    torch.testing.assert_close(m(x), TF.stochastic_pool2d(x, 2, training=False), rtol=0, atol=0)
    assert not torch.equal(a, m(x))
    m3 = PT.StochasticPool3d(2).eval()
    assert m3(torch.rand(1, 2, 4, 4, 4)).shape == (1, 2, 2, 2, 2)
    assert m.stride == 2 and "kernel_size=2" in repr(m)


def test_s3_module_train_and_eval(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 8, 8)))
    m = PT.S3Pool2d(2, grid_size=4, generator=torch.Generator().manual_seed(3))
    a = m(x)
    assert a.shape == (2, 3, 4, 4)
    torch.testing.assert_close(a, TF.s3_pool2d(x, 2, 4, rng=torch.Generator().manual_seed(3)), rtol=0, atol=0)
    torch.testing.assert_close(m.eval()(x), TF.max_pool2d(x, 2), rtol=0, atol=0)
    assert PT.S3Pool1d().eval()(torch.rand(1, 2, 9)).shape == (1, 2, 5)


@pytest.mark.parametrize(
    "mode,kw,shape",
    [("layer", {}, ()), ("channel", dict(channels=3), (3,)), ("window", dict(input_size=(8, 7)), (4, 3))],
)
def test_mixed_module_learns_alpha(mode, kw, shape, rng):
    x = torch.tensor(rng.standard_normal((2, 3, 8, 7)), dtype=torch.float32)
    m = PT.MixedPool2d(2, learnable=True, mode=mode, **kw)
    assert dict(m.named_parameters())["alpha"].shape == shape
    torch.testing.assert_close(m(x), TF.mixed_pool2d(x, 2, training=False))  # alpha starts at 1/2
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    target = TF.max_pool2d(x, 2)  # pulls alpha towards 1
    before = m.alpha.detach().clone()
    loss = (m(x) - target).pow(2).mean()
    loss.backward()
    opt.step()
    assert (m.alpha > before).all()
    assert (m(x) - target).pow(2).mean() < loss
    state = m.state_dict()
    m2 = PT.MixedPool2d(2, learnable=True, mode=mode, **kw)
    m2.load_state_dict(state)
    torch.testing.assert_close(m2(x), m(x))
    torch.testing.assert_close(m.eval()(x), m.train()(x), rtol=0, atol=0)  # learnable: nothing random


def test_mixed_module_clamps_alpha_with_a_straight_through_gradient(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 6, 6)))
    m = PT.MixedPool2d(2, learnable=True).double()
    with torch.no_grad():
        m.alpha.fill_(1.5)
    y = m(x)
    torch.testing.assert_close(y, TF.max_pool2d(x, 2), rtol=0, atol=0)
    y.sum().backward()
    assert m.alpha.grad != 0  # can come back into [0, 1]


def test_random_mixed_module_draws_in_train_only(rng):
    x = torch.tensor(rng.standard_normal((2, 3, 6, 6)))
    m = PT.MixedPool2d(2, mode="channel", generator=torch.Generator().manual_seed(0))
    assert list(m.parameters()) == [] and m.alpha is None
    y = m(x)
    mx, av = TF.max_pool2d(x, 2), TF.avg_pool2d(x, 2)
    assert ((y == mx) | (y == av)).all()
    torch.testing.assert_close(m.eval()(x), TF.mixed_pool2d(x, 2, training=False), rtol=0, atol=0)


def test_modules_validate_at_construction():
    with pytest.raises(PoolingConfigError, match="kernel_size must be >= 1"):
        PT.StochasticPool2d(0)
    with pytest.raises(PoolingConfigError, match="generator must be None .* or a torch.Generator"):
        PT.StochasticPool2d(2, generator=0)
    with pytest.raises(PoolingConfigError, match="learnable=True with mode='channel' needs channels="):
        PT.MixedPool2d(2, learnable=True, mode="channel")
    with pytest.raises(PoolingConfigError, match="learnable=True with mode='window' needs input_size="):
        PT.MixedPool2d(2, learnable=True, mode="window")
    with pytest.raises(PoolingConfigError, match="channels must be >= 1"):
        PT.MixedPool1d(2, learnable=True, mode="channel", channels=0)
    with pytest.raises(PoolingConfigError, match="mode must be one of"):
        PT.MixedPool3d(2, mode="pixel")
    with pytest.raises(PoolingConfigError, match="got grid_size=3 and stride=2 on axis 0"):
        PT.S3Pool2d(2, grid_size=3)
    with pytest.raises(PoolingConfigError, match="data_format must be one of"):
        PT.S3Pool1d(data_format="NCHW")


def _saved_bytes(fn):
    """Bytes autograd keeps for the backward of ``fn()`` (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize(
    "call",
    [
        lambda x, k: TF.stochastic_pool2d(x, k, 1, k // 2, rng=0),
        lambda x, k: TF.stochastic_pool2d(x, k, 1, k // 2, training=False),
        lambda x, k: TF.mixed_pool2d(
            x, k, 1, k // 2, alpha=torch.full((4,), 0.3, requires_grad=True), mode="channel"
        ),
        lambda x, k: TF.s3_pool2d(x, k, 4, rng=0),
    ],
    ids=["stochastic-train", "stochastic-eval", "mixed", "s3"],
)
def test_saved_memory_does_not_grow_with_the_kernel(call):
    # stride 1: a kernel-volume copy of the input (an unfold) would keep 9x, then 25x, the input
    x = torch.randn(2, 4, 24, 24, requires_grad=True)
    small, large = _saved_bytes(lambda: call(x, 3)), _saved_bytes(lambda: call(x, 5))
    io = x.numel() * x.element_size()
    assert small <= 6 * io and large <= 1.2 * small, (small / io, large / io)
