"""The contrib ``pruneframe-example`` distribution, once pip-installed, is found and used with no registration call.

The distribution is installed offline into a temporary ``--target`` folder and
used from subprocesses that put that folder on ``PYTHONPATH``: this process and
the shared virtualenv never see it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from contrib_support import install_offline, run_python, run_readme_example

if sys.version_info >= (3, 12):
    import importlib.metadata as importlib_metadata
else:  # the same backport pruneframe's plugin manager reads metadata with
    import importlib_metadata

pytestmark = pytest.mark.slow

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "pruneframe-example"

PRUNE_SCRIPT = r"""
import json

import torch
import torch.nn.functional as F
from torch import nn

import pruneframe as tp
from pruneframe_example import CustomizedLayer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(128, 256)
        self.customized_layer = CustomizedLayer(256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc2(self.customized_layer(F.relu(self.fc1(x))))


torch.manual_seed(0)
model = Net()
layer = model.customized_layer
with torch.no_grad():  # distinct per-channel values, so a wrong slice shows
    layer.scale.copy_(torch.randn(256))
    layer.bias.copy_(torch.randn(256))
before = {name: t.detach().clone() for name, t in layer.state_dict().items()}

DG = tp.DependencyGraph()  # no register_customized_layer: the installed plugin serves CustomizedLayer
DG.build_dependency(model, example_inputs=torch.randn(1, 128))
pruner = DG.get_pruner_of_module(layer)
group = DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[0, 1, 6])
members = {dep.target.name: idxs for dep, idxs in group}
prunable = DG.check_pruning_group(group)
group.prune()

keep = torch.tensor([i for i in range(256) if i not in (0, 1, 6)])
print(json.dumps({
    "pruner": type(pruner).__module__ + "." + type(pruner).__qualname__,
    "pruner_plugin": tp.get_registry().layer_pruner_entry(pruner).plugin,
    "members": members,
    "prunable": prunable,
    "fc1_out": model.fc1.out_features,
    "in_dim": layer.in_dim,
    "inner_fc": [layer.fc.in_features, layer.fc.out_features, list(layer.fc.weight.shape)],
    "fc2_in": model.fc2.in_features,
    "kept_values": all(torch.equal(a, b) for a, b in [
        (layer.scale.data, before["scale"][keep]),
        (layer.bias.data, before["bias"][keep]),
        (layer.fc.weight.data, before["fc.weight"][keep][:, keep]),
        (layer.fc.bias.data, before["fc.bias"][keep]),
    ]),
    "output_shape": list(model(torch.randn(1, 128)).shape),
    "functional": "prune_customized_layer_out_channels" in dir(tp),
}))
"""


def _plugins(cwd: Path, pythonpath: Path | None) -> dict[str, dict[str, Any]]:
    listed = json.loads(run_python(["-m", "pruneframe", "plugins"], cwd, pythonpath).stdout)
    return {entry["name"]: entry for entry in listed}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contrib distribution, pip-installed offline into a fresh ``--target`` folder."""
    return install_offline(CONTRIB, tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site"))


def test_install_adds_only_the_package_and_its_metadata(installed: Path) -> None:
    assert sorted(p.name for p in installed.iterdir()) == ["pruneframe_example", "pruneframe_example-0.1.0.dist-info"]
    dist_info = installed / "pruneframe_example-0.1.0.dist-info"
    assert (dist_info / "entry_points.txt").read_text().split() == ["[pruneframe.plugins]", "example", "=", "pruneframe_example.plugin"]
    metadata = (dist_info / "METADATA").read_text()
    assert "Name: pruneframe-example" in metadata and "Requires-Python: >=3.10" in metadata
    assert "Requires-Dist: pruneframe" in metadata and "Requires-Dist: torch>=2.1" in metadata
    assert (installed / "pruneframe_example" / "py.typed").exists()


def test_cli_lists_the_installed_plugin(installed: Path, tmp_path: Path) -> None:
    plugins = _plugins(tmp_path, installed)
    example = plugins["example"]
    assert example["distribution"] == "pruneframe-example"
    assert example["version"] == "0.1.0"
    assert example["module"] == "pruneframe_example.plugin"
    assert example["builtin"] is False
    assert example["hooks"] == ["pruneframe_layer_pruners"]
    assert example["module_types"] == ["pruneframe_example.layer.CustomizedLayer"]
    assert example["functions"] == ["prune_customized_layer_in_channels", "prune_customized_layer_out_channels"]
    assert example["ops"] == []
    assert plugins["linear"]["distribution"] == "pruneframe", "the built-ins still load beside it"


def test_graph_prunes_the_layer_without_registration(installed: Path, tmp_path: Path) -> None:
    out = json.loads(run_python(["-c", PRUNE_SCRIPT], tmp_path, installed).stdout.strip().splitlines()[-1])
    assert out["pruner"] == "pruneframe_example.plugin.CustomizedLayerPruner"
    assert out["pruner_plugin"] == "example"
    assert out["members"] == {"fc1": [0, 1, 6], "customized_layer": [0, 1, 6], "fc2": [0, 1, 6]}
    assert out["prunable"] is True
    assert (out["fc1_out"], out["in_dim"], out["fc2_in"]) == (253, 253, 253)
    assert out["inner_fc"] == [253, 253, [253, 253]]
    assert out["kept_values"] is True
    assert out["output_shape"] == [1, 10]
    assert out["functional"] is True


def test_plugin_is_absent_when_not_installed(tmp_path: Path) -> None:
    try:
        where = importlib_metadata.distribution("pruneframe-example").locate_file("")
    except importlib_metadata.PackageNotFoundError:
        pass
    else:
        pytest.skip(f"pruneframe-example is installed in this environment ({where}); its absence cannot be shown")
    plugins = _plugins(tmp_path, None)
    assert "example" not in plugins
    assert not any(entry["distribution"] == "pruneframe-example" for entry in plugins.values())
    assert "linear" in plugins


def test_readme_example_runs(installed: Path, tmp_path: Path) -> None:
    result = run_readme_example(CONTRIB, installed, tmp_path)
    assert "customized_layer" in result.stdout  # the printed group names the plugin-served layer
