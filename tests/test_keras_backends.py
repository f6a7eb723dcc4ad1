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

The children run verbosely, so a log names each test before it runs. A child
killed by a signal (TensorFlow's CPU runtime has segfaulted once inside
``Model.fit`` on CI, which about 15 local runs did not reproduce) is run
once more from the start; the crash and the test it hit are printed either
way, and a second crash, or any ordinary failure, fails this test.
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
    # oneDNN's CPU kernels may order their sums differently from call to call (TensorFlow says so
    # at start-up); a .keras round trip's predictions differed in the last place once on CI
    "tensorflow": (
        {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"},
        ["tests/keras", "src/poolkit/keras"],
    ),
    "torch": ({"KERAS_BACKEND": "torch"}, ["tests/keras", "src/poolkit/keras"]),
}


def _start(settings: tuple[dict, list[str]], log: Path) -> subprocess.Popen:
    env_extra, args = settings
    env = dict(
        os.environ, POOLKIT_KERAS_WORKER="1", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", **env_extra
    )
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:xdist", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _crashed_in(log: str) -> str:
    """The test a child was running when it died: verbose logs name a test before running it."""
    started = re.findall(r"^(\S+::\S+)", log, re.M)
    return started[-1] if started else "before the first test"


def _run_all(runs: dict, logs: Path, timeout: float = TIMEOUT) -> tuple[list[str], list[str]]:
    """Run every child, ``PARALLEL`` at a time, rerunning once any that a signal killed.

    Returns the printed report lines and the failures (a child that failed, had no
    summary, or crashed twice).
    """
    queue, running, done, crashes = [(run, 0) for run in runs], {}, {}, []
    deadline = time.monotonic() + timeout
    while queue or running:
        while queue and len(running) < PARALLEL:
            run, attempt = queue.pop(0)
            log = logs / f"{run}-{attempt}.log"
            running[run] = (_start(runs[run], log), time.monotonic(), attempt, log)
        for run, (proc, started, attempt, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[run]
            if proc.returncode < 0:
                crashes.append(f"{run}: signal {-proc.returncode} in {_crashed_in(log.read_text())}")
                if attempt == 0:
                    queue.insert(0, (run, 1))
                    continue
            done[run] = (proc.returncode, time.monotonic() - started, log)
        if time.monotonic() > deadline:
            for proc, *_ in running.values():
                proc.kill()
            pytest.fail(f"Keras backend runs {sorted(running)} exceeded {timeout} s (logs in {logs})")
        time.sleep(0.2)
    report = [f"KERAS_BACKEND run crashed: {crash}" for crash in crashes]
    failures = []
    for run, (code, seconds, log) in done.items():
        out = log.read_text()
        summary = re.findall(r"^=* ?(\d+ (?:passed|failed).*?)=*$", out, re.M)
        report.append(
            f"KERAS_BACKEND run {run}: {summary[-1] if summary else 'no summary'} ({seconds:.0f} s wall)"
        )
        if code != 0 or not summary or " passed" not in summary[-1]:
            failures.append(f"--- {run}: exit {code}\n{out[-6000:]}")
    return report, failures


def test_crashed_in_names_the_unfinished_test():
    log = "t.py::a[x] PASSED  [ 50%]\nt.py::b[y] Fatal Python error: Segmentation fault\n"
    assert _crashed_in(log) == "t.py::b[y]"
    assert _crashed_in("collecting ...\n") == "before the first test"


CRASH_ONCE = """
import os, signal
from pathlib import Path

def test_fine():
    pass

def test_crash_{tag}():
    marker = Path(__file__).with_suffix(".crashed")
    if {always} or not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_a_crashed_child_is_rerun_once_and_a_second_crash_fails(tmp_path):
    """Real child pytest processes that die by SIGSEGV: once is rerun and reported, twice fails."""
    runs = {}
    for tag, always in (("once", False), ("always", True)):
        path = tmp_path / f"test_{tag}.py"
        path.write_text(CRASH_ONCE.format(tag=tag, always=always))
        runs[tag] = ({}, [os.fspath(path), "-p", "no:cacheprovider"])
    report, failures = _run_all(runs, tmp_path, timeout=120)
    # pytest names the files relative to the repository root
    crashes = sorted(re.sub(r" in \S*/", " in ", line) for line in report if "crashed" in line)
    assert crashes == [
        "KERAS_BACKEND run crashed: always: signal 11 in test_always.py::test_crash_always",
        "KERAS_BACKEND run crashed: always: signal 11 in test_always.py::test_crash_always",
        "KERAS_BACKEND run crashed: once: signal 11 in test_once.py::test_crash_once",
    ]
    assert any(line.startswith("KERAS_BACKEND run once: 2 passed") for line in report), report
    assert len(failures) == 1 and failures[0].startswith("--- always: exit -11")


def test_keras_backends():
    pytest.importorskip("keras")
    logs = Path(tempfile.mkdtemp(prefix="poolkit-keras-runs-"))
    report, failures = _run_all(RUNS, logs)
    print("\n".join(report))
    assert not failures, "\n".join(failures)
