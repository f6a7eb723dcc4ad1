"""Keep the Keras tests out of the main pytest process.

Keras picks its backend once per process, and TensorFlow in the same process
as torch's triton import crashes. ``tests/test_keras_backends.py`` runs
``tests/keras`` and the ``poolkit.keras`` doctests in one child process per
backend, with ``POOLKIT_KERAS_WORKER=1`` and ``KERAS_BACKEND`` set.
"""

import os

collect_ignore = [] if os.environ.get("POOLKIT_KERAS_WORKER") == "1" else ["src/poolkit/keras", "tests/keras"]


class _WorkStealing:
    """Work stealing for ``-n N`` runs: the Keras backend runs (minutes) must not hold back the
    tests queued behind them on their worker."""

    def pytest_xdist_make_scheduler(self, config, log):
        if config.getvalue("dist") != "load":
            return None
        from xdist.scheduler import WorkStealingScheduling

        return WorkStealingScheduling(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):  # absent with -p no:xdist (the Keras children)
        config.pluginmanager.register(_WorkStealing(), "poolkit-work-stealing")
