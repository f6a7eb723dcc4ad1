"""torch.compile(fullgraph=True), torch.export and ONNX (run in onnxruntime) for every torch operator."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import poolkit.torch as PT
import poolkit.torch.functional as TF
from poolkit import registry

from torch_helpers import torch_ops

OPS = [i.name for i in torch_ops()]
DETERMINISTIC = [i.name for i in torch_ops() if not i.stochastic or i.name == "fractional_max_pool"]


def _is_arrays(a) -> bool:
    return isinstance(a, np.ndarray) or (
        isinstance(a, (list, tuple)) and bool(a) and all(isinstance(v, np.ndarray) for v in a)
    )


class Call(torch.nn.Module):
    """``fn(*arrays, **settings)`` as a module: tensors (flattened lists of them) are inputs; settings and
    non-array arguments (such as image sizes) are constants."""

    def __init__(self, name: str, settings: dict, arrays: tuple) -> None:
        super().__init__()
        self.fn = getattr(TF, name)
        self.settings = {
            k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in settings.items()
        }
        # per positional argument: an ndarray (1 input), a list of n arrays (n inputs), or a constant
        self.layout = [
            ("tensor", 1)
            if isinstance(a, np.ndarray)
            else ("list", len(a))
            if _is_arrays(a)
            else ("const", a)
            for a in arrays
        ]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        args, i = [], 0
        for kind, v in self.layout:
            if kind == "const":
                args.append(v)
            elif kind == "tensor":
                args.append(tensors[i])
                i += 1
            else:
                args.append(list(tensors[i : i + v]))
                i += v
        out = self.fn(*args, **self.settings)
        return out[0] if isinstance(out, tuple) else out


def _setup(name: str):
    info = registry.get(name)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    arrays, settings = info.example(x)
    tensors = []
    for a in arrays:
        if isinstance(a, np.ndarray):
            tensors.append(torch.as_tensor(a))
        elif _is_arrays(a):
            tensors.extend(torch.as_tensor(v) for v in a)
    return Call(name, settings, arrays).eval(), tuple(tensors)


@pytest.mark.parametrize("name", OPS)
def test_compile_fullgraph(name):
    torch._dynamo.reset()  # every case compiles the same Call.forward: stay under the recompile limit
    module, inputs = _setup(name)
    expected = module(*inputs)
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OPS)
def test_torch_export(name):
    module, inputs = _setup(name)
    program = torch.export.export(module, inputs)
    torch.testing.assert_close(program.module()(*inputs), module(*inputs), rtol=1e-6, atol=1e-6)


def _onnx_run(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], dynamo: bool) -> np.ndarray:
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            data = torch.onnx.export(
                module, inputs, dynamo=True, verbose=False
            ).model_proto.SerializeToString()
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, inputs, buf, dynamo=False, opset_version=18)
            data = buf.getvalue()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_onnx_export_runs_in_onnxruntime(name):
    module, inputs = _setup(name)
    np.testing.assert_allclose(
        _onnx_run(module, inputs, dynamo=True), module(*inputs).numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-exporter", "torchscript-exporter"])
@pytest.mark.parametrize(
    "module",
    [
        PT.AdaptiveAvgPool2d(6),
        PT.AdaptiveMaxPool2d((5, 3)),
        PT.AdaptiveAvgPool2d((1, 2)),
        PT.AdaptiveMaxPool2d(4),
    ],
    ids=["avg-13to6", "max-13to5x3", "avg-13to1x2", "max-13to4"],
)
def test_adaptive_pooling_exports_for_sizes_that_do_not_divide(module, dynamo):
    x = torch.randn(2, 3, 13, 13)
    np.testing.assert_allclose(_onnx_run(module, (x,), dynamo), module(x).numpy(), rtol=1e-5, atol=1e-6)


def test_native_adaptive_pooling_does_not_export_there():
    # What poolkit fixes: pytorch#42653, #64806 (legacy exporter), and max under the dynamo exporter.
    x = torch.randn(1, 3, 13, 13)
    with pytest.raises(Exception, match="not factor of input size"):
        _onnx_run(torch.nn.AdaptiveAvgPool2d(6), (x,), dynamo=False)
    with pytest.raises(Exception):  # noqa: B017 - the exporter's own error types vary across versions
        _onnx_run(torch.nn.AdaptiveMaxPool2d((5, 3)), (x,), dynamo=True)
