"""``keep_loadable``: a prune a fix-up says the model's own format cannot state is undone, and MetaPruner leaves its group whole.

A toy plugin stands for a save format: its fix-up returns a reason whenever a Linear has an odd width (the way
pruneframe-transformers' config fix-up says "BERTConfig cannot describe these sizes").
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.graph import dependency_graph
from pruneframe.registry import build_registry

X = torch.randn(5, 4, dtype=torch.float64)


class Settings:
    """What a format keeps beside the layers, as a Hugging Face config does."""

    def __init__(self) -> None:
        self.widths = [8, 6, 4]


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)).double().eval()
    model.settings = Settings()
    return model


def _even_widths_only(model: nn.Module) -> str | None:
    model.settings.widths = [m.out_features for m in model if isinstance(m, nn.Linear)]  # the fix-up writes the sizes
    odd = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features % 2]
    return f"the format stores even widths only, and {', '.join(odd)} became odd" if odd else None


class EvenFormat:
    @tp.hookimpl
    def pruneframe_fixups(self, register: Any) -> None:
        register([nn.Sequential], _even_widths_only, name="even-widths")


@pytest.fixture()
def even_format(monkeypatch: pytest.MonkeyPatch) -> Any:
    registry = build_registry(extra_plugins=[("even-format", EvenFormat())])
    monkeypatch.setattr(dependency_graph, "get_registry", lambda model=None: registry)
    return registry


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_block_the_format_cannot_state_is_undone_with_the_reason(even_format: Any) -> None:
    model = _net()
    before = _state(model)
    graph = tp.DependencyGraph(registry=even_format).build_dependency(model, example_inputs=X)
    group = graph.get_pruning_group(model[2], tp.prune_linear_out_channels, [0, 1, 2])
    with pytest.raises(tp.UnloadableError) as caught:
        with graph.one_run_check(keep_loadable=True):
            group.prune()
    message = str(caught.value)
    assert "even widths only, and 2 became odd" in message and "keep_loadable" in message and "pruneframe.state_dict" in message
    assert model[2].out_features == 6 and model[4].in_features == 6 and graph.pruning_history() == []
    assert model.settings.widths == [8, 6, 4]  # what the fix-up wrote beside the layers is undone too
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_keep_loadable_the_same_prune_is_made(even_format: Any) -> None:
    model = _net()
    graph = tp.DependencyGraph(registry=even_format).build_dependency(model, example_inputs=X)
    with graph.one_run_check():
        graph.get_pruning_group(model[2], tp.prune_linear_out_channels, [0, 1, 2]).prune()
    assert model[2].out_features == 3 and model[4].in_features == 3


def test_meta_pruner_leaves_that_group_whole_warns_and_prunes_the_rest(even_format: Any) -> None:
    model = _net()
    reference = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                      ignored_layers=[model[4]])
        pruner.step()
    said = [str(w.message) for w in caught if "stays loadable" in str(w.message)]
    assert (model[0].out_features, model[2].out_features) == (4, 6)  # 8 -> 4 is even; 6 -> 3 is not
    assert model.settings.widths == [4, 6, 4]
    assert len(said) == 1 and "1 group(s) left whole" in said[0] and "2, 4 (the format stores even widths only, and 2 became odd)" in said[0]
    assert "keep_loadable=False" in said[0]
    [(group, why)] = pruner.left_whole
    assert next(iter(group))[0].target.name == "2" and "the model's own format could not state it" in why
    assert model(X).shape == reference(X).shape


def test_meta_pruner_keep_loadable_false_prunes_it_anyway(even_format: Any) -> None:
    model = _net()
    pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=[model[4]], keep_loadable=False)
    pruner.step()
    assert (model[0].out_features, model[2].out_features) == (4, 3) and pruner.left_whole == []


def test_keep_loadable_must_be_a_bool() -> None:
    model = _net()
    with pytest.raises(TypeError, match=r"keep_loadable='no': it must be True or False"):
        tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), keep_loadable="no")


def _middle_width_fixed(model: nn.Module) -> str | None:
    return None if model[2].out_features == 6 else f"the format stores 6 for layer 2, not {model[2].out_features}"


class FixedMiddle:
    """A format that can never state another width of layer 2 (as BertConfig cannot narrower attention)."""

    @tp.hookimpl
    def pruneframe_fixups(self, register: Any) -> None:
        register([nn.Sequential], _middle_width_fixed, name="fixed-middle")


def test_a_target_search_counts_only_the_prunes_the_format_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ratio search prunes a shape twin; its trials leave the same groups whole as the real step, so the target is met
    by pruning layer 0 further instead of being missed."""
    registry = build_registry(extra_plugins=[("fixed-middle", FixedMiddle())])
    monkeypatch.setattr(dependency_graph, "get_registry", lambda model=None: registry)
    model = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the group left whole is reported; this test reads the result
        pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), target_params=0.6,
                                      ignored_layers=[model[4]])
        pruner.step()
    # 11 * width0 + 34 parameters with layer 2 at 6: at most 73 means width0 <= 3
    assert (model[0].out_features, model[2].out_features) == (3, 6)
    assert pruner.target_result.met and pruner.target_result.params == 11 * 3 + 34
