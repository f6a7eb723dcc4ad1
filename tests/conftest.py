"""Shared fixtures: temporary HOME for frameworks, torch availability, hypothesis profile."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

_TMP_HOME = tempfile.mkdtemp(prefix="poolkit-test-home-")
for var in ("HOME", "KERAS_HOME", "MPLCONFIGDIR"):
    os.environ.setdefault(f"POOLKIT_ORIG_{var}", os.environ.get(var, ""))
    os.environ[var] = _TMP_HOME
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# torch.compile costs ~13 s cold per process: share Inductor's cache between workers and runs.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "poolkit-inductor-cache")
)

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261126)


settings.register_profile(
    "thorough", max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("POOLKIT_HYPOTHESIS_PROFILE", "ci"))

# Backend workers run in their own processes (TensorFlow and torch's triton crash together);
# doctest collection must not import them here.
collect_ignore = ["backends/tf_worker.py"]
