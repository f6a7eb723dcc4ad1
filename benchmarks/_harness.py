"""Benchmark plumbing: interleaved timing, medians, machine info, JSON output.

Timing never goes into a pass/fail test; these scripts print ratios against
a baseline measured in the same run.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    import numpy as np

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or "",
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run in turn so drift hits all alike.

    The order rotates from one repeat to the next, so no function always runs right after the
    same other one (a contender that frees a lot of memory leaves the next one to fault it in).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_extra_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes NumPy allocates while ``fn`` runs (tracemalloc), results included."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - base


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def release_freed_memory() -> bool:
    """Make glibc return every large block to the kernel when it is freed (a fixed 64 KiB mmap
    threshold; by default it keeps freed blocks of up to 32 MiB for reuse, which the resident set
    then hides). Process-wide and permanent: call it after the timings. False where unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = bool(libc.mallopt(m_mmap_threshold, 1 << 16)) and bool(libc.mallopt(m_trim_threshold, 1 << 16))
    _TRIM.append(libc.malloc_trim)  # free blocks already in the heap: given back before each peak
    return ok


_TRIM: list[Callable[[int], int]] = []


def peak_rss_bytes(fn: Callable[[], Any]) -> int | None:
    """Peak resident memory ``fn`` adds while it runs (Linux: the high-water mark is reset through
    ``/proc/self/clear_refs``), whichever allocator it uses (PyTorch's, NumPy's), results included.
    Exact after :func:`release_freed_memory`. None where the kernel does not offer the reset."""
    gc.collect()
    for trim in _TRIM:
        trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_bytes("VmRSS")
    except (OSError, KeyError):
        return None
    result = fn()
    peak = _status_bytes("VmHWM")
    del result
    return peak - base


def copy_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes per second of ``np.copyto`` (read + write counted), this machine, this run."""
    import numpy as np

    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_time(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * nbytes / best


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path
