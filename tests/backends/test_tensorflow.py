"""TensorFlow parity: 'same'/'valid' max and average pooling (forward and gradient)
and tf.nn.max_pool_with_argmax's index format, TensorFlow run in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from poolkit.geometry import window_spec
from poolkit.ops import vjp

WORKER = Path(__file__).with_name("tf_worker.py")

CASES = []
for pad in ("same", "valid"):
    for op in ("max", "avg"):
        CASES += [
            dict(op=op, nd=2, shape=(2, 7, 9, 3), k=3, s=2, padding=pad),
            dict(op=op, nd=2, shape=(1, 8, 8, 2), k=2, s=2, padding=pad),
            dict(op=op, nd=2, shape=(2, 6, 7, 2), k=[2, 3], s=[1, 2], padding=pad),
            dict(op=op, nd=2, shape=(1, 5, 5, 1), k=4, s=3, padding=pad),
            dict(op=op, nd=1, shape=(2, 11, 3), k=3, s=2, padding=pad),
            dict(op=op, nd=3, shape=(1, 5, 6, 7, 2), k=2, s=2, padding=pad),
        ]
    for include_batch in (False, True):
        CASES += [
            dict(op="argmax", nd=2, shape=(2, 7, 9, 3), k=3, s=2, padding=pad, include_batch=include_batch),
            dict(op="argmax", nd=2, shape=(3, 8, 8, 2), k=2, s=2, padding=pad, include_batch=include_batch),
        ]
IDS = [
    f"{c['op']}{c['nd']}d-{c['padding']}-k{c['k']}s{c['s']}-{'x'.join(map(str, c['shape']))}"
    + ("-batch" if c.get("include_batch") else "")
    for c in CASES
]


def _out_shape(case):
    spec = window_spec(case["shape"][1:-1], case["k"], case["s"], case["padding"])
    return (case["shape"][0], *spec.output_size, case["shape"][-1])


@pytest.fixture(scope="module")
def tf_results(tmp_path_factory):
    rng = np.random.default_rng(11)
    arrays = {"spec": np.array(json.dumps(CASES))}
    for i, case in enumerate(CASES):
        arrays[f"x{i}"] = rng.standard_normal(case["shape"]).astype(np.float32)
        arrays[f"g{i}"] = rng.standard_normal(_out_shape(case)).astype(np.float32)
    tmp = tmp_path_factory.mktemp("tf")
    src, dst = tmp / "in.npz", tmp / "out.npz"
    np.savez(src, **arrays)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(src), str(dst)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(np.load(dst))
    return arrays, out


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_matches_tensorflow(i, tf_results):
    arrays, out = tf_results
    case = CASES[i]
    x, g = arrays[f"x{i}"], arrays[f"g{i}"]
    nd = case["nd"]
    if case["op"] == "argmax":
        (y, idx) = vjp(
            f"max_pool{nd}d",
            x,
            kernel_size=case["k"],
            stride=case["s"],
            padding=case["padding"],
            return_indices=True,
            data_format="channels_last",
            index_format="tf",
            include_batch_in_index=case["include_batch"],
        )[0]
        np.testing.assert_array_equal(y, out[f"y{i}"])
        np.testing.assert_array_equal(idx, out[f"idx{i}"])
        return
    name = f"{case['op']}_pool{nd}d"
    kw = dict(kernel_size=case["k"], stride=case["s"], padding=case["padding"], data_format="channels_last")
    if case["op"] == "avg":
        kw["count_include_pad"] = False  # TensorFlow never counts padding
    y, pullback = vjp(name, x, **kw)
    if case["op"] == "max":
        np.testing.assert_array_equal(y, out[f"y{i}"])
    else:
        np.testing.assert_allclose(y, out[f"y{i}"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pullback(g)["x"], out[f"gx{i}"], rtol=1e-6, atol=1e-6)
