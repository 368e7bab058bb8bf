"""A representative subset of torchvision, pruned 30% per group: exact where checkable, runnable everywhere.

The whole zoo is `python benchmarks/torchvision_sweep.py --kind all` (see docs/torchvision-sweep.md);
this subset covers every coupling pattern it contains and runs in CI.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

torchvision = pytest.importorskip("torchvision")

_spec = importlib.util.spec_from_file_location("torchvision_sweep", Path(__file__).resolve().parents[1] / "benchmarks" / "torchvision_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

EXACT = [
    "resnet18",             # residual adds
    "resnext50_32x4d",      # grouped convolutions
    "densenet121",          # concatenation everywhere
    "googlenet",            # inception branches
    "mobilenet_v3_small",   # depthwise convs, squeeze-excite, hardswish
    "shufflenet_v2_x0_5",   # chunk, concat, channel shuffle
    "squeezenet1_1",        # fire modules
    "efficientnet_b0",      # SE with SiLU, stochastic depth
    "regnet_x_400mf",       # grouped bottlenecks
    "mnasnet0_5",
]
RUNNABLE = ["vit_b_32", "swin_t", "convnext_tiny", "maxvit_t"]  # normalisation crosses the pruned channels


@pytest.mark.parametrize("name", EXACT)
def test_exact_families_equal_the_masked_original(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sweep.check_classification(name)
    assert result["error"] is not None and result["error"] < 1e-9, result
    assert result["after"] < 0.8 * result["before"] and result["groups"] > 0


@pytest.mark.parametrize("name", RUNNABLE)
def test_transformers_and_convnext_prune_and_run(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sweep.check_classification(name)  # forward, backward and output shapes are asserted inside
    assert result["after"] < result["before"] and result["groups"] > 0


def test_vit_keeps_its_hidden_size_attribute_in_step() -> None:
    import torch

    import pruneframe as tp
    from pruneframe.testing import prune_random

    model = torchvision.models.vit_b_32(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = tp.DependencyGraph().build_dependency(model, x)
    prune_random(0.25, seed=0, ignored_layers=lambda m: [m.heads.head])(graph, model)
    assert model.hidden_dim == model.conv_proj.out_channels < 768
    assert model.encoder.layers[0].self_attention.embed_dim == model.hidden_dim
    assert model(x).shape == (1, 1000)


@pytest.mark.parametrize("name, kind", [("lraspp_mobilenet_v3_large", "segmentation"), ("ssdlite320_mobilenet_v3_large", "detection")])
def test_segmentation_and_detection_prune_and_run(name: str, kind: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sweep.check_detection_or_segmentation(name, kind)
    assert result["groups"] > 0 and result["after"] < result["before"]
