"""poolkit.torch research operators against native max pooling and the papers' reference code.

Usage::

    python benchmarks/torch_ops.py [--threads 1] [--repeats 7] [--ops SUBSTRING ...] [--json PATH]

For each research operator with a torch backend, on a float32 input of
shape ``(64, 128, 56, 56)`` with ``k=2, s=2`` and ``k=3, s=2, p=1``, it times
forward+backward (median of repeats, interleaved in one run at the same
thread count) of poolkit's version, of ``torch.nn.functional.max_pool2d``
on the same input, and of the paper's reference PyTorch formulation where
one exists (SoftPool's ``avg_pool(x e^x) / avg_pool(e^x)``, the common
``unfold`` stochastic pooling, cirtorch's GeM, LIP's ``avg_pool(x e^l) /
avg_pool(e^l)``, antialiased-cnns' depthwise blur). It prints the ratios
(targets: poolkit <= reference, poolkit <= 2x native max), the bytes
autograd saves for the backward and the peak resident memory each
forward+backward adds (gradient included; PyTorch's and NumPy's allocations
alike), in units of the input's size.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _harness import interleaved, machine_info, peak_rss_bytes, release_freed_memory, write_json  # noqa: E402

SHAPE = (64, 128, 56, 56)
WINDOWS = [(2, 2, 0), (3, 2, 1)]


def _saved_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd keeps for the backward while ``fn`` builds its graph."""
    import torch

    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total


def references(k: int, s: int, p: int) -> dict[str, Callable[..., Any]]:
    """The papers' PyTorch formulations, as their authors' or the most copied code writes them."""
    import torch
    import torch.nn.functional as F

    def soft(x: torch.Tensor) -> torch.Tensor:  # alexandrosstergiou/SoftPool, CPU path
        e = torch.exp(x)
        return F.avg_pool2d(x * e, k, s, p) / F.avg_pool2d(e, k, s, p)

    def gem(x: torch.Tensor) -> torch.Tensor:  # filipradenovic/cnnimageretrieval-pytorch, windowed
        return F.avg_pool2d(x.clamp(min=1e-6).pow(3.0), k, s, p).pow(1.0 / 3.0)

    def lip(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:  # sebgao/LIP
        w = logits.exp()
        return F.avg_pool2d(x * w, k, s, p) / F.avg_pool2d(w, k, s, p)

    def stochastic(x: torch.Tensor) -> torch.Tensor:  # the common unfold + multinomial version
        xp = F.pad(x, (p, p, p, p))
        patches = xp.unfold(2, k, s).unfold(3, k, s)
        patches = patches.reshape(*patches.shape[:4], k * k)
        probs = patches.clamp(min=0)
        probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-12)
        flat = probs.reshape(-1, k * k) + 1e-12
        idx = torch.multinomial(flat, 1).reshape(*patches.shape[:4], 1)
        return patches.gather(-1, idx).squeeze(-1)

    def blur(x: torch.Tensor) -> torch.Tensor:  # adobe/antialiased-cnns BlurPool(filt_size=3, stride=2)
        c = x.shape[1]
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = (a[:, None] * a[None, :] / 16).expand(c, 1, 3, 3).contiguous()
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), filt, stride=2, groups=c)

    return {
        "soft_pool": soft,
        "gem_pool": gem,
        "lip_pool": lip,
        "stochastic_pool": stochastic,
        "blur_pool": blur,
    }


def poolkit_calls(k: int, s: int, p: int, x: Any) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    """Each research operator with the window (or its own natural settings), as ``(fn, extra args)``."""
    import torch

    import poolkit.torch.functional as TF
    from poolkit import registry

    c = x.shape[1]
    window = dict(kernel_size=k, stride=s, padding=p)
    calls: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
    for info in registry.operators("research"):
        if "torch" not in info.backends:
            continue
        fn = getattr(TF, f"{info.name}2d", None) or getattr(TF, info.name)
        name = info.name
        extra: tuple[Any, ...] = ()
        kw: dict[str, Any] = dict(window)
        if name == "lip_pool":
            extra = (torch.randn_like(x),)
        elif name == "gated_pool":
            extra = (torch.randn(c, k, k) * 0.1,)
        elif name == "tree_pool":
            extra = (torch.full((2, k, k), 1.0 / (k * k)), torch.zeros(1, k, k))
        elif name == "dpp_pool":
            extra = (torch.full((c,), 0.5), torch.full((c,), 2.0))
        elif name in ("blur_pool",):
            kw = dict(filt_size=3, stride=s)
        elif name == "max_blur_pool":
            kw = dict(kernel_size=k, filt_size=3, stride=s)
        elif name == "spectral_pool":
            kw = dict(output_size=(x.shape[2] // s, x.shape[3] // s))
        elif name == "wavelet_pool":
            kw = {}
        elif name == "s3_pool":
            kw = dict(kernel_size=k, grid_size=2, stride=2)
        elif name == "mixed_pool":
            kw = dict(window, alpha=torch.full((c,), 0.5), mode="channel")
        calls[name] = (_bind(fn, extra, kw), extra)
    return calls


def _measure(
    fn: Callable[[Any], Any],
    ref: Callable[..., Any] | None,
    extra: tuple[Any, ...],
    window: tuple[int, int, int],
    x0: Any,
    repeats: int,
) -> tuple[dict[str, float], int, int | None, dict[str, Callable[[], Any]]]:
    """Interleaved forward+backward medians of poolkit, native max and the reference; saved bytes;
    the forward+backward runs (for :func:`_peaks`, after every timing)."""
    import torch.nn.functional as F

    k, s, p = window

    def fwd_bwd(f: Callable[..., Any]) -> Callable[[], Any]:
        def run() -> Any:  # gradients for x only, the same for every contender
            xs = x0.detach().requires_grad_(True)
            f(xs).sum().backward()
            return xs.grad

        return run

    fns = {"poolkit": fwd_bwd(fn), "max": fwd_bwd(lambda t: F.max_pool2d(t, k, s, p))}
    if ref is not None:
        fns["reference"] = fwd_bwd(_bind(ref, extra, {}))
    times = interleaved(fns, repeats)
    xs = x0.detach().requires_grad_(True)
    saved = _saved_bytes(lambda: fn(xs))
    ref_saved = _saved_bytes(lambda: ref(xs, *extra)) if ref is not None else None
    return times, saved, ref_saved, fns


def _peaks(rows: list[dict[str, Any]], runs: list[dict[str, Callable[[], Any]]], nbytes: int) -> None:
    """Peak resident memory each forward+backward adds (gradient included), measured after every
    timing with freed memory returned to the kernel (which would slow the timed runs)."""
    if not release_freed_memory():
        print("# peak memory: not measured (no glibc mallopt)")
        return
    print("# peak resident memory added by one forward+backward, / input bytes (gradient included)")
    print(f"{'operator':18s} {'window':9s} {'poolkit':>8s} {'max':>8s} {'ref':>8s}")
    for row, fns in zip(rows, runs):
        for who in ("poolkit", "max", "reference"):
            v = peak_rss_bytes(fns[who]) if who in fns else None
            row[f"{who}_peak_x_input"] = None if v is None else v / nbytes
        cells = " ".join(
            f"{row[f'{w}_peak_x_input']:8.2f}" if row.get(f"{w}_peak_x_input") is not None else f"{'-':>8s}"
            for w in ("poolkit", "max", "reference")
        )
        print(f"{row['operator']:18s} {row['window']:9s} {cells}", flush=True)


def _bind(fn: Callable[..., Any], extra: tuple[Any, ...], kw: dict[str, Any]) -> Callable[[Any], Any]:
    return lambda t: fn(t, *extra, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ops", nargs="*", help="substrings of operator names")
    ap.add_argument("--shape", type=int, nargs=4, default=SHAPE)
    ap.add_argument("--json", default="benchmarks/results/torch_ops.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x0 = torch.randn(*args.shape)
    nbytes = x0.numel() * x0.element_size()
    info = machine_info() | {"threads": args.threads, "shape": list(args.shape)}
    print(
        f"# {info.get('cpu_model', info['machine'])}, torch {info.get('torch')}, threads={args.threads}, "
        f"x {tuple(args.shape)} float32; forward+backward medians; saved = autograd-saved bytes / input bytes"
    )
    print(
        f"{'operator':18s} {'window':9s} {'poolkit ms':>10s} {'max ms':>8s} {'ref ms':>8s} "
        f"{'/max':>6s} {'/ref':>6s} {'saved':>6s} {'ref saved':>9s}"
    )
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Callable[[], Any]]] = []
    for k, s, p in WINDOWS:
        refs = references(k, s, p)
        for name, (fn, extra) in poolkit_calls(k, s, p, x0).items():
            if args.ops and not any(o in name for o in args.ops):
                continue

            t, saved, ref_saved, fns = _measure(fn, refs.get(name), extra, (k, s, p), x0, args.repeats)
            runs.append(fns)
            saved /= nbytes
            ref_saved = None if ref_saved is None else ref_saved / nbytes
            row = {
                "operator": name,
                "window": f"k{k}s{s}p{p}",
                "poolkit_ms": t["poolkit"] * 1e3,
                "max_ms": t["max"] * 1e3,
                "reference_ms": t.get("reference", float("nan")) * 1e3,
                "ratio_vs_max": t["poolkit"] / t["max"],
                "ratio_vs_reference": t["poolkit"] / t["reference"] if "reference" in t else None,
                "saved_x_input": saved,
                "reference_saved_x_input": ref_saved,
            }
            rows.append(row)
            ref_ms = f"{row['reference_ms']:8.1f}" if "reference" in t else f"{'-':>8s}"
            ratio_ref = (
                f"{row['ratio_vs_reference']:6.2f}" if row["ratio_vs_reference"] is not None else f"{'-':>6s}"
            )
            ref_sv = f"{ref_saved:9.2f}" if ref_saved is not None else f"{'-':>9s}"
            print(
                f"{name:18s} {row['window']:9s} {row['poolkit_ms']:10.1f} {row['max_ms']:8.1f} {ref_ms} "
                f"{row['ratio_vs_max']:6.2f} {ratio_ref} {saved:6.2f} {ref_sv}",
                flush=True,
            )
    _peaks(rows, runs, nbytes)
    path = write_json(args.json, {"machine": info, "results": rows})
    print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
