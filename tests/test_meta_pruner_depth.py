"""``MetaPruner(remove_layers=...)``: whole blocks removed at the start of the first step, then the widths pruned.

One pruner must give what ``remove_layers`` followed by a plain MetaPruner gives; the plan must replay both on a
fresh model; what the pruner held of removed modules is dropped; a target counts what the removal took off; bad
values are refused before the model is traced; and a Hugging Face LLaMA round-trips through
``save_pretrained`` / ``from_pretrained`` with the transformers plugin.
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from typing import Any, Iterator

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.errors import PruningError
from pruneframe.importance import NotCalibratedError

from contrib_support import contrib_plugin
from test_depth import Stack, X

BATCHES = [torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(k)) for k in range(3)]


def _model(seed: int = 0) -> Stack:
    torch.manual_seed(seed)
    return Stack(5).eval()


def _imp() -> Any:
    return tp.importance.MagnitudeImportance(p=2)


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def test_a_counted_removal_and_a_width_prune_equal_remove_layers_then_metapruner():
    model, copied = _model(), _model()
    pruner = tp.pruner.MetaPruner(model, X, _imp(), pruning_ratio=0.25, remove_layers=2)
    assert pruner.calibrate(BATCHES) == 3
    lowest = [s.name for s in pruner.layer_ranking[:2]]
    assert [s.name for s in tp.pruner.rank_layers(copied, BATCHES)[:2]] == lowest
    pruner.step()
    assert sorted(pruner.removed_layers) == sorted(lowest) and len(model.layers) == 3
    tp.pruner.remove_layers(copied, lowest, example_inputs=X)
    tp.pruner.MetaPruner(copied, X, _imp(), pruning_ratio=0.25).step()
    assert model.layers[0].fc1.out_features == copied.layers[0].fc1.out_features == 12
    assert torch.equal(_out(model), _out(copied))


def test_named_blocks_need_no_calibration_and_the_plan_replays_both_on_a_fresh_model():
    model, before = _model(), _model()
    pruner = tp.pruner.MetaPruner(model, X, _imp(), pruning_ratio=0.5, remove_layers=["layers.1", model.layers[3]])
    pruner.step()
    assert pruner.removed_layers == ("layers.1", "layers.3") and [b.layer_idx for b in model.layers] == [0, 1, 2]
    gone = _model()
    tp.pruner.remove_layers(gone, ["layers.1", "layers.3"])
    assert not torch.equal(_out(model), _out(gone))  # the widths were pruned too
    fresh = _model(seed=5)
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model))
    assert len(fresh.layers) == 3 and torch.equal(_out(fresh), _out(model))
    assert len(before.layers) == 5  # a model not given to the pruner is untouched


def test_an_interactive_step_removes_the_blocks_first_and_yields_the_width_groups():
    model, copied = _model(), _model()
    pruner = tp.pruner.MetaPruner(model, X, _imp(), pruning_ratio=0.25, remove_layers=["layers.0"])
    groups = pruner.step(interactive=True)
    assert len(model.layers) == 4 and pruner.removed_layers == ("layers.0",)  # before the first group is drawn
    for group in groups:
        assert all(dep.target.module in set(model.modules()) for dep, _ in group)
        group.prune()
    reference = tp.pruner.MetaPruner(copied, X, _imp(), pruning_ratio=0.25, remove_layers=["layers.0"])
    reference.step()
    assert torch.equal(_out(model), _out(copied))


def test_what_the_pruner_held_of_removed_modules_is_dropped():
    model = _model()
    gone, kept = model.layers[4], model.layers[0]
    pruner = tp.pruner.MetaPruner(model, X, _imp(), pruning_ratio=0.0, remove_layers=["layers.4"],
                                  ignored_layers=[gone.fc1, kept.fc2], pruning_ratio_dict={gone: 0.5, kept.fc1: 0.5})
    pruner.step()
    assert pruner.ignored_layers == [kept.fc2]
    assert all(any(layer is m for m in model.modules()) for layer in pruner.pruning_ratio_dict)
    assert kept.fc1.out_features == 8 and model.layers[1].fc1.out_features == 16  # the kept entry still applies
    assert all(dep.target.module in set(model.modules()) for group in pruner.DG.get_all_groups() for dep, _ in group)


def test_a_target_counts_what_the_removal_took_off():
    params = sum(p.numel() for p in _model().parameters())
    plain = tp.pruner.MetaPruner(_model(), X, _imp(), target_params=0.6)
    plain.step()
    model = _model()
    deeper = tp.pruner.MetaPruner(model, X, _imp(), target_params=0.6, remove_layers=["layers.3", "layers.4"])
    deeper.step()
    assert deeper.target_result.met and sum(p.numel() for p in model.parameters()) <= 0.6 * params
    assert deeper.target_result.ratio < plain.target_result.ratio  # two blocks fewer: less width has to go


@pytest.mark.parametrize("remove", [["layers.1", "layers.3"], 2])
def test_a_search_before_the_first_step_counts_the_pending_removal(remove: Any):
    model = _model()
    before = copy.deepcopy(model.state_dict())
    pruner = tp.pruner.MetaPruner(model, X, _imp(), target_params=0.6, remove_layers=remove)
    if isinstance(remove, int):
        with pytest.raises(NotCalibratedError, match="remove_layers=2 needs pruner.calibrate"):
            pruner.search_target_ratio()
        pruner.calibrate(BATCHES)
    found = pruner.search_target_ratio()
    assert len(model.layers) == 5 and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing pruned
    pruner.step()
    assert len(model.layers) == 3
    reached = pruner.target_result
    assert (found.ratio, found.lower_ratio, found.layers_at_ratio, found.layers) == (
        reached.ratio, reached.lower_ratio, reached.layers_at_ratio, reached.layers)
    assert (found.macs, found.params) == (reached.macs, reached.params) == tp.utils.count_ops_and_params(model, X)[:2]
    if isinstance(remove, list):  # the same answer without a pruner of one's own, the model left as it was
        fresh = _model()
        alone = tp.pruner.ratio_for_target(fresh, X, _imp(), target_params=0.6, remove_layers=remove)
        assert (alone.ratio, alone.params) == (found.ratio, found.params) and len(fresh.layers) == 5


def test_activation_importance_and_block_influence_share_one_calibration_pass():
    model = _model()
    calls = []
    forward = lambda m, x: calls.append(1) or m(x)  # noqa: E731
    imp = tp.importance.ActivationImportance()
    pruner = tp.pruner.MetaPruner(model, X, imp, pruning_ratio=0.25, remove_layers=1, forward_fn=forward)
    calls.clear()
    assert pruner.calibrate(BATCHES) == 3 and len(calls) == 3
    assert imp.statistics(model.layers[0].fc1) is not None
    assert pruner.layer_ranking == tp.pruner.rank_layers(_model(), BATCHES)
    pruner.step()
    assert pruner.removed_layers == (pruner.layer_ranking[0].name,) and len(model.layers) == 4


def test_after_a_removal_pruning_history_is_refused_and_names_the_plan():
    model = _model()
    pruner = tp.pruner.MetaPruner(model, X, _imp(), pruning_ratio=0.25, remove_layers=["layers.2"])
    assert pruner.pruning_history() == []
    pruner.step()
    with pytest.raises(PruningError, match=r"removed layers\.2.*pruneframe\.state_dict\(model\)"):
        pruner.pruning_history()


def test_a_count_without_calibration_is_refused_and_nothing_changes():
    model = _model()
    expected = _out(model)
    pruner = tp.pruner.MetaPruner(model, X, _imp(), pruning_ratio=0.25, remove_layers=2)
    with pytest.raises(NotCalibratedError, match=r"remove_layers=2 needs pruner\.calibrate\(batches\) first \(block "
                                                 r"influence ranks the layers\)"):
        pruner.step()
    assert pruner.current_step == 0 and len(model.layers) == 5 and torch.equal(_out(model), expected)
    with pytest.raises(ValueError, match="drop loss_fn"):
        pruner.calibrate(BATCHES, loss_fn=lambda m, b: m(b).sum())


@pytest.mark.parametrize("value, error, message", [
    (-1, ValueError, r"remove_layers=-1: give a count from 0 to 4"),
    (5, ValueError, r"remove_layers=5: give a count from 0 to 4, .*\(removable per layer list: layers: 5 of 5 blocks; each"),
    (True, TypeError, r"remove_layers=True: give a count"),
    ([3], TypeError, r"a list of block names such as \['model.layers.3'\]"),
    (["layers.9"], ValueError, r"remove_layers: the model has no module 'layers.9'"),
    (["layers"], ValueError, r"layers is a layer list, not a block"),
    (["layers.1", "layers.1"], ValueError, r"layers.1 is named twice"),
    ([f"layers.{k}" for k in range(5)], ValueError, r"would remove all 5 blocks of layers; keep at least one"),
    ([1.5], TypeError, r"remove_layers: 1.5 \(float\) is not a block"),
])
def test_bad_values_are_refused_before_the_model_is_traced(value: Any, error: type, message: str, monkeypatch: Any):
    def no_trace(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was traced before remove_layers was checked")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", no_trace)
    model = _model()
    with pytest.raises(error, match=message):
        tp.pruner.MetaPruner(model, X, _imp(), remove_layers=value)
    assert len(model.layers) == 5


class Branches(nn.Module):
    """A layer list whose blocks run side by side: block influence scores none of them."""

    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(3, 3), nn.ReLU()) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(b(x) for b in self.branches)


def test_a_count_with_nothing_ranked_is_refused_at_calibration():
    model = Branches().eval()
    pruner = tp.pruner.MetaPruner(model, X, _imp(), remove_layers=1)
    with pytest.raises(NotCalibratedError, match="scored no block"):
        pruner.calibrate(BATCHES)
    assert pruner.layer_ranking is None and len(model.branches) == 3


def test_a_sparse_training_pruner_refreshes_its_groups_after_the_removal():
    model = _model()
    pruner = tp.pruner.GroupNormPruner(model, X, _imp(), pruning_ratio=0.0, remove_layers=["layers.4"])  # no width change
    pruner.step()
    alive = set(model.modules())
    assert pruner._groups and all(dep.target.module in alive for group in pruner._groups for dep, _ in group)
    model(X).sum().backward()
    pruner.regularize(model)
    assert model.layers[3].fc1.weight.grad is not None


# --- Hugging Face ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transformers_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("transformers")
    yield from contrib_plugin(tmp_path_factory, "pruneframe-transformers")


@pytest.mark.slow
def test_a_llama_loses_layers_and_widths_in_one_pruner_and_round_trips(transformers_plugin: Any):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2)
    original = copy.deepcopy(config)  # the model's own config follows the prune
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids}, {"input_ids": ids.flip(1)}]
    pruner = tp.pruner.MetaPruner(model, batches[0], _imp(), pruning_ratio=0.25, remove_layers=2,
                                  ignored_layers=[model.model.embed_tokens, model.lm_head])
    pruner.calibrate(batches)
    pruner.step()
    assert len(pruner.removed_layers) == 2 and model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert model.config.intermediate_size == 48
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("error")  # the config says what the weights hold: no mismatch warning
        model.save_pretrained(folder)
        loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-6)
    fresh = LlamaForCausalLM(original).eval()
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model))
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, expected)
