"""The Keras tests run only in a child process with KERAS_BACKEND set (see tests/test_keras_backends.py).

Elsewhere this directory collects nothing: Keras fixes its backend per
process, and TensorFlow next to torch's triton import crashes the process.
Run it directly with ``POOLKIT_KERAS_WORKER=1 KERAS_BACKEND=jax python -m pytest -p no:xdist tests/keras``.
"""

from __future__ import annotations

import os

if os.environ.get("POOLKIT_KERAS_WORKER") != "1" or "KERAS_BACKEND" not in os.environ:
    collect_ignore_glob = ["*"]
