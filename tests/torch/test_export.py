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


class Call(torch.nn.Module):
    """``fn(*arrays, **settings)`` as a module: tensors are inputs, settings constants."""

    def __init__(self, name: str, settings: dict, n_inputs: int) -> None:
        super().__init__()
        self.fn = getattr(TF, name)
        self.settings = {
            k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in settings.items()
        }
        self.n_inputs = n_inputs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.fn(*tensors, **self.settings)
        return out[0] if isinstance(out, tuple) else out


def _setup(name: str):
    info = registry.get(name)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    arrays, settings = info.example(x)
    tensors = tuple(torch.as_tensor(a) for a in arrays)
    return Call(name, settings, len(tensors)).eval(), tensors


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
