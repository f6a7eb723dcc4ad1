"""Run the Keras tests once per backend (TensorFlow, JAX, torch), each in its own process.

Keras selects its backend once per process (``KERAS_BACKEND``), so every
backend gets a child pytest over ``tests/keras`` and the ``poolkit.keras``
doctests. JAX runs with 64-bit types enabled (the tests compare float64
results exactly); a second JAX run without them checks the default float32/int32
world on the layer tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "tensorflow": ({"KERAS_BACKEND": "tensorflow"}, ["tests/keras", "src/poolkit/keras"]),
    "jax": ({"KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1"}, ["tests/keras", "src/poolkit/keras"]),
    "jax-32bit": ({"KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "0"}, ["tests/keras", "-m", "default_dtypes"]),
    "torch": ({"KERAS_BACKEND": "torch"}, ["tests/keras", "src/poolkit/keras"]),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_keras_backend(run):
    pytest.importorskip("keras")
    env_extra, args = RUNS[run]
    env = dict(
        os.environ, POOLKIT_KERAS_WORKER="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", **env_extra
    )
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-8000:] + proc.stderr[-2000:]
    summary = re.findall(r"^=* ?(\d+ (?:passed|failed).*?)=*$", proc.stdout, re.M)
    print(f"KERAS_BACKEND run {run}: {summary[-1] if summary else 'no summary'}")
    assert proc.returncode == 0, f"{run}: exit {proc.returncode}\n{tail}"
    assert summary and " passed" in summary[-1], tail
