"""Save and load pruned models without pickling classes: the pruning plan replays on a fresh model."""
from __future__ import annotations

import io
import json

import pytest
import torch
import torchvision
from torch import nn

import pruneframe as tp
from pruneframe.plan import apply_plan, get_plan, plan_from_json, plan_to_json
from pruneframe.testing import prune_random


def pruned(factory, x, ratio=0.4, seed=0, ignored=lambda m: []):
    torch.manual_seed(seed)
    model = factory().eval()
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert prune_random(ratio=ratio, seed=seed, ignored_layers=ignored)(DG, model) > 0
    return model


def roundtrip(sd):
    """Through torch.save/torch.load with weights_only=True: no class is pickled."""
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "densenet121", "vit_b_16"])
def test_torchvision_models_reload_with_identical_outputs(name) -> None:
    factory = lambda: torchvision.models.get_model(name, weights=None, **({"image_size": 32} if name == "vit_b_16" else {}))
    x = torch.randn(1, 3, 32 if name == "vit_b_16" else 64, 32 if name == "vit_b_16" else 64)
    heads = {"resnet18": "fc", "mobilenet_v3_small": "classifier.3", "densenet121": "classifier", "vit_b_16": "heads.head"}
    model = pruned(factory, x, ignored=lambda m: [m.get_submodule(heads[name])])
    sd = roundtrip(tp.state_dict(model))
    fresh = factory().eval()
    tp.load_state_dict(fresh, state_dict=sd)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in model.parameters())


def test_the_plan_is_readable_json_and_replays() -> None:
    x = torch.randn(1, 3, 32, 32)
    model = pruned(lambda: torchvision.models.resnet18(weights=None), x, ignored=lambda m: [m.fc])
    text = plan_to_json(model)
    data = json.loads(text)
    assert data["format"] == "pruneframe-pruning-plan" and data["steps"]
    first = data["steps"][0][0]
    assert set(first) >= {"layer", "kind", "idxs"} and first["kind"] in ("out", "in")
    fresh = torchvision.models.resnet18(weights=None)
    apply_plan(fresh, plan_from_json(text))
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in model.parameters()]


def test_raw_parameters_are_replayed_along_their_dim() -> None:
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 6)
            self.pos = nn.Parameter(torch.randn(3, 6))
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.proj(x) + self.pos)

    torch.manual_seed(0)
    model = Tokens()
    x = torch.randn(2, 3, 4)
    DG = tp.DependencyGraph().build_dependency(model, x)
    DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [1, 4]).prune()
    assert get_plan(model)["steps"][0] == [
        {"layer": "proj", "kind": "out", "idxs": [1, 4]},
        {"layer": "pos", "kind": "out", "idxs": [1, 4], "dim": 1},
        {"layer": "out", "kind": "in", "idxs": [1, 4]},
    ]
    fresh = Tokens()
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model))
    assert fresh.pos.shape == (3, 4) and torch.equal(fresh(x), model(x))


def test_a_plan_that_does_not_fit_leaves_the_model_as_it_was() -> None:
    x = torch.randn(1, 3, 32, 32)
    model = pruned(lambda: torchvision.models.resnet18(weights=None), x, ignored=lambda m: [m.fc])
    sd = tp.state_dict(model)
    other = torchvision.models.resnet34(weights=None)  # resnet18's layer names exist, its weights do not fit
    small = nn.Sequential(nn.Conv2d(3, 4, 1))  # none of the plan's layers exist
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(tp.PruningError, match="has no layer"):
        tp.load_state_dict(small, state_dict=sd)
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in before.items())
    shapes = [p.shape for p in other.parameters()]
    with pytest.raises(tp.PruningError):
        tp.load_state_dict(other, state_dict=sd)
    assert [p.shape for p in other.parameters()] == shapes and not get_plan(other)["steps"]


def test_replaying_onto_an_already_pruned_model_is_refused() -> None:
    x = torch.randn(1, 3, 32, 32)
    model = pruned(lambda: torchvision.models.resnet18(weights=None), x, ignored=lambda m: [m.fc])
    with pytest.raises(tp.PruningError, match="already pruned"):
        tp.load_state_dict(model, state_dict=tp.state_dict(model))


def test_bad_plans_are_named() -> None:
    with pytest.raises(ValueError, match="not a pruneframe pruning plan"):
        apply_plan(nn.Linear(2, 2), {"steps": []})
    with pytest.raises(ValueError, match="malformed"):
        apply_plan(nn.Linear(2, 2), {"format": "pruneframe-pruning-plan", "version": 1, "steps": [[{"layer": "x"}]]})
    with pytest.raises(TypeError, match="load_state_dict takes"):
        tp.load_state_dict(nn.Linear(2, 2), state_dict=[1])


def test_a_plain_state_dict_still_loads() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    tp.load_state_dict(b, state_dict=a.state_dict())
    assert torch.equal(a.weight, b.weight)


# --- one way to apply a prune: validated first, one transaction, customized pruners, no copy of the model ---------

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "examples" / "custom_layer.py"


def _pruned_custom_layer_example() -> dict:
    import contextlib
    import runpy

    with contextlib.redirect_stdout(io.StringIO()):
        namespace = runpy.run_path(str(EXAMPLE))  # builds FullyConnectedNet, prunes it through MyPruner
    with torch.no_grad():
        for p in namespace["model"].parameters():  # the example leaves some parameters uninitialised
            p.copy_(torch.randn_like(p))
    return namespace


def _state(model: nn.Module) -> list:
    return [(n, t.shape, t.clone()) for n, t in [*model.named_parameters(), *model.named_buffers()]]


def _same_state(model: nn.Module, before: list) -> bool:
    now = [*model.named_parameters(), *model.named_buffers()]
    return len(now) == len(before) and all(n == m and t.shape == s and _identical(t, v) for (n, t), (m, s, v) in zip(now, before))


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other has NaN (the example leaves parameters uninitialised, so they may hold NaN)."""
    return torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                 and torch.equal(a.nan_to_num(nan=0.0), b.nan_to_num(nan=0.0)))


def test_a_model_with_a_customized_layer_reloads_with_its_pruner() -> None:
    ns = _pruned_custom_layer_example()
    model, x = ns["model"], torch.randn(2, 128)
    sd = roundtrip(tp.state_dict(model))
    assert any(e.get("customized") == "CustomizedLayer" for step in sd["pruning_plan"]["steps"] for e in step)

    fresh = ns["FullyConnectedNet"](128, 10, 256)
    before = _state(fresh)
    with pytest.raises(tp.PruningError, match=r"CustomizedLayer.*customized_pruners=\{CustomizedLayer"):
        tp.load_state_dict(fresh, state_dict=sd)
    assert _same_state(fresh, before) and fresh.customized_layer.in_dim == 256, "the refused load changed the model"

    tp.load_state_dict(fresh, state_dict=sd, customized_pruners={ns["CustomizedLayer"]: ns["MyPruner"]()})
    assert fresh.customized_layer.in_dim == 253 and fresh.fc1.out_features == 253
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    # apply_plan takes them too
    again = ns["FullyConnectedNet"](128, 10, 256)
    apply_plan(again, sd["pruning_plan"], customized_pruners={ns["CustomizedLayer"]: ns["MyPruner"]()})
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


def test_a_plan_is_checked_whole_before_anything_changes() -> None:
    x = torch.randn(1, 3, 32, 32)
    model = pruned(lambda: torchvision.models.resnet18(weights=None), x, ignored=lambda m: [m.fc])
    plan = get_plan(model)
    assert len(plan["steps"]) > 2
    for damage, complaint in ((lambda e: e.update(layer="layer9.conv1"), "has no layer 'layer9.conv1'"),
                              (lambda e: e.update(idxs=[10_000]), "index 10000 is out of range"),
                              (lambda e: e.update(idxs=[3, 3]), "distinct non-negative ints")):
        bad = json.loads(json.dumps(plan))
        damage(bad["steps"][-1][0])  # the last step: every earlier one would apply
        fresh = torchvision.models.resnet18(weights=None)
        before = _state(fresh)
        with pytest.raises(tp.PruningError, match=complaint):
            apply_plan(fresh, bad)
        assert _same_state(fresh, before), complaint


def test_a_failure_while_replaying_restores_the_whole_model_without_copying_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    ns = _pruned_custom_layer_example()
    sd = tp.state_dict(ns["model"])

    class FailingPruner(ns["MyPruner"]):
        def prune_out_channels(self, layer, idxs):
            raise RuntimeError("the pruner broke")

        prune_in_channels = prune_out_channels

    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda obj, *a, **k: pytest.fail("the model was copied")
                        if isinstance(obj, nn.Module) else real(obj, *a, **k))
    fresh = ns["FullyConnectedNet"](128, 10, 256)
    before = _state(fresh)
    with pytest.raises(tp.PruningError, match=r"layer 'customized_layer'.*the pruner broke.*as it was"):
        tp.load_state_dict(fresh, state_dict=sd, customized_pruners={ns["CustomizedLayer"]: FailingPruner()})
    assert _same_state(fresh, before) and fresh.fc1.out_features == 256  # fc1 was pruned first, then restored
    assert not get_plan(fresh)["steps"]

    wrong = {"state_dict": {k: v[:1] if v.dim() else v for k, v in sd["state_dict"].items()}, "pruning_plan": sd["pruning_plan"]}
    with pytest.raises(tp.PruningError, match="do not fit the model pruned by its plan.*size mismatch"):
        tp.load_state_dict(fresh, state_dict=wrong, customized_pruners={ns["CustomizedLayer"]: ns["MyPruner"]()})
    assert _same_state(fresh, before) and not get_plan(fresh)["steps"]


# --- user attributes ----------------------------------------------------------------------------------------------


class Tagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _pruned_tagged():
    torch.manual_seed(0)
    model = Tagged()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 4))
    DG.get_pruning_group(model.a, tp.prune_linear_out_channels, [0, 3]).prune()
    return model


def test_plain_user_attributes_come_back_and_load_with_weights_only() -> None:
    model = _pruned_tagged()
    model.tag, model.a.sizes, model.b.meta = "pruned-v1", [4, (1, 2.5)], {"note": None, "ok": True}
    sd = roundtrip(tp.state_dict(model))  # weights_only=True
    assert sd["attributes"][""]["tag"] == "pruned-v1" and "training" not in sd["attributes"][""]
    fresh = Tagged().train()
    tp.load_state_dict(fresh, state_dict=sd)
    assert (fresh.tag, fresh.a.sizes, fresh.b.meta) == ("pruned-v1", [4, (1, 2.5)], {"note": None, "ok": True})
    assert fresh.a.out_features == 4 and fresh.training  # the fresh model keeps its own mode
    model.a.sizes.append(9)
    assert fresh.a.sizes == [4, (1, 2.5)]  # copies, not the saved objects


def test_attributes_that_are_not_plain_data_are_named_when_the_fresh_model_lacks_them() -> None:
    class Handle:
        pass

    model = _pruned_tagged()
    model.handle = Handle()  # an object: not saved (no pickling)
    model.fn = len  # code: not state, never saved
    sd = roundtrip(tp.state_dict(model))
    assert "handle" not in sd["attributes"].get("", {}) and sd["unsaved_attributes"][""] == {"handle": "Handle"}
    fresh = Tagged()
    with pytest.warns(UserWarning, match=r"not saved.*handle \(Handle\)"):
        tp.load_state_dict(fresh, state_dict=sd)
    assert not hasattr(fresh, "handle") and fresh.a.out_features == 4


def test_attributes_that_do_not_fit_leave_the_model_as_it_was() -> None:
    model = _pruned_tagged()
    sd = tp.state_dict(model)
    sd["attributes"]["a"] = {"weight": 3}  # a plain value where the fresh model has a parameter
    fresh = Tagged()
    shapes = [p.shape for p in fresh.parameters()]
    with pytest.raises(tp.PruningError, match=r"a\.weight is a plain value"):
        tp.load_state_dict(fresh, state_dict=sd)
    assert [p.shape for p in fresh.parameters()] == shapes and not get_plan(fresh)["steps"]
    sd["attributes"] = {"nosuch": {"x": 1}}
    with pytest.raises(tp.PruningError, match="module 'nosuch'"):
        tp.load_state_dict(fresh, state_dict=sd)
    assert [p.shape for p in fresh.parameters()] == shapes


def test_torch_pruning_format_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="Torch-Pruning's state_dict format"):
        tp.load_state_dict(Tagged(), state_dict={"full_state_dict": {}, "attributions": {}})


def test_save_and_load_are_torch_save_and_a_safe_torch_load(tmp_path) -> None:
    model = _pruned_tagged()
    model.tag = "x"
    tp.save(tp.state_dict(model), tmp_path / "m.pth")
    fresh = tp.load_state_dict(Tagged(), state_dict=tp.load(tmp_path / "m.pth"))
    assert fresh.tag == "x" and fresh.a.out_features == 4
    torch.save(Tagged(), tmp_path / "pickled.pth")  # a whole pickled module: refused unless asked for
    with pytest.raises(Exception, match="Weights only load failed"):
        tp.load(tmp_path / "pickled.pth")
    assert isinstance(tp.load(tmp_path / "pickled.pth", weights_only=False), Tagged)


# --- classes a plugin finds by their structure (register(..., find=...)) ----------------------------


class _StoredWidthScale(nn.Module):
    """A per-feature gain whose forward reshapes with its stored width; no plugin lists this class."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.gain = nn.Parameter(torch.linspace(0.5, 2.0, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, self.features) * self.gain


class _ScalePruner(tp.DeclarativeLayerPruner):
    tensors = (tp.TensorDims("gain", out=0),)
    out_attrs = ("features",)
    coupled = True
    output_dim = input_dim = -1


def _scale_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "gain", None), nn.Parameter) and hasattr(m, "features")]


class _FindScalePlugin:
    @tp.hookimpl
    def pruneframe_layer_pruners(self, register) -> None:
        register(_ScalePruner(), name="test_plan_scale", find=_scale_layers)


def _scale_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), _StoredWidthScale(8), nn.Linear(8, 2))


def _fresh_find_registry():
    from pruneframe.registry import build_registry

    registry = build_registry(extra_plugins=[("test-plan-find", _FindScalePlugin())])
    assert registry.layer_pruner(_StoredWidthScale) is None  # it has seen no model: the class is not served yet
    return registry


def _pruned_scale_net() -> nn.Module:
    model = _scale_net()
    DG = tp.DependencyGraph(registry=_fresh_find_registry()).build_dependency(model, torch.randn(2, 3))
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, [1, 4, 6])
    assert [dep.target.name for dep, _ in group] == ["0", "1", "2"]  # the scale is one leaf, served by the found pruner
    group.prune()
    return model


def test_a_replay_with_an_explicit_registry_finds_the_classes_its_plugins_serve_by_structure() -> None:
    model, x = _pruned_scale_net(), torch.randn(5, 3)
    sd = roundtrip(tp.state_dict(model))
    assert model[1].features == 5

    fresh, registry = _scale_net(), _fresh_find_registry()  # a registry that never saw the pruned model
    tp.load_state_dict(fresh, state_dict=sd, registry=registry)
    assert isinstance(registry.layer_pruner(_StoredWidthScale), _ScalePruner)
    assert fresh[1].features == 5 and fresh[1].gain.shape == (5,) and fresh[0].out_features == 5
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))

    again = _scale_net()
    apply_plan(again, sd["pruning_plan"], registry=_fresh_find_registry())
    assert again[1].features == 5 and [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


def test_a_finder_that_fails_during_a_replay_is_named_and_the_model_is_left_as_it_was() -> None:
    from pruneframe.registry import build_registry

    def broken(model: nn.Module) -> list[nn.Module]:
        raise RuntimeError("cannot read this model")

    class Broken:
        @tp.hookimpl
        def pruneframe_layer_pruners(self, register) -> None:
            register(_ScalePruner(), name="test_plan_broken", find=broken)

    sd = tp.state_dict(_pruned_scale_net())
    fresh = _scale_net()
    before = _state(fresh)
    with pytest.raises(tp.PruningError, match=r"finder of 'test_plan_broken' \(plugin 'test-plan-broken'\) failed.*cannot read"):
        tp.load_state_dict(fresh, state_dict=sd, registry=build_registry(extra_plugins=[("test-plan-broken", Broken())]))
    assert _same_state(fresh, before) and fresh[1].features == 8
