"""swap_pooling on real architectures: torchvision AlexNet, VGG16, ResNet-50 and a timm model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import poolkit.torch as PT
from poolkit.errors import PoolingConfigError

tv = pytest.importorskip("torchvision")


def _check_runs(model: nn.Module, size: int, n_classes: int = 10) -> None:
    x = torch.randn(2, 3, size, size, requires_grad=True)
    y = model(x)
    assert y.shape == (2, n_classes)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "build,size,counts",
    [
        (
            lambda: tv.models.alexnet(weights=None, num_classes=10),
            64,
            {"MaxPool2d": 3, "AdaptiveAvgPool2d": 1},
        ),
        (lambda: tv.models.vgg16(weights=None, num_classes=10), 32, {"MaxPool2d": 5, "AdaptiveAvgPool2d": 1}),
        (
            lambda: tv.models.resnet50(weights=None, num_classes=10),
            64,
            {"MaxPool2d": 1, "AdaptiveAvgPool2d": 1},
        ),
    ],
    ids=["alexnet", "vgg16", "resnet50"],
)
def test_torchvision_models(build, size, counts):
    torch.manual_seed(0)
    model = build()
    new, report = PT.swap_pooling(
        model, {nn.MaxPool2d: PT.MaxPool2d, "adaptive_avg_pool": PT.AdaptiveAvgPool2d}
    )
    assert len(report) == sum(counts.values())
    assert sum("MaxPool2d(" in s.old for s in report) == counts["MaxPool2d"]
    assert not any(type(m) is nn.MaxPool2d for m in new.modules())  # the copy was changed...
    assert any(type(m) is nn.MaxPool2d for m in model.modules())  # ...not the original
    # poolkit's modules are drop-ins: same outputs as the original model.
    model.eval()
    new.eval()
    x = torch.randn(1, 3, size, size)
    torch.testing.assert_close(new(x), model(x))
    _check_runs(new.train(), size)


def test_swap_to_a_different_pooling_keeps_the_output_shape():
    model = tv.models.resnet18(weights=None, num_classes=10)
    new, report = PT.swap_pooling(model, {"max_pool": lambda m: PT.AvgPool2d(3, 2, 1)}, inplace=True)
    assert new is model and len(report) == 1 and report[0].name == "maxpool"
    _check_runs(new, 64)


def test_timm_model():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    new, report = PT.swap_pooling(model, {nn.MaxPool2d: PT.MaxPool2d})
    assert len(report) == 1
    model.eval()
    new.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(new(x), model(x))
    _check_runs(new.train(), 64)


def test_report_and_errors():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Sequential(nn.MaxPool2d(2), nn.ReLU()), nn.AdaptiveAvgPool2d(1)
    )
    new, report = PT.swap_pooling(net, {"MaxPool2d": PT.MaxPool2d(2, padding="same")})
    assert [s.name for s in report] == ["1.0"]
    assert "replaced" in str(report)
    _, none = PT.swap_pooling(net, {nn.AvgPool1d: PT.AvgPool1d})
    assert str(none) == "no pooling module replaced"
    with pytest.raises(PoolingConfigError, match="replace keys must be module classes or operator names"):
        PT.swap_pooling(net, {3: PT.MaxPool2d})
    with pytest.raises(PoolingConfigError, match="returned int, not an nn.Module"):
        PT.swap_pooling(net, {nn.MaxPool2d: lambda m: 3})
    with pytest.raises(PoolingConfigError, match="no poolkit module implements 'nope'"):
        PT.swap_pooling(net, {nn.MaxPool2d: "nope"})
    with pytest.raises(PoolingConfigError, match="replace must be a non-empty mapping"):
        PT.swap_pooling(net, {})
