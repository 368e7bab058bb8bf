"""The registry: hooks run through pluggy's relay (so ordering means precedence), and framework plugins load lazily."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pruneframe
from pruneframe.registry import PluginSet, build_registry

from conftest import FakeDistributions, subprocess_env


@pytest.fixture(autouse=True)
def _no_plugin_selection(no_plugin_selection: None) -> None:
    """Every test here starts from "load everything, leniently"."""


LINEAR_PRUNER_SOURCE = """
    from torch import nn

    import pruneframe
    from pruneframe.plugins.linear import LinearPruner


    class {cls}(LinearPruner):
        pass


    @pruneframe.hookimpl{options}
    def pruneframe_layer_pruners(register):
        register({cls}(), [nn.Linear])
"""


def _linear_plugin(fake_dist: FakeDistributions, name: str, cls: str, options: str = "") -> None:
    fake_dist(f"{name}-dist", name, f"{name}_mod", LINEAR_PRUNER_SOURCE.format(cls=cls, options=options))


def test_tryfirst_outranks_a_plugin_registered_later(fake_dist: FakeDistributions) -> None:
    # pluggy runs the last-registered ordinary implementation first; tryfirst puts one before all of them
    _linear_plugin(fake_dist, "aaa_first", "FirstPruner", "(tryfirst=True)")
    _linear_plugin(fake_dist, "zzz_plain", "PlainPruner")
    registry = build_registry()
    assert type(registry.layer_pruner(nn.Linear)).__name__ == "FirstPruner"
    assert registry.layer_pruner_entry(registry.layer_pruner(nn.Linear)).plugin == "aaa_first"


def test_a_trylast_third_party_pruner_is_a_fallback_below_the_builtins(fake_dist: FakeDistributions) -> None:
    """Built-ins are trylast and registered first; pluggy runs a trylast implementation registered later after them."""
    _linear_plugin(fake_dist, "fallback", "FallbackPruner", "(trylast=True)")
    _linear_plugin(fake_dist, "plain", "PlainPruner")
    registry = build_registry()
    order = [e.plugin for e in registry.layer_pruners if nn.Linear in e.module_types]
    assert order == ["plain", "linear", "fallback"]  # the order the relay called them in is the precedence
    assert type(registry.layer_pruner(nn.Linear)).__name__ == "PlainPruner"


def test_a_hook_wrapper_runs_around_every_implementation(fake_dist: FakeDistributions) -> None:
    """Wrappers mean what pluggy documents: this one sees the hook before and after every plugin registered."""
    fake_dist("wrapping-dist", "wrapping", "wrapping_mod", """
        import pruneframe

        seen = []

        @pruneframe.hookimpl(wrapper=True)
        def pruneframe_layer_pruners(register):
            seen.append("before")
            result = yield
            seen.append("after")
            return result
    """)
    registry = build_registry()
    assert sys.modules["wrapping_mod"].seen == ["before", "after"]
    assert registry.layer_pruner(nn.Conv2d) is not None  # the implementations it wrapped all ran
    assert "wrapping" in {p.name for p in registry.plugins}


FRAMEWORK_PLUGIN_SOURCE = """
    from torch import nn

    import pruneframe
    from pruneframe.plugins.linear import LinearPruner


    class FrameworkLinear(nn.Linear):
        pass


    FrameworkLinear.__module__ = "fake_framework_xyz.layers"


    @pruneframe.hookimpl
    def pruneframe_layer_pruners(register):
        register(LinearPruner(), [FrameworkLinear], name="framework_linear")
"""


def test_a_framework_plugin_is_imported_only_once_its_framework_is_in_use(fake_dist: FakeDistributions) -> None:
    fake_dist("framework-dist", "framework_plugin", "framework_plugin_mod", FRAMEWORK_PLUGIN_SOURCE,
              frameworks="fake_framework_xyz")
    plugins = PluginSet(lazy=True)
    registry = plugins.registry()
    assert "framework_plugin" not in {p.name for p in registry.plugins}
    assert "framework_plugin_mod" not in sys.modules, "a plugin whose framework is not in use must not even be imported"
    assert registry.functional("prune_framework_linear_out_channels") is None

    class Model(nn.Module):  # holds a class of the framework: its plugin joins
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)

    model = Model()
    type(model.fc).__module__  # an ordinary Linear: still not in use
    assert "framework_plugin" not in {p.name for p in plugins.registry(model).plugins}
    Model.__module__ = "fake_framework_xyz.models"
    registry = plugins.registry(model)
    assert "framework_plugin" in {p.name for p in registry.plugins}
    assert registry.functional("prune_framework_linear_out_channels") is not None
    # loading everything (build_registry, ``pruneframe plugins``) includes it whatever is in use
    assert "framework_plugin" in {p.name for p in build_registry().plugins}


def test_a_torchvision_prune_imports_neither_transformers_nor_timm(tmp_path: Path) -> None:
    """Even with their plugins installed (declared as framework plugins), a torchvision graph imports neither."""
    site = tmp_path / "site"
    for dist, name, framework in (("pruneframe-transformers", "transformers", "transformers"), ("pruneframe-timm", "timm", "timm")):
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[pruneframe.plugins]\n{name} = fake_{name}_plugin\n\n"
                                               f"[pruneframe.frameworks]\n{name} = {framework}\n")
        (site / f"fake_{name}_plugin.py").write_text(f"import {framework}\n")  # as the real ones do
    script = (
        "import json, sys, torch, torchvision, pruneframe as tp\n"
        "model = torchvision.models.resnet18(weights=None)\n"
        "DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 64, 64))\n"
        "loaded = sorted(p.name for p in DG.registry.plugins)\n"
        "print(json.dumps([loaded, 'transformers' in sys.modules, 'timm' in sys.modules]))\n"
    )
    env = subprocess_env(PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded, transformers_imported, timm_imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert "torchvision_models" in loaded and "transformers" not in loaded and "timm" not in loaded
    assert not transformers_imported and not timm_imported
    # pruneframe plugins lists them all the same (here they fail to register: they have no hooks; that is listed)
    listed = subprocess.run([sys.executable, "-m", "pruneframe", "plugins"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert {"transformers", "timm", "torchvision_models"} <= {p["name"] for p in json.loads(listed.stdout)}


def test_pruneframe_plugins_names_a_plugin_that_failed_to_import(fake_dist: FakeDistributions, tmp_path: Path) -> None:
    fake_dist("broken-dist", "broken", "broken_mod", "raise ImportError('needs nonexistent_dependency')\n")
    listed = subprocess.run([sys.executable, "-m", "pruneframe", "plugins"], cwd=tmp_path,
                            env=subprocess_env(PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    broken = next(p for p in json.loads(listed.stdout) if p["name"] == "broken")
    assert broken["distribution"] == "broken-dist" and "nonexistent_dependency" in broken["error"]


def test_a_prune_through_the_process_registry_still_works_after_a_framework_plugin_joins() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    DG = pruneframe.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 4))
    DG.get_pruning_group(model[0], pruneframe.prune_linear_out_channels, idxs=[1, 2]).prune()
    assert model[0].out_features == 6 and model(torch.randn(1, 4)).shape == (1, 2)
