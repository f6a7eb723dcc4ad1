"""Run the Keras tests once per backend (TensorFlow, JAX, torch), each in its own process.

Keras selects its backend once per process (``KERAS_BACKEND``), so every
backend gets a child pytest over ``tests/keras`` and the ``poolkit.keras``
doctests. JAX runs with 64-bit types enabled (the tests compare float64
results exactly); a second JAX run without them runs the tests marked
``default_dtypes`` (the generic layer tests: NumPy parity, shapes, config,
training and ``.keras`` round trips) in the default float32/int32 world, so the
64-bit run skips those. XLA compiles every case (about half a second each), so
the 64-bit JAX run takes every second parametrization of each test function
(``POOLKIT_KERAS_SAMPLE``, tests/keras/conftest.py); TensorFlow and torch run
every case. The children run two at a time, longest first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1200
PARALLEL = 2
# XLA's CPU backend compiles every eager primitive; its LLVM optimisations cost more than they save
# on test-sized arrays (same results: no fast-math either way).
JAX_FLAGS = {"XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}

# longest first
RUNS = {
    "jax": (
        {"KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "1", "POOLKIT_KERAS_SAMPLE": "2", **JAX_FLAGS},
        ["tests/keras", "src/poolkit/keras", "-m", "not default_dtypes"],
    ),
    "jax-32bit": (
        {"KERAS_BACKEND": "jax", "JAX_ENABLE_X64": "0", **JAX_FLAGS},
        ["tests/keras", "-m", "default_dtypes"],
    ),
    "tensorflow": ({"KERAS_BACKEND": "tensorflow"}, ["tests/keras", "src/poolkit/keras"]),
    "torch": ({"KERAS_BACKEND": "torch"}, ["tests/keras", "src/poolkit/keras"]),
}


def _start(run: str, log: Path) -> subprocess.Popen:
    env_extra, args = RUNS[run]
    env = dict(
        os.environ, POOLKIT_KERAS_WORKER="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", **env_extra
    )
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def test_keras_backends():
    pytest.importorskip("keras")
    logs = Path(tempfile.mkdtemp(prefix="poolkit-keras-runs-"))
    queue, running, done = list(RUNS), {}, {}
    deadline = time.monotonic() + TIMEOUT
    while queue or running:
        while queue and len(running) < PARALLEL:
            run = queue.pop(0)
            running[run] = (_start(run, logs / f"{run}.log"), time.monotonic())
        for run, (proc, started) in list(running.items()):
            if proc.poll() is not None:
                done[run] = (proc.returncode, time.monotonic() - started)
                del running[run]
        if time.monotonic() > deadline:
            for proc, _ in running.values():
                proc.kill()
            pytest.fail(f"Keras backend runs {sorted(running)} exceeded {TIMEOUT} s (logs in {logs})")
        time.sleep(0.2)
    failures = []
    for run, (code, seconds) in done.items():
        out = (logs / f"{run}.log").read_text()
        summary = re.findall(r"^=* ?(\d+ (?:passed|failed).*?)=*$", out, re.M)
        print(f"KERAS_BACKEND run {run}: {summary[-1] if summary else 'no summary'} ({seconds:.0f} s wall)")
        if code != 0 or not summary or " passed" not in summary[-1]:
            failures.append(f"--- {run}: exit {code}\n{out[-6000:]}")
    assert not failures, "\n".join(failures)
