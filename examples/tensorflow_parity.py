"""TensorFlow's pooling functions and poolkit's NumPy reference give the same results.

    python examples/tensorflow_parity.py        (needs tensorflow)

``tf.nn.max_pool2d``/``avg_pool2d`` with ``padding="SAME"``/``"VALID"`` are
poolkit's ``max_pool2d``/``avg_pool2d`` with ``padding="same"``/``"valid"``
(for the average, ``count_include_pad=False``: TensorFlow divides by the taps
inside the input), channels-last; ``tf.nn.max_pool_with_argmax``'s indices are
``index_format="tf"``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import poolkit.ops as P


def main() -> list[str]:
    x = np.random.default_rng(0).standard_normal((2, 9, 7, 3)).astype(np.float32)
    lines = []
    for padding in ("SAME", "VALID"):
        kw = dict(kernel_size=3, stride=2, padding=padding.lower(), data_format="channels_last")
        y_tf = tf.nn.max_pool2d(x, 3, 2, padding).numpy()
        y_pk = P.max_pool2d(x, **kw)
        a_tf = tf.nn.avg_pool2d(x, 3, 2, padding).numpy()
        a_pk = P.avg_pool2d(x, **kw, count_include_pad=False)
        v_tf, i_tf = tf.nn.max_pool_with_argmax(x, 3, 2, padding, include_batch_in_index=True)
        v_pk, i_pk = P.max_pool2d(
            x, **kw, return_indices=True, index_format="tf", include_batch_in_index=True
        )
        assert np.array_equal(y_tf, y_pk) and np.array_equal(v_tf.numpy(), v_pk)
        assert np.array_equal(i_tf.numpy(), i_pk)
        assert np.allclose(a_tf, a_pk, rtol=1e-6, atol=1e-6)
        lines.append(
            f"padding={padding}: max equal, argmax indices equal, "
            f"average max |difference| {np.abs(a_tf - a_pk).max():.1e}"
        )
    return lines


if __name__ == "__main__":
    print("\n".join(main()))
