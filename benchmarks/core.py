"""Classic pooling operators: poolkit's NumPy reference against PyTorch's native CPU kernels.

Usage: python benchmarks/core.py [--threads 1] [--repeats 7] [--cases NAME ...] [--json PATH]

For each case and pass (forward, backward, forward+backward) it prints the
median milliseconds of poolkit and of torch (same thread count, interleaved
in one run), the ratio poolkit / torch (< 1: poolkit faster), effective
GB/s, the fraction of this machine's copy bandwidth measured in the same
run, and poolkit's peak extra memory (tracemalloc) in units of input+output.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import copy_bandwidth, interleaved, machine_info, peak_extra_bytes, write_json  # noqa: E402


@dataclass(frozen=True)
class BenchCase:
    name: str
    op: str  # poolkit operator (alias) name
    shape: tuple[int, ...]
    kwargs: dict[str, Any]
    torch_fn: str
    torch_args: tuple[Any, ...]


CASES = [
    BenchCase(
        "max_pool2d(3,2,1) resnet-stem",
        "max_pool2d",
        (32, 64, 112, 112),
        dict(kernel_size=3, stride=2, padding=1),
        "max_pool2d",
        (3, 2, 1),
    ),
    BenchCase(
        "max_pool2d(2,2) vgg",
        "max_pool2d",
        (64, 128, 56, 56),
        dict(kernel_size=2, stride=2),
        "max_pool2d",
        (2, 2),
    ),
    BenchCase(
        "avg_pool2d(2,2) vgg",
        "avg_pool2d",
        (64, 128, 56, 56),
        dict(kernel_size=2, stride=2),
        "avg_pool2d",
        (2, 2),
    ),
]


def run_case(case: BenchCase, repeats: int, bandwidth: float) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from poolkit.ops import vjp

    rng = np.random.default_rng(0)
    x = rng.standard_normal(case.shape, dtype=np.float32)
    y, pullback = vjp(case.op, x, **case.kwargs)
    g = rng.standard_normal(y.shape, dtype=np.float32)
    xt = torch.from_numpy(x)
    gt = torch.from_numpy(g)
    tfn = getattr(F, case.torch_fn)

    def ours_fwd() -> Any:
        return vjp(case.op, x, **case.kwargs)[0]

    def ours_bwd() -> Any:
        return pullback(g)

    def ours_both() -> Any:
        return vjp(case.op, x, **case.kwargs)[1](g)

    def torch_fwd() -> Any:
        with torch.no_grad():
            return tfn(xt, *case.torch_args)

    xr = xt.clone().requires_grad_(True)
    yr = tfn(xr, *case.torch_args)

    def torch_bwd() -> Any:
        xr.grad = None
        yr.backward(gt, retain_graph=True)

    def torch_both() -> Any:
        xb = xt.detach().requires_grad_(True)
        tfn(xb, *case.torch_args).backward(gt)
        return xb.grad

    nx, ny = x.nbytes, y.nbytes
    rows = []
    for pass_name, ours, theirs, traffic in (
        ("forward", ours_fwd, torch_fwd, nx + ny),
        ("backward", ours_bwd, torch_bwd, ny + nx),
        ("forward+backward", ours_both, torch_both, 2 * (nx + ny)),
    ):
        t = interleaved({"poolkit": ours, "torch": theirs}, repeats)
        peak = peak_extra_bytes(ours)
        rows.append(
            {
                "case": case.name,
                "pass": pass_name,
                "shape": list(case.shape),
                "poolkit_ms": t["poolkit"] * 1e3,
                "torch_ms": t["torch"] * 1e3,
                "ratio": t["poolkit"] / t["torch"],
                "poolkit_gbps": traffic / t["poolkit"] / 1e9,
                "torch_gbps": traffic / t["torch"] / 1e9,
                "copy_fraction": traffic / t["poolkit"] / bandwidth,
                "peak_extra_mem_x_io": peak / (nx + ny),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", nargs="*", help="substrings of case names to run")
    ap.add_argument("--json", default="benchmarks/results/core.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    bandwidth = copy_bandwidth()
    info = machine_info() | {"threads": args.threads, "copy_bandwidth_gbps": bandwidth / 1e9}
    print(
        f"# {info.get('cpu_model', info['machine'])}, numpy {info['numpy']}, torch {info.get('torch')}, "
        f"threads={args.threads}, copy bandwidth {bandwidth / 1e9:.1f} GB/s (read+write)"
    )
    cases = [c for c in CASES if not args.cases or any(s in c.name for s in args.cases)]
    header = f"{'case':32s} {'pass':17s} {'poolkit ms':>10s} {'torch ms':>9s} {'ratio':>6s} {'GB/s':>6s} {'%copy':>6s} {'mem/io':>6s}"
    print(header)
    rows = []
    for case in cases:
        for r in run_case(case, args.repeats, bandwidth):
            rows.append(r)
            print(
                f"{r['case']:32s} {r['pass']:17s} {r['poolkit_ms']:10.1f} {r['torch_ms']:9.1f} {r['ratio']:6.2f} "
                f"{r['poolkit_gbps']:6.2f} {100 * r['copy_fraction']:5.1f}% {r['peak_extra_mem_x_io']:6.2f}",
                flush=True,
            )
    path = write_json(args.json, {"machine": info, "results": rows})
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
