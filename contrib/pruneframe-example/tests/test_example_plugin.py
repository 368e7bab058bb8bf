"""The example plugin prunes CustomizedLayer with its neighbours, loaded into a private registry."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruneframe
from pruneframe.registry import Registry, build_registry
from pruneframe_example import CustomizedLayer
from pruneframe_example import plugin as example_plugin
from pruneframe_example.plugin import CustomizedLayerPruner


class Net(nn.Module):
    """The reference example's network: Linear -> relu -> CustomizedLayer -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(128, 256)
        self.customized_layer = CustomizedLayer(256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.customized_layer(F.relu(self.fc1(x))))


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The installed plugins plus this checkout's example plugin (an installed copy is disabled, so it is not loaded twice)."""
    monkeypatch.setenv("PRUNEFRAME_DISABLE_PLUGINS", "example")
    return build_registry(extra_plugins=[("example", example_plugin)])


def test_layer_starts_as_normalise_then_linear() -> None:
    layer = CustomizedLayer(6)
    assert torch.equal(layer.scale.data, torch.ones(6)) and torch.equal(layer.bias.data, torch.zeros(6))
    x = torch.randn(3, 6)
    expected = layer.fc(x / x.norm(dim=1, keepdim=True))
    torch.testing.assert_close(layer(x), expected)
    assert repr(layer).startswith("CustomizedLayer(\n  in_dim=6")


def test_layer_rejects_a_bad_width() -> None:
    with pytest.raises(ValueError, match="in_dim"):
        CustomizedLayer(0)


def test_plugin_registers_the_pruner_and_functional_names(registry: Registry) -> None:
    assert isinstance(registry.layer_pruner(CustomizedLayer), CustomizedLayerPruner)
    info = next(p for p in registry.describe() if p["name"] == "example")
    assert info["hooks"] == ["pruneframe_layer_pruners"]
    assert info["module_types"] == ["pruneframe_example.layer.CustomizedLayer"]
    assert info["functions"] == ["prune_customized_layer_in_channels", "prune_customized_layer_out_channels"]


def test_graph_prunes_the_layer_with_its_neighbours(registry: Registry) -> None:
    torch.manual_seed(0)
    model = Net()
    layer = model.customized_layer
    with torch.no_grad():  # distinct values, so a wrong slice shows
        layer.scale.copy_(torch.randn(256))
        layer.bias.copy_(torch.randn(256))
    before = {name: t.detach().clone() for name, t in layer.state_dict().items()}
    DG = pruneframe.DependencyGraph(registry=registry).build_dependency(model, example_inputs=torch.randn(1, 128))
    group = DG.get_pruning_group(model.fc1, pruneframe.prune_linear_out_channels, idxs=[0, 1, 6])
    assert {dep.target.name: idxs for dep, idxs in group} == {"fc1": [0, 1, 6], "customized_layer": [0, 1, 6], "fc2": [0, 1, 6]}
    assert DG.check_pruning_group(group)
    group.prune()

    keep = torch.tensor([i for i in range(256) if i not in (0, 1, 6)])
    assert layer.in_dim == layer.fc.in_features == layer.fc.out_features == 253
    assert torch.equal(layer.scale.data, before["scale"][keep])
    assert torch.equal(layer.bias.data, before["bias"][keep])
    assert torch.equal(layer.fc.weight.data, before["fc.weight"][keep][:, keep])
    assert torch.equal(layer.fc.bias.data, before["fc.bias"][keep])
    assert model.fc1.out_features == 253 and model.fc2.in_features == 253
    assert model(torch.randn(2, 128)).shape == (2, 10)


@pytest.mark.parametrize("kind", ["out", "in"])
def test_the_layer_can_be_the_root_of_a_group(registry: Registry, kind: str) -> None:
    model = Net()
    DG = pruneframe.DependencyGraph(registry=registry).build_dependency(model, example_inputs=torch.randn(1, 128))
    trigger = registry.functional(f"prune_customized_layer_{kind}_channels")
    group = DG.get_pruning_group(model.customized_layer, trigger, idxs=[3, 250])
    assert {dep.target.name for dep, _ in group} == {"fc1", "customized_layer", "fc2"}
    group.prune()
    assert model.customized_layer.in_dim == 254 and model.fc1.out_features == 254 and model.fc2.in_features == 254
    assert model(torch.randn(1, 128)).shape == (1, 10)


def test_bad_indices_are_refused_by_name() -> None:
    layer = CustomizedLayer(4)
    with pytest.raises(IndexError, match=r"\[4\]"):
        CustomizedLayerPruner().prune_out_channels(layer, [1, 4])
    with pytest.raises(ValueError, match=r"\[2\]"):
        CustomizedLayerPruner().prune_out_channels(layer, [2, 2])
    assert layer.in_dim == 4 and layer.fc.weight.shape == (4, 4)
