"""Classic pooling: poolkit's NumPy reference against PyTorch's native CPU kernels.

Usage::

    python benchmarks/core.py [--threads 1 2] [--repeats 7] [--cases SUBSTRING ...] [--json PATH]

For every case, layout and pass (forward, backward, forward+backward) it
prints the median milliseconds of poolkit and of torch, timed interleaved in
one run at the same thread count (torch's intra-op threads, poolkit's
``set_num_threads`` block pool), the ratio poolkit / torch-NCHW (the targets
of the "memory speed" issue are on this ratio) and poolkit / torch in the
same layout, poolkit's effective
GB/s (forward: input read + output written; backward: gradient in +
gradient out), that as a fraction of this machine's copy bandwidth measured
in the same run, and poolkit's peak extra memory (tracemalloc) in units of
input + output.
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
    shape: tuple[int, ...]  # channels-first shape
    kwargs: dict[str, Any]
    torch_fn: str
    torch_args: tuple[Any, ...]
    torch_channels_last: bool  # torch has a channels-last kernel for it


CASES = [
    BenchCase(
        "max_pool2d(3,2,1) resnet-stem",
        "max_pool2d",
        (32, 64, 112, 112),
        dict(kernel_size=3, stride=2, padding=1),
        "max_pool2d",
        (3, 2, 1),
        True,
    ),
    BenchCase(
        "max_pool2d(2,2) vgg",
        "max_pool2d",
        (64, 128, 56, 56),
        dict(kernel_size=2, stride=2),
        "max_pool2d",
        (2, 2),
        True,
    ),
    BenchCase(
        "avg_pool2d(2,2) vgg",
        "avg_pool2d",
        (64, 128, 56, 56),
        dict(kernel_size=2, stride=2),
        "avg_pool2d",
        (2, 2),
        True,
    ),
    BenchCase(
        "avg_pool2d(3,1,1)",
        "avg_pool2d",
        (64, 128, 56, 56),
        dict(kernel_size=3, stride=1, padding=1),
        "avg_pool2d",
        (3, 1, 1),
        True,
    ),
    BenchCase(
        "adaptive_avg_pool2d(1)",
        "adaptive_avg_pool2d",
        (64, 2048, 7, 7),
        dict(output_size=1),
        "adaptive_avg_pool2d",
        (1,),
        True,
    ),
    BenchCase(
        "adaptive_max_pool2d(7)",
        "adaptive_max_pool2d",
        (16, 256, 50, 50),
        dict(output_size=7),
        "adaptive_max_pool2d",
        (7,),
        True,
    ),
    BenchCase(
        "max_pool1d(3,2)",
        "max_pool1d",
        (64, 256, 4096),
        dict(kernel_size=3, stride=2),
        "max_pool1d",
        (3, 2),
        False,
    ),
    BenchCase(
        "max_pool3d(2,2)",
        "max_pool3d",
        (8, 32, 32, 64, 64),
        dict(kernel_size=2, stride=2),
        "max_pool3d",
        (2, 2),
        True,
    ),
]


def _layouts(case: BenchCase) -> list[str]:
    return ["channels_first", "channels_last"] if case.torch_channels_last else ["channels_first"]


def _torch_memory_format(ndim: int) -> Any:
    import torch

    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def run_case(case: BenchCase, layout: str, repeats: int, bandwidth: float) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from poolkit.ops import vjp

    rng = np.random.default_rng(0)
    x_cf = rng.standard_normal(case.shape, dtype=np.float32)
    cl = layout == "channels_last"
    x = np.ascontiguousarray(np.moveaxis(x_cf, 1, -1)) if cl else x_cf
    kw = dict(case.kwargs, data_format=layout)
    y, pullback = vjp(case.op, x, **kw)
    g = rng.standard_normal(y.shape, dtype=np.float32)
    tfn = getattr(F, case.torch_fn)

    def torch_input(channels_last: bool) -> Any:
        t = torch.from_numpy(x_cf)
        return t.contiguous(memory_format=_torch_memory_format(t.ndim)) if channels_last else t

    g_cf = np.ascontiguousarray(np.moveaxis(g, -1, 1)) if cl else g

    def torch_fns(channels_last: bool) -> dict[str, Any]:
        xt = torch_input(channels_last)
        gt = torch.from_numpy(g_cf)
        if channels_last:
            gt = gt.contiguous(memory_format=_torch_memory_format(gt.ndim))
        xr = xt.detach().clone().requires_grad_(True)
        yr = tfn(xr, *case.torch_args)

        def fwd() -> Any:
            with torch.no_grad():
                return tfn(xt, *case.torch_args)

        def bwd() -> Any:
            xr.grad = None
            yr.backward(gt, retain_graph=True)

        def both() -> Any:
            xb = xt.detach().requires_grad_(True)
            tfn(xb, *case.torch_args).backward(gt)
            return xb.grad

        return {"forward": fwd, "backward": bwd, "forward+backward": both}

    ours = {
        "forward": lambda: vjp(case.op, x, **kw)[0],
        "backward": lambda: pullback(g),
        "forward+backward": lambda: vjp(case.op, x, **kw)[1](g),
    }
    theirs_cf = torch_fns(False)
    theirs_same = torch_fns(True) if cl else None
    nx, ny = x.nbytes, y.nbytes
    rows = []
    for pass_name, traffic in (
        ("forward", nx + ny),
        ("backward", ny + nx),
        ("forward+backward", 2 * (nx + ny)),
    ):
        fns = {"poolkit": ours[pass_name], "torch_nchw": theirs_cf[pass_name]}
        if theirs_same is not None:
            fns["torch_same_layout"] = theirs_same[pass_name]
        t = interleaved(fns, repeats)
        t_same = t.get("torch_same_layout", t["torch_nchw"])
        peak = peak_extra_bytes(ours[pass_name])
        rows.append(
            {
                "case": case.name,
                "layout": layout,
                "pass": pass_name,
                "shape": list(x.shape),
                "poolkit_ms": t["poolkit"] * 1e3,
                "torch_nchw_ms": t["torch_nchw"] * 1e3,
                "torch_same_layout_ms": t_same * 1e3,
                "ratio_vs_torch_nchw": t["poolkit"] / t["torch_nchw"],
                "ratio_vs_torch_same_layout": t["poolkit"] / t_same,
                "poolkit_gbps": traffic / t["poolkit"] / 1e9,
                "copy_fraction": traffic / t["poolkit"] / bandwidth,
                "peak_extra_mem_x_io": peak / (nx + ny),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", nargs="*", help="substrings of case names to run")
    ap.add_argument("--layouts", nargs="*", default=["channels_first", "channels_last"])
    ap.add_argument("--json", default="benchmarks/results/core.json")
    args = ap.parse_args(argv)
    import torch

    bandwidth = copy_bandwidth()
    info = machine_info() | {"copy_bandwidth_gbps": bandwidth / 1e9}
    print(
        f"# {info.get('cpu_model', info['machine'])}, numpy {info['numpy']}, torch {info.get('torch')}; "
        f"np.copyto bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)"
    )
    cases = [c for c in CASES if not args.cases or any(s in c.name for s in args.cases)]
    header = (
        f"{'thr':>3s} {'case':31s} {'layout':8s} {'pass':16s} {'poolkit':>8s} {'torch':>8s} {'torchL':>8s} "
        f"{'ratio':>6s} {'ratioL':>6s} {'GB/s':>5s} {'%copy':>6s} {'mem/io':>6s}"
    )
    rows = []
    from poolkit.ops import set_num_threads

    for threads in args.threads:
        torch.set_num_threads(threads)
        set_num_threads(threads)
        print(
            f"\n# torch threads = {threads}; ms are medians; ratio = poolkit / torch NCHW, "
            f"ratioL = poolkit / torch in the same layout"
        )
        print(header)
        for case in cases:
            for layout in _layouts(case):
                if layout not in args.layouts:
                    continue
                for r in run_case(case, layout, args.repeats, bandwidth):
                    r["threads"] = threads
                    rows.append(r)
                    lay = "NHWC" if layout == "channels_last" else "NCHW"
                    print(
                        f"{threads:3d} {r['case']:31s} {lay:8s} {r['pass']:16s} {r['poolkit_ms']:8.1f} "
                        f"{r['torch_nchw_ms']:8.1f} {r['torch_same_layout_ms']:8.1f} "
                        f"{r['ratio_vs_torch_nchw']:6.2f} {r['ratio_vs_torch_same_layout']:6.2f} "
                        f"{r['poolkit_gbps']:5.2f} {100 * r['copy_fraction']:5.1f}% "
                        f"{r['peak_extra_mem_x_io']:6.2f}",
                        flush=True,
                    )
    path = write_json(args.json, {"machine": info, "results": rows})
    print(f"\n# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
