"""The registry and the ``poolkit`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import poolkit.ops as ops
from poolkit import registry
from poolkit.cli import main
from poolkit.errors import PoolingConfigError


def test_every_operator_is_registered_once_with_its_aliases():
    infos = registry.operators()
    names = [i.name for i in infos]
    assert len(names) == len(set(names))
    assert {
        "max_pool",
        "avg_pool",
        "lp_pool",
        "adaptive_max_pool",
        "adaptive_avg_pool",
        "global_max_pool",
        "global_avg_pool",
        "fractional_max_pool",
        "max_unpool",
    } <= set(names)
    for info in infos:
        assert getattr(ops, info.name) is info.function
        assert info.summary
        assert "numpy" in info.backends
        for alias in info.aliases:
            assert registry.get(alias) is info
            assert callable(getattr(ops, alias))


def test_resolve_fixes_rank_for_aliases():
    info, nd = registry.resolve("max_pool2d")
    assert info.name == "max_pool" and nd == 2
    assert registry.resolve(ops.avg_pool3d)[1] == 3
    assert registry.resolve("lp_pool")[1] is None
    with pytest.raises(PoolingConfigError, match="unknown operator"):
        registry.get("median_pool_typo")


def test_params_come_from_signatures():
    info = registry.get("avg_pool")
    assert info.params["count_include_pad"] is True
    assert info.params["divisor_override"] is None
    assert info.arrays == ("x",)
    assert registry.get("max_unpool").arrays == ("x", "indices")


def test_every_operator_has_an_example_and_a_working_vjp():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    for info in registry.operators():
        assert info.example is not None, f"{info.name} registers no example call"
        arrays, settings = info.example(x)
        out, pullback = ops.vjp(info.name, *arrays, **settings)
        y = out[0] if isinstance(out, tuple) else out
        grads = pullback(np.ones_like(y))
        assert set(grads) == set(info.differentiable), info.name
        for name, gval in grads.items():
            for part in gval if isinstance(gval, list) else [gval]:  # e.g. one gradient per feature map
                assert np.all(np.isfinite(part)), (info.name, name)


def test_cli_ops_table_and_json(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    for info in registry.operators():
        assert info.name in out
    assert main(["ops", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in data} == {i.name for i in registry.operators()}
    assert all(d["backends"][0] == "numpy" for d in data)


def test_cli_shape(capsys):
    assert main(["shape", "--input-size", "112", "112", "-k", "3", "-s", "2", "-p", "1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["output_size"] == [56, 56] and d["padding"] == [[1, 1], [1, 1]]
    assert main(["shape", "--input-size", "7", "8", "-k", "3", "-s", "2", "-p", "same", "--compact"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["padding"] == [[1, 1], [0, 1]] and d["padding_mode"] == "same"
    assert main(["shape", "--input-size", "7", "-k", "3", "-p", "0:1"]) == 0
    assert json.loads(capsys.readouterr().out)["padding"] == [[0, 1]]
    assert main(["shape", "--input-size", "5", "-k", "2", "-s", "2", "-p", "1", "--ceil-mode"]) == 0
    assert json.loads(capsys.readouterr().out)["output_size"] == [3]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["shape", "--input-size", "5", "-k", "9"], "window does not fit the input"),
        (["shape", "--input-size", "5", "-k", "x"], "--kernel-size takes integers, got 'x'"),
        (["shape", "-k", "2"], "the following arguments are required: --input-size"),
        (["shape", "--input-size", "5", "-k", "2", "-p", "2"], "more than half of kernel_size=2"),
        (["nope"], "invalid choice"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(argv, message):
    proc = subprocess.run([sys.executable, "-m", "poolkit.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0]
    assert proc.stdout == ""
