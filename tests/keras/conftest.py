"""The Keras tests run only in a child process with KERAS_BACKEND set (see tests/test_keras_backends.py).

Elsewhere this directory collects nothing: Keras fixes its backend per
process, and TensorFlow next to torch's triton import crashes the process.
Run it directly with ``POOLKIT_KERAS_WORKER=1 KERAS_BACKEND=jax python -m pytest -p no:xdist tests/keras``.
"""

from __future__ import annotations

import os

if os.environ.get("POOLKIT_KERAS_WORKER") != "1" or "KERAS_BACKEND" not in os.environ:
    collect_ignore_glob = ["*"]
else:  # data modules merged by layer_cases.py (importing one first would be circular)
    collect_ignore_glob = ["cases_*.py"]


def pytest_collection_modifyitems(config, items):
    """``POOLKIT_KERAS_SAMPLE=k``: keep every k-th parametrization of each test function.

    tests/test_keras_backends.py sets it for the 64-bit JAX run, where XLA
    compiles every case (about half a second each); TensorFlow and torch run
    every case. Unparametrized tests and doctests always run.
    """
    step = int(os.environ.get("POOLKIT_KERAS_SAMPLE", "1"))
    if step <= 1:
        return
    seen: dict[tuple[str, str], int] = {}
    keep, drop = [], []
    for item in items:
        if getattr(item, "callspec", None) is None:
            keep.append(item)
            continue
        key = (item.nodeid.split("::")[0], item.originalname)
        index = seen[key] = seen.get(key, -1) + 1
        (keep if index % step == 0 else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
