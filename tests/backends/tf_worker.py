"""Runs TensorFlow's pooling on cases from an .npz file; writes results to another.

Invoked by test_tensorflow.py in its own process (TensorFlow and PyTorch are
kept out of one interpreter). Input: ``<in.npz> <out.npz>`` where in.npz has
``spec`` (a JSON list of cases) and ``x{i}``/``g{i}`` arrays.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def run(case: dict, x: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    xt = tf.constant(x)
    kind, nd = case["op"], case["nd"]
    k, s, pad = case["k"], case["s"], case["padding"].upper()
    out: dict[str, np.ndarray] = {}
    if kind == "argmax":
        y, idx = tf.nn.max_pool_with_argmax(
            xt, k, s, pad, include_batch_in_index=case["include_batch"], output_dtype=tf.int64
        )
        out["y"], out["idx"] = y.numpy(), idx.numpy()
        return out
    fn = {
        ("max", 1): tf.nn.max_pool1d,
        ("max", 2): tf.nn.max_pool2d,
        ("max", 3): tf.nn.max_pool3d,
        ("avg", 1): tf.nn.avg_pool1d,
        ("avg", 2): tf.nn.avg_pool2d,
        ("avg", 3): tf.nn.avg_pool3d,
    }[(kind, nd)]
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = fn(xt, k, s, pad)
    out["y"] = y.numpy()
    out["gx"] = tape.gradient(y, xt, output_gradients=tf.constant(g)).numpy()
    return out


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    data = np.load(src)
    cases = json.loads(str(data["spec"]))
    results = {"tf_version": np.array(tf.__version__)}
    for i, case in enumerate(cases):
        for key, val in run(case, data[f"x{i}"], data[f"g{i}"]).items():
            results[f"{key}{i}"] = val
    np.savez(dst, **results)


if __name__ == "__main__":
    main()
