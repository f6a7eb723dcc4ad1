"""A slow, loop-based reference for sliding-window pooling (a test oracle).

Written from the rules in ANCHORS.md §b1-b3 independently of
``poolkit.geometry`` and the strided engine: output sizes from the formula,
windows enumerated tap by tap.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def out_size(n: int, k: int, s: int, lo: int, hi: int, d: int, ceil: bool) -> int:
    span = d * (k - 1) + 1
    num = n + lo + hi - span + (s - 1 if ceil else 0)
    out = math.floor(num / s) + 1
    if ceil and (out - 1) * s >= n + lo:
        out -= 1
    return out


def naive_pool(
    x: np.ndarray,
    kind: str,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    dilation: tuple[int, ...],
    ceil: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    p: float = 2.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Channels-first ``x``; returns values and (for max) per-plane flat indices."""
    n, c, *sp = x.shape
    nd = len(sp)
    outs = [out_size(sp[i], kernel[i], stride[i], *pads[i], dilation[i], ceil) for i in range(nd)]
    y = np.zeros((n, c, *outs), dtype=np.float64)
    idx = np.zeros((n, c, *outs), dtype=np.int64) if kind == "max" else None
    for o in itertools.product(*[range(v) for v in outs]):
        taps_valid, taps_padded = [], 0
        for k in itertools.product(*[range(v) for v in kernel]):
            coord = tuple(o[i] * stride[i] - pads[i][0] + k[i] * dilation[i] for i in range(nd))
            inside = all(0 <= coord[i] < sp[i] for i in range(nd))
            in_pad = all(-pads[i][0] <= coord[i] < sp[i] + pads[i][1] for i in range(nd))
            taps_padded += in_pad
            if inside:
                taps_valid.append(coord)
        for b, ch in itertools.product(range(n), range(c)):
            vals = [x[(b, ch, *t)] for t in taps_valid]
            if kind == "max":
                best, best_i = -np.inf, None
                for t, v in zip(taps_valid, vals):
                    if v > best or np.isnan(v):
                        best, best_i = v, t
                y[(b, ch, *o)] = best
                if best_i is not None:
                    idx[(b, ch, *o)] = np.ravel_multi_index(best_i, sp)
            elif kind == "avg":
                total = float(np.sum(vals)) if vals else 0.0
                div = divisor_override or (taps_padded if count_include_pad else len(taps_valid))
                y[(b, ch, *o)] = total / div if div else 0.0
            elif kind == "lp":
                if math.isinf(p):
                    y[(b, ch, *o)] = max(abs(v) for v in vals)
                else:
                    y[(b, ch, *o)] = sum(abs(v) ** p for v in vals) ** (1.0 / p)
    return y, idx
