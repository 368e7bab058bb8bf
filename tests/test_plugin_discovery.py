"""Plugins are found through the ``pruneframe.plugins`` entry-point group, and a bad one never takes the rest down.

Fake third-party distributions are written into ``tmp_path`` (a ``*.dist-info``
folder and a module) and put on ``sys.path``; every test that loads them builds
its own registry with ``build_registry()`` and passes it to
``DependencyGraph(registry=...)``, so the process-wide registry never sees them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy
import pytest
import torch
import torchvision  # noqa: F401 - in use, so the torchvision plugin (loaded only then) is part of the registry
from torch import nn

import pruneframe
from pruneframe import PluginLoadError, PluginLoadWarning
from pruneframe.registry import ENTRY_POINT_GROUP, ENV_STRICT, Registry, build_registry

from conftest import FakeDistributions, subprocess_env

if sys.version_info >= (3, 12):
    from importlib.metadata import entry_points
else:  # the same backport the plugin manager reads entry points with
    from importlib_metadata import entry_points

LAYER_PLUGINS: dict[str, list[type]] = {
    "conv": [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d],
    "linear": [nn.Linear],
    "batchnorm": [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm],
    "layernorm": [nn.LayerNorm],
    "groupnorm": [nn.GroupNorm],
    "instancenorm": [nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d],
    "prelu": [nn.PReLU],
    "embedding": [nn.Embedding],
    "parameter": [nn.Parameter],
    "multihead_attention": [nn.MultiheadAttention],
    "rnn": [nn.LSTM, nn.GRU, nn.RNN],
}
OP_PLUGINS = ["ops_elementwise", "ops_shape", "ops_matmul", "ops_reduction"]
MODEL_PLUGINS = {"torchvision_models": ["pruneframe_fixups", "pruneframe_module_hints"]}
BUILTIN_PLUGINS = [*LAYER_PLUGINS, *OP_PLUGINS, *MODEL_PLUGINS]

# functional stem -> the plugin that provides prune_<stem>_{out,in}_channels
FUNCTIONAL_STEMS: dict[str, str] = {
    "conv": "conv",
    "depthwise_conv": "conv",
    "linear": "linear",
    "batchnorm": "batchnorm",
    "layernorm": "layernorm",
    "groupnorm": "groupnorm",
    "instancenorm": "instancenorm",
    "prelu": "prelu",
    "embedding": "embedding",
    "parameter": "parameter",
    "multihead_attention": "multihead_attention",
    "lstm": "rnn",
    "gru": "rnn",
    "rnn": "rnn",
}
FUNCTIONAL_NAMES = [f"prune_{stem}_{kind}_channels" for stem in FUNCTIONAL_STEMS for kind in ("out", "in")]

CLI_KEYS = {"name", "distribution", "version", "module", "hooks", "module_types", "ops", "functions"}
def _by_name(registry: Registry) -> dict[str, dict[str, Any]]:
    return {info["name"]: info for info in registry.describe()}


_subprocess_env = subprocess_env


@pytest.fixture(autouse=True)
def _no_plugin_selection(no_plugin_selection: None) -> None:
    """Every test here starts from "load everything, leniently"."""


BROKEN_SOURCE = """
    raise ImportError("broken_plugin_mod needs the library 'nonexistent_dependency'")
"""

LINEAR_OVERRIDE_SOURCE = """
    from torch import nn

    import pruneframe
    from pruneframe.plugins.linear import LinearPruner


    class RecordingLinearPruner(LinearPruner):
        '''Prunes exactly like the built-in, and records each call.'''

        def __init__(self):
            self.calls = []

        def prune_out_channels(self, layer, idxs):
            self.calls.append(("out", sorted(int(i) for i in idxs)))
            return super().prune_out_channels(layer, idxs)

        def prune_in_channels(self, layer, idxs):
            self.calls.append(("in", sorted(int(i) for i in idxs)))
            return super().prune_in_channels(layer, idxs)


    @pruneframe.hookimpl
    def pruneframe_layer_pruners(register):
        register(RecordingLinearPruner(), [nn.Linear], name="linear")
"""

MISSPELT_HOOK_SOURCE = """
    import pruneframe


    @pruneframe.hookimpl
    def pruneframe_layer_pruner(register):  # the hook is pruneframe_layer_pruners
        raise AssertionError("a hook that does not exist must never be called")
"""


def _mlp() -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(4, 8), act=nn.ReLU(), fc2=nn.Linear(8, 3)))


def _prune_mlp(registry: Registry) -> nn.Sequential:
    """Prune two hidden units of a small MLP through ``registry`` and return the pruned model."""
    model = _mlp()
    DG = pruneframe.DependencyGraph(registry=registry).build_dependency(model, example_inputs=torch.randn(2, 4))
    group = DG.get_pruning_group(model.fc1, registry.functional("prune_linear_out_channels"), idxs=[0, 5])
    assert {dep.target.name: idxs for dep, idxs in group} == {"fc1": [0, 5], "fc2": [0, 5]}
    group.prune()
    assert model.fc1.out_features == 6 and model.fc2.in_features == 6
    assert model.fc1.weight.shape == (6, 4) and model.fc2.weight.shape == (3, 6)
    assert model(torch.randn(2, 4)).shape == (2, 3)
    return model


# --- built-ins come through the entry-point group ------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_PLUGINS)
def test_builtin_plugin_is_found_through_the_entry_point_group(name: str) -> None:
    declared = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert name in declared, f"{name!r} is not declared under [project.entry-points.\"{ENTRY_POINT_GROUP}\"]"
    assert declared[name].value == f"pruneframe.plugins.{name}"
    assert declared[name].dist.metadata["Name"] == "pruneframe"

    infos = {p.name: p for p in pruneframe.get_registry().plugins}
    assert name in infos, f"{name!r} is declared but did not load"
    info = infos[name]
    assert (info.distribution, info.version, info.module, info.builtin) == (
        "pruneframe", pruneframe.__version__, f"pruneframe.plugins.{name}", True)
    if name in MODEL_PLUGINS:
        assert list(info.hooks) == MODEL_PLUGINS[name]
        return
    hook = "pruneframe_layer_pruners" if name in LAYER_PLUGINS else "pruneframe_op_handlers"
    assert hook in info.hooks


@pytest.mark.parametrize("name", list(LAYER_PLUGINS))
def test_layer_plugin_serves_its_module_types(name: str) -> None:
    registry = pruneframe.get_registry()
    own = {id(e.pruner) for e in registry.layer_pruners if e.plugin == name}
    assert own, f"plugin {name!r} registered no layer pruner"
    for module_type in LAYER_PLUGINS[name]:
        pruner = registry.layer_pruner(module_type)
        assert pruner is not None, f"no pruner for {module_type.__name__}"
        assert id(pruner) in own, f"{module_type.__name__} is served by {registry.layer_pruner_entry(pruner).plugin!r}, not {name!r}"

    # lookup follows the MRO, so a user's subclass is served by the same pruner
    subclass = type(f"My{LAYER_PLUGINS[name][0].__name__}", (LAYER_PLUGINS[name][0],), {})
    assert registry.layer_pruner(subclass) is registry.layer_pruner(LAYER_PLUGINS[name][0])
    assert _by_name(registry)[name]["module_types"], "pruneframe plugins must list the module types it serves"


@pytest.mark.parametrize("name", OP_PLUGINS)
def test_op_plugin_serves_ops_and_no_layers(name: str) -> None:
    info = _by_name(pruneframe.get_registry())[name]
    assert info["ops"] and all(isinstance(op, str) for op in info["ops"])
    assert info["module_types"] == [] and info["functions"] == []


def test_conv_plugin_serves_plain_and_transposed_conv_with_one_pruner() -> None:
    registry = pruneframe.get_registry()
    conv = registry.layer_pruner(nn.Conv2d)
    assert registry.layer_pruner_entry(conv).plugin == "conv"
    assert registry.layer_pruner(nn.ConvTranspose2d) is conv
    assert registry.layer_pruner(nn.Linear) is not conv


@pytest.mark.parametrize("name", FUNCTIONAL_NAMES)
def test_functional_name_resolves_on_pruneframe(name: str) -> None:
    registry = pruneframe.get_registry()
    fn = getattr(pruneframe, name)
    assert fn is registry.functional(name)
    stem = name.removeprefix("prune_").rsplit("_", 2)[0]
    plugin = FUNCTIONAL_STEMS[stem]
    assert name in _by_name(registry)[plugin]["functions"]
    # it is a method of a pruner that plugin registered
    assert registry.layer_pruner_entry(fn.__self__).plugin == plugin
    kind = name.rsplit("_", 2)[1]
    assert fn.__func__ is getattr(type(fn.__self__), f"prune_{kind}_channels")
    assert name in dir(pruneframe)


def test_unknown_functional_name_says_what_exists() -> None:
    with pytest.raises(AttributeError, match=r"prune_warp_drive_out_channels.*no installed plugin.*prune_linear_out_channels"):
        pruneframe.prune_warp_drive_out_channels  # noqa: B018 -- the attribute access is the test


# --- every functional name triggers a group ----------------------------------------------


class WithPosition(nn.Module):
    """A raw parameter added to features (a learned position bias): pruned with the layers around it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.pos = nn.Parameter(torch.randn(1, 8))
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) + self.pos)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, num_heads=2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return self.head(self.attn(h, h, h)[0])


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.rnn = cell(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.proj(x))
        return self.head(out[:, -1])


def _conv_net() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 1), bn=nn.BatchNorm2d(8), act=nn.ReLU(),
        dw=nn.Conv2d(8, 8, 3, padding=1, groups=8), head=nn.Conv2d(8, 4, 1),
    ))


def _norm1d_net(norm: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(OrderedDict(conv=nn.Conv1d(3, 8, 1), norm=norm(), head=nn.Conv1d(8, 2, 1)))


@dataclass(frozen=True)
class TriggerCase:
    """A small model, the layer a functional name is applied to, and what the group must contain."""

    model: Callable[[], nn.Module]
    inputs: Callable[[], Any]
    target: str
    idxs: list[int]
    members: frozenset[str]
    width: Callable[[Any], int]  # the target's channel count that the prune shrinks
    marks: tuple[Any, ...] = field(default=())


CONV_NET = frozenset({"conv", "bn", "dw", "head"})
TRIGGERS: dict[str, TriggerCase] = {
    "prune_conv_out_channels": TriggerCase(_conv_net, lambda: torch.randn(1, 3, 6, 6), "conv", [0, 3], CONV_NET, lambda m: m.out_channels),
    "prune_conv_in_channels": TriggerCase(_conv_net, lambda: torch.randn(1, 3, 6, 6), "head", [0, 3], CONV_NET, lambda m: m.in_channels),
    "prune_depthwise_conv_out_channels": TriggerCase(_conv_net, lambda: torch.randn(1, 3, 6, 6), "dw", [0, 3], CONV_NET, lambda m: m.groups),
    "prune_depthwise_conv_in_channels": TriggerCase(_conv_net, lambda: torch.randn(1, 3, 6, 6), "dw", [0, 3], CONV_NET, lambda m: m.in_channels),
    "prune_batchnorm_out_channels": TriggerCase(_conv_net, lambda: torch.randn(1, 3, 6, 6), "bn", [0, 3], CONV_NET, lambda m: m.num_features),
    "prune_batchnorm_in_channels": TriggerCase(_conv_net, lambda: torch.randn(1, 3, 6, 6), "bn", [0, 3], CONV_NET, lambda m: m.num_features),
    "prune_linear_out_channels": TriggerCase(_mlp, lambda: torch.randn(2, 4), "fc1", [1, 5], frozenset({"fc1", "fc2"}), lambda m: m.out_features),
    "prune_linear_in_channels": TriggerCase(_mlp, lambda: torch.randn(2, 4), "fc2", [1, 5], frozenset({"fc1", "fc2"}), lambda m: m.in_features),
    **{
        f"prune_layernorm_{kind}_channels": TriggerCase(
            lambda: nn.Sequential(OrderedDict(fc1=nn.Linear(4, 8), norm=nn.LayerNorm(8), fc2=nn.Linear(8, 3))),
            lambda: torch.randn(2, 4), "norm", [0, 4], frozenset({"fc1", "norm", "fc2"}), lambda m: m.normalized_shape[0])
        for kind in ("out", "in")
    },
    **{
        f"prune_{stem}_{kind}_channels": TriggerCase(
            _norm1d_net(norm), lambda: torch.randn(1, 3, 5), "norm", [0, 4], frozenset({"conv", "norm", "head"}), width)
        for stem, norm, width in [
            ("groupnorm", lambda: nn.GroupNorm(2, 8), lambda m: m.num_channels),
            ("instancenorm", lambda: nn.InstanceNorm1d(8, affine=True), lambda m: m.num_features),
            ("prelu", lambda: nn.PReLU(8), lambda m: m.num_parameters),
        ]
        for kind in ("out", "in")
    },
    "prune_embedding_out_channels": TriggerCase(
        lambda: nn.Sequential(OrderedDict(emb=nn.Embedding(10, 8), head=nn.Linear(8, 2))),
        lambda: torch.tensor([[1, 2, 3]]), "emb", [0, 1], frozenset({"emb", "head"}), lambda m: m.embedding_dim),
    "prune_embedding_in_channels": TriggerCase(
        lambda: nn.Sequential(OrderedDict(emb=nn.Embedding(10, 8), head=nn.Linear(8, 2))),
        lambda: torch.tensor([[1, 2, 3]]), "emb", [0, 1], frozenset({"emb", "head"}), lambda m: m.embedding_dim),
    "prune_parameter_out_channels": TriggerCase(
        WithPosition, lambda: torch.randn(2, 4), "pos", [0, 1], frozenset({"pos", "fc1", "fc2"}), lambda p: p.shape[-1]),
    "prune_parameter_in_channels": TriggerCase(
        WithPosition, lambda: torch.randn(2, 4), "pos", [0, 1], frozenset({"pos", "fc1", "fc2"}), lambda p: p.shape[-1]),
    **{
        f"prune_multihead_attention_{kind}_channels": TriggerCase(
            # position 0 of each of the two heads: every head keeps the same width
            Attention, lambda: torch.randn(1, 5, 4), "attn", [0, 4], frozenset({"proj", "attn", "head"}), lambda m: m.embed_dim)
        for kind in ("out", "in")
    },
    **{
        f"prune_{cell.__name__.lower()}_out_channels": TriggerCase(
            lambda cell=cell: Recurrent(cell), lambda: torch.randn(2, 5, 3), "rnn", [0, 1], frozenset({"rnn", "head"}),
            lambda m: m.hidden_size)
        for cell in (nn.LSTM, nn.GRU, nn.RNN)
    },
    **{
        f"prune_{cell.__name__.lower()}_in_channels": TriggerCase(
            lambda cell=cell: Recurrent(cell), lambda: torch.randn(2, 5, 3), "rnn", [0, 1], frozenset({"proj", "rnn"}),
            lambda m: m.input_size)
        for cell in (nn.LSTM, nn.GRU, nn.RNN)
    },
}


def test_every_functional_name_has_a_trigger_case() -> None:
    assert sorted(TRIGGERS) == sorted(FUNCTIONAL_NAMES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=TRIGGERS[n].marks) for n in FUNCTIONAL_NAMES])
def test_functional_name_triggers_a_pruning_group(name: str) -> None:
    case = TRIGGERS[name]
    torch.manual_seed(0)
    model = case.model().eval()
    x = case.inputs()
    with torch.no_grad():
        expected_shape = model(x).shape
    target = getattr(model, case.target)
    before = case.width(target)

    DG = pruneframe.DependencyGraph().build_dependency(model, example_inputs=x)
    group = DG.get_pruning_group(target, getattr(pruneframe, name), idxs=case.idxs)
    assert group[0].dep.target.module is target, "the trigger's own layer comes first"
    assert group[0].idxs == case.idxs
    assert {dep.target.name for dep, _ in group} == case.members
    assert DG.check_pruning_group(group), str(group)
    group.prune()

    assert case.width(target) == before - len(case.idxs)
    with torch.no_grad():
        assert model(x).shape == expected_shape


# --- the CLI ----------------------------------------------------------------------------------


def _cli_plugins(tmp_path: Path, **env: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "pruneframe", "plugins", "--load"],  # every plugin imported: what each serves
        cwd=tmp_path, env=_subprocess_env(**env), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_plugins_prints_json_for_every_plugin(tmp_path: Path) -> None:
    listed = _cli_plugins(tmp_path)
    assert isinstance(listed, list) and listed
    for entry in listed:
        assert CLI_KEYS <= set(entry), f"{entry.get('name')!r} lacks {CLI_KEYS - set(entry)}"
        assert all(isinstance(entry[k], str) for k in ("name", "distribution", "version", "module"))
        assert all(isinstance(entry[k], list) and all(isinstance(v, str) for v in entry[k])
                   for k in ("hooks", "module_types", "ops", "functions"))
    by_name = {entry["name"]: entry for entry in listed}
    assert set(BUILTIN_PLUGINS) <= set(by_name)
    assert by_name["conv"]["distribution"] == "pruneframe"
    assert "torch.nn.modules.conv.Conv2d" in by_name["conv"]["module_types"]
    assert {"prune_conv_out_channels", "prune_depthwise_conv_in_channels"} <= set(by_name["conv"]["functions"])
    assert by_name["linear"]["hooks"] == ["pruneframe_layer_pruners"]
    assert "aten.cat" in by_name["ops_shape"]["ops"]
    # the CLI and the library describe the same plugins
    in_process = _by_name(pruneframe.get_registry())
    assert {n: by_name[n] for n in BUILTIN_PLUGINS} == {n: in_process[n] for n in BUILTIN_PLUGINS}


def test_cli_respects_the_allowlist(tmp_path: Path) -> None:
    listed = _cli_plugins(tmp_path, PRUNEFRAME_PLUGINS="linear")
    assert [entry["name"] for entry in listed] == ["linear"]


def test_only_allowed_plugins_are_even_imported(tmp_path: Path) -> None:
    """The core imports no plugin by name: a plugin left out of the allowlist is never imported."""
    script = (
        "import json, sys, pruneframe\n"
        "pruneframe.get_registry()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pruneframe.plugins.'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=_subprocess_env(PRUNEFRAME_PLUGINS="linear,ops_elementwise"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["pruneframe.plugins.linear", "pruneframe.plugins.ops_elementwise"]


# --- selecting plugins ------------------------------------------------------------------------------


def test_allowlist_loads_only_the_named_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEFRAME_PLUGINS", "linear, ops_elementwise")
    registry = build_registry()
    assert sorted(p.name for p in registry.plugins) == ["linear", "ops_elementwise"]
    assert registry.layer_pruner(nn.Conv2d) is None
    assert registry.functional_names() == ["prune_linear_in_channels", "prune_linear_out_channels"]
    _prune_mlp(registry)  # Linear and relu are all an MLP needs


def test_blocklist_drops_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEFRAME_DISABLE_PLUGINS", "conv,batchnorm")
    registry = build_registry()
    names = {p.name for p in registry.plugins}
    assert "conv" not in names and "batchnorm" not in names and "linear" in names
    assert registry.layer_pruner(nn.Conv2d) is None and registry.functional("prune_conv_out_channels") is None
    _prune_mlp(registry)


# --- a broken third-party plugin -----------------------------------------------------------------


def test_broken_plugin_warns_by_name_and_the_rest_keeps_working(fake_dist: FakeDistributions) -> None:
    fake_dist("broken-plugin", "broken", "broken_plugin_mod", BROKEN_SOURCE)
    with pytest.warns(pruneframe.PluginLoadWarning) as caught:
        registry = build_registry()
    messages = [str(w.message) for w in caught if issubclass(w.category, pruneframe.PluginLoadWarning)]
    about_broken = [m for m in messages if '"broken"' in m]
    assert len(about_broken) == 1, messages
    message = about_broken[0]
    assert '"broken-plugin"' in message and "nonexistent_dependency" in message
    assert "PRUNEFRAME_DISABLE_PLUGINS=broken" in message and "PRUNEFRAME_STRICT_PLUGINS=1" in message

    names = {p.name for p in registry.plugins}
    assert "broken" not in names
    assert {p.name for p in pruneframe.get_registry().plugins} <= names
    _prune_mlp(registry)


def test_broken_plugin_is_an_error_when_strict(fake_dist: FakeDistributions, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dist("broken-plugin", "broken", "broken_plugin_mod", BROKEN_SOURCE)
    monkeypatch.setenv("PRUNEFRAME_STRICT_PLUGINS", "1")
    with pytest.raises(pruneframe.PluginLoadError, match=r'"broken" from distribution "broken-plugin"') as raised:
        build_registry()
    assert isinstance(raised.value.__cause__, ImportError)
    assert "nonexistent_dependency" in str(raised.value)


def test_disabled_broken_plugin_is_silent(fake_dist: FakeDistributions, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dist("broken-plugin", "broken", "broken_plugin_mod", BROKEN_SOURCE)
    monkeypatch.setenv("PRUNEFRAME_DISABLE_PLUGINS", "broken")
    monkeypatch.setenv("PRUNEFRAME_STRICT_PLUGINS", "1")  # not even strict mode minds a plugin that is switched off
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = build_registry()
    assert not [w for w in caught if issubclass(w.category, pruneframe.PluginLoadWarning) and "broken" in str(w.message)]
    assert "broken" not in {p.name for p in registry.plugins}
    assert "broken_plugin_mod" not in sys.modules
    _prune_mlp(registry)


def test_misspelt_hook_is_an_error(fake_dist: FakeDistributions) -> None:
    fake_dist("typo-plugin", "typo", "typo_plugin_mod", MISSPELT_HOOK_SOURCE)
    with pytest.raises(pluggy.PluginValidationError, match=r"unknown hook 'pruneframe_layer_pruner'.*typo_plugin_mod"):
        build_registry()


# --- precedence ----------------------------------------------------------------------------------------


def test_third_party_pruner_overrides_the_builtin(fake_dist: FakeDistributions) -> None:
    fake_dist("linear-override", "linear_override", "linear_override_mod", LINEAR_OVERRIDE_SOURCE, version="2.0")
    registry = build_registry()
    info = _by_name(registry)["linear_override"]
    assert (info["distribution"], info["version"], info["builtin"]) == ("linear-override", "2.0", False)
    assert info["module_types"] == ["torch.nn.modules.linear.Linear"]

    override = registry.layer_pruner(nn.Linear)
    assert type(override).__name__ == "RecordingLinearPruner"
    assert registry.layer_pruner_entry(override).plugin == "linear_override"
    assert registry.functional("prune_linear_out_channels") == override.prune_out_channels
    assert "linear" in {p.name for p in registry.plugins}, "the built-in still loads; it is outranked, not dropped"

    _prune_mlp(registry)
    assert override.calls == [("out", [0, 5]), ("in", [0, 5])]


def test_register_customized_layer_beats_every_plugin(fake_dist: FakeDistributions) -> None:
    fake_dist("linear-override", "linear_override", "linear_override_mod", LINEAR_OVERRIDE_SOURCE)
    registry = build_registry()
    plugin_pruner = registry.layer_pruner(nn.Linear)
    builtin_pruner = next(e.pruner for e in registry.layer_pruners if e.plugin == "linear")
    graph_pruner = type(plugin_pruner)()  # the same recording pruner class, owned by this graph only

    model = _mlp()
    DG = pruneframe.DependencyGraph(registry=registry)
    DG.register_customized_layer(nn.Linear, graph_pruner)
    DG.build_dependency(model, example_inputs=torch.randn(2, 4))
    assert DG.get_pruner_of_module(model.fc1) is graph_pruner
    DG.get_pruning_group(model.fc1, graph_pruner.prune_out_channels, idxs=[2]).prune()

    assert graph_pruner.calls == [("out", [2]), ("in", [2])]
    assert plugin_pruner.calls == []
    assert model.fc1.out_features == 7 and model(torch.randn(2, 4)).shape == (2, 3)
    # another graph on the same registry is not affected
    assert pruneframe.DependencyGraph(registry=registry).get_pruner_of_module(model.fc1) is plugin_pruner
    assert builtin_pruner is not plugin_pruner


def test_fake_plugins_never_reach_the_process_wide_registry(fake_dist: FakeDistributions) -> None:
    fake_dist("linear-override", "linear_override", "linear_override_mod", LINEAR_OVERRIDE_SOURCE)
    assert "linear_override" in {p.name for p in build_registry().plugins}
    registry = pruneframe.get_registry()
    assert "linear_override" not in {p.name for p in registry.plugins}
    assert registry.layer_pruner_entry(registry.layer_pruner(nn.Linear)).plugin == "linear"


RAISING_HOOK_SOURCE = """
    import pruneframe

    @pruneframe.hookimpl
    def pruneframe_layer_pruners(register):
        raise RuntimeError("this plugin's hook is broken")
"""

SHADOW_LINEAR_SOURCE = """
    import pruneframe

    @pruneframe.hookimpl
    def pruneframe_op_handlers(register):
        pass
"""


def test_a_hook_that_raises_is_reported_and_the_rest_keeps_working(fake_dist: FakeDistributions,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dist("raising-plugin", "raising", "raising_plugin_mod", RAISING_HOOK_SOURCE)
    with pytest.warns(PluginLoadWarning) as caught:
        registry = build_registry()
    messages = [str(w.message) for w in caught]
    assert any('"raising"' in m and '"raising-plugin"' in m and "this plugin's hook is broken" in m for m in messages)
    assert "raising" not in _by_name(registry)
    _prune_mlp(registry)  # the built-ins still prune (it asserts the shapes)
    monkeypatch.setenv(ENV_STRICT, "1")
    with pytest.raises(PluginLoadError, match="raising"):
        build_registry()


def test_two_distributions_with_one_plugin_name_are_both_loaded(fake_dist: FakeDistributions) -> None:
    """A third-party entry point named like a built-in must not silently replace it."""
    fake_dist("shadow-linear", "linear", "shadow_linear_mod", SHADOW_LINEAR_SOURCE)
    with pytest.warns(PluginLoadWarning, match='"linear" is used by distributions'):
        registry = build_registry()
    names = _by_name(registry)
    assert names["linear"]["distribution"] in ("pruneframe", "shadow-linear")
    assert any(n.endswith(":linear") for n in names)
    assert registry.layer_pruner(nn.Linear) is not None


def test_third_party_op_registration_beats_builtin_overloads() -> None:
    """Registering a whole op (every overload), or one op given bare, overrides the built-in handler of its overloads."""
    aten = torch.ops.aten

    def mine(ctx, op, args, kwargs, out):
        ctx.unsupported(op, args, kwargs, out)

    class WholeOp:
        @pruneframe.hookimpl
        def pruneframe_op_handlers(register):  # noqa: N805 - a namespace of hook functions, not a method
            register(aten.max, mine, name="max-everything")
            register(aten.sort.default, mine, name="bare-overload")

    registry = build_registry(extra_plugins=[("whole-op", WholeOp)])
    assert registry.op_handler(aten.max.dim).plugin == "whole-op"  # built-in registers aten.max.dim exactly
    assert registry.op_handler(aten.sort.default).name == "bare-overload"
    assert pruneframe.get_registry().op_handler(aten.max.dim).plugin == "ops_reduction"


def test_registering_something_that_is_not_an_op_names_the_plugin() -> None:
    class Wrong:
        @pruneframe.hookimpl
        def pruneframe_op_handlers(register):  # noqa: N805
            register(["aten.cat"], lambda *a: None, name="strings")

    with pytest.warns(PluginLoadWarning, match='"wrong-op".*not an ATen op'):
        registry = build_registry(extra_plugins=[("wrong-op", Wrong)])
    assert "wrong-op" not in _by_name(registry)
