"""``benchmarks/torch_ops.py`` runs end to end on a small input and reports every column."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "torch_ops.py"


def test_torch_ops_benchmark_reports_ratios_and_memory(tmp_path, capsys):
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("torch_ops_bench", BENCH)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out = tmp_path / "r.json"
        assert (
            mod.main(
                [
                    "--repeats",
                    "1",
                    "--ops",
                    "soft_pool",
                    "gated",
                    "--shape",
                    "2",
                    "3",
                    "12",
                    "12",
                    "--json",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        sys.path.remove(str(BENCH.parent))
    rows = json.loads(out.read_text())["results"]
    assert {r["operator"] for r in rows} == {"soft_pool", "gated_pool"} and len(rows) == 4
    for r in rows:
        assert r["ratio_vs_max"] > 0 and r["saved_x_input"] > 0
        assert "poolkit_peak_x_input" in r and "max_peak_x_input" in r
    soft = [r for r in rows if r["operator"] == "soft_pool"]
    assert all(r["ratio_vs_reference"] > 0 and "reference_peak_x_input" in r for r in soft)
    assert "peak" in capsys.readouterr().out  # the second table
