"""Keep the Keras tests out of the main pytest process.

Keras picks its backend once per process, and TensorFlow in the same process
as torch's triton import crashes. ``tests/test_keras_backends.py`` runs
``tests/keras`` and the ``poolkit.keras`` doctests in one child process per
backend, with ``POOLKIT_KERAS_WORKER=1`` and ``KERAS_BACKEND`` set.
"""

import os

collect_ignore = [] if os.environ.get("POOLKIT_KERAS_WORKER") == "1" else ["src/poolkit/keras", "tests/keras"]
