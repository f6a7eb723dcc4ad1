"""Bad input gets a PoolingError naming the argument, the value, the rule and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from poolkit.errors import PoolingConfigError, PoolingError, PoolingInputError
from poolkit.ops import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    global_avg_pool,
    lp_pool2d,
    max_pool,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    vjp,
)

X = np.zeros((1, 1, 4, 4))


def test_family():
    assert issubclass(PoolingConfigError, PoolingError)
    assert issubclass(PoolingInputError, PoolingError)
    assert issubclass(PoolingError, ValueError)


CASES = [
    # wrong rank
    (
        lambda: max_pool2d(np.zeros((8, 8)), 2),
        PoolingInputError,
        r"max_pool2d expects a 4-D array shaped \(N, C, H, W\) or a 3-D unbatched array \(C, H, W\), got shape \(8, 8\)\. "
        r"Add batch and channel axes with x\[None, None\]",
    ),
    (
        lambda: max_pool3d(np.zeros((1, 4, 4)), 2),
        PoolingInputError,
        r"max_pool3d expects a 5-D array .* got shape \(1, 4, 4\)\. Add batch and channel axes with x\[None, None\]",
    ),
    (
        lambda: max_pool1d(np.zeros((1, 1, 4, 4, 4)), 2),
        PoolingInputError,
        r"For a 3-D spatial input use max_pool3d",
    ),
    (
        lambda: max_pool(np.zeros((4, 4)), 2),
        PoolingInputError,
        r"max_pool expects an array shaped \(N, C, \*spatial\)",
    ),
    (
        lambda: global_avg_pool(np.zeros((4, 4))),
        PoolingInputError,
        r"global_avg_pool expects an array shaped \(N, C, \*spatial\).*x\[None, None\]\.$",
    ),
    (
        lambda: max_pool2d(np.zeros((2, 4, 4, 1, 1)), 2, data_format="channels_last"),
        PoolingInputError,
        r"max_pool2d expects a 4-D array shaped \(N, H, W, C\) .* got shape \(2, 4, 4, 1, 1\)\. For a 3-D spatial input use max_pool3d",
    ),
    # dtypes
    (
        lambda: max_pool2d(np.zeros((1, 1, 4, 4), dtype=np.int64), 2),
        PoolingInputError,
        r"max_pool2d expects a floating-point x \(float16, float32 or float64\), got dtype int64\. Convert with x\.astype\(np\.float32\)",
    ),
    (
        lambda: avg_pool2d(np.zeros((1, 1, 4, 4), dtype=complex), 2),
        PoolingInputError,
        r"got dtype complex.*pool the real and imaginary parts separately",
    ),
    (lambda: max_pool2d(np.zeros((1, 1, 4, 4), dtype=bool), 2), PoolingInputError, r"got dtype bool"),
    # non-finite hyper-parameters
    (
        lambda: max_pool2d(X, float("inf")),
        PoolingConfigError,
        r"max_pool2d: kernel_size must be a finite integer, got inf",
    ),
    (
        lambda: max_pool2d(X, 2, float("nan")),
        PoolingConfigError,
        r"max_pool2d: stride must be a finite integer, got nan",
    ),
    (
        lambda: lp_pool2d(X, float("nan"), 2),
        PoolingConfigError,
        r"lp_pool2d: norm_type must be a finite number, got nan",
    ),
    (lambda: lp_pool2d(X, 0, 2), PoolingConfigError, r"lp_pool2d: norm_type must be > 0, got 0\.0"),
    (lambda: lp_pool2d(X, -np.inf, 2), PoolingConfigError, r"norm_type must be > 0, got -inf"),
    # kernel larger than the padded input
    (
        lambda: max_pool2d(X, 5),
        PoolingInputError,
        r"max_pool2d: the window does not fit the input along spatial axis 0: window span 5 \(kernel_size=5, dilation=1\) "
        r"is larger than the padded input 4 \+ 0 \+ 0 = 4\. Use a smaller kernel_size",
    ),
    (lambda: max_pool2d(X, 2, dilation=4), PoolingInputError, r"window span 5 \(kernel_size=2, dilation=4\)"),
    (
        lambda: max_pool2d(np.zeros((1, 1, 0, 4)), 1),
        PoolingInputError,
        r"spatial axis 0 of the input has size 0",
    ),
    # output_size of 0
    (
        lambda: adaptive_avg_pool2d(X, 0),
        PoolingConfigError,
        r"adaptive_avg_pool2d: output_size must be >= 1 on every axis, got 0 on axis 0\. Use None to keep an axis unchanged",
    ),
    (lambda: adaptive_max_pool2d(X, (2, 0)), PoolingConfigError, r"got 0 on axis 1"),
    # bools passed as ints
    (
        lambda: max_pool2d(X, True),
        PoolingConfigError,
        r"max_pool2d: kernel_size must be an integer, got True \(a bool\)\. A bool is not a size; pass an int such as kernel_size=1",
    ),
    (
        lambda: max_pool2d(X, 2, dilation=False),
        PoolingConfigError,
        r"dilation must be an integer, got False \(a bool\)",
    ),
    (
        lambda: max_pool2d(X, 2, padding=True),
        PoolingConfigError,
        r"padding must be an integer, got True \(a bool\)",
    ),
    (lambda: max_pool2d(X, 2, ceil_mode=1), PoolingConfigError, r"ceil_mode must be True or False, got 1"),
    (
        lambda: max_pool2d(X, 2, return_indices="yes"),
        PoolingConfigError,
        r"return_indices must be True or False, got 'yes'",
    ),
    # other hyper-parameter rules
    (
        lambda: max_pool2d(X, 2.0),
        PoolingConfigError,
        r"kernel_size must be an integer, got 2\.0 \(a float\)\. Pass kernel_size=2\.",
    ),
    (
        lambda: adaptive_avg_pool2d(X, 1.5),
        PoolingConfigError,
        r"output_size must be an integer, got 1\.5 \(a float\)",
    ),
    (
        lambda: max_pool2d(X, 2, stride=0),
        PoolingConfigError,
        r"stride must be >= 1, got 0\. Pass stride=1 or larger",
    ),
    (
        lambda: max_pool2d(X, 2, padding=-1),
        PoolingConfigError,
        r"padding must be >= 0, got -1\. Pass padding=0 or larger",
    ),
    (
        lambda: max_pool2d(X, 2, padding=2),
        PoolingConfigError,
        r"padding=2 on axis 0 is more than half of kernel_size=2 \(PyTorch's rule: padding <= kernel_size // 2 = 1\)",
    ),
    (
        lambda: max_pool2d(X, 3, padding=((0, 2), (1, 1))),
        PoolingConfigError,
        r"padding \(0, 2\) on axis 0 exceeds half the window span",
    ),
    (
        lambda: max_pool1d(np.zeros((1, 1, 4)), 2, padding=(1, 2)),
        PoolingConfigError,
        r"padding must have one entry per spatial axis \(1\), got \(1, 2\)\. For asymmetric padding give one \(lo, hi\) pair per axis, e\.g\. padding=\(\(0, 1\),\)",
    ),
    (lambda: max_pool2d(X, 2, padding="full"), PoolingConfigError, r"'same' or 'valid', got 'full'"),
    (
        lambda: max_pool2d(X, (2, 2, 2)),
        PoolingConfigError,
        r"kernel_size must be an int or a sequence of 2 ints",
    ),
    (
        lambda: max_pool2d(X, 2, data_format="NHWC"),
        PoolingConfigError,
        r"data_format must be one of 'channels_first', 'channels_last', got 'NHWC'",
    ),
    (
        lambda: max_pool2d(X, 2, return_indices=True, index_format="onnx"),
        PoolingConfigError,
        r"index_format must be one of 'torch', 'tf'",
    ),
    (
        lambda: avg_pool2d(X, 2, divisor_override=0),
        PoolingConfigError,
        r"divisor_override must be >= 1, got 0",
    ),
    (
        lambda: adaptive_max_pool2d(X, (2, 2, 2)),
        PoolingConfigError,
        r"output_size must be an int or a sequence of 2 entries",
    ),
    # pullback and registry
    (
        lambda: vjp("max_pool2d", X, kernel_size=2)[1](np.zeros((1, 1, 3, 3))),
        PoolingInputError,
        r"max_pool2d: grad_output must have shape \(1, 1, 2, 2\) \(the shape of the output\), got \(1, 1, 3, 3\)",
    ),
    (lambda: vjp("nope", X), PoolingConfigError, r"unknown operator 'nope'\. Known operators: .*max_pool"),
]


@pytest.mark.parametrize("call,exc,message", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_error_type_and_message(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_errors_are_raised_before_any_work():
    # A bad setting on a huge (never allocated) view must fail fast, not in NumPy.
    big = np.broadcast_to(np.float32(0), (64, 64, 512, 512))
    with pytest.raises(PoolingConfigError):
        max_pool2d(big, 0)
