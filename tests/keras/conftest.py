"""The Keras tests run only in a child process with KERAS_BACKEND set (see tests/test_keras_backends.py)."""

from __future__ import annotations

import os

import pytest

if os.environ.get("POOLKIT_KERAS_WORKER") != "1" or "KERAS_BACKEND" not in os.environ:
    pytest.exit("tests/keras runs through tests/test_keras_backends.py (one process per KERAS_BACKEND)", 2)
