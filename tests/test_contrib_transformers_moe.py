"""Mixture-of-experts layers lose whole experts or expert width, with router, stored counts and ``model.config`` in step.

The ``pruneframe-transformers`` distribution is installed offline into a
temporary folder and used in this process through its entry point (as in
``test_contrib_transformers.py``). Mixtral, Qwen2-MoE (with its shared expert),
Qwen3-MoE and OLMoE are built from small configs (2 layers, hidden 64, 4
experts top-2, expert width 32, vocab 128); nothing is downloaded.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from pruneframe.importance import NotCalibratedError
from pruneframe.importance.experts import RouterMassImportance, expert_magnitude

from contrib_support import install_offline, installed_in_process

pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

pytestmark = pytest.mark.slow

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "pruneframe-transformers"
TEXT = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(0))
_DECODER = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_QWEN_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1}
FAMILIES = {
    # family: (model_type, extra config fields, the config field of the expert count, of the expert width)
    "Mixtral": ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}, "num_local_experts", "intermediate_size"),
    "Qwen2-MoE": ("qwen2_moe", {**_QWEN_MOE, "shared_expert_intermediate_size": 32}, "num_experts", "moe_intermediate_size"),
    "Qwen3-MoE": ("qwen3_moe", {**_QWEN_MOE, "head_dim": 16}, "num_local_experts", "moe_intermediate_size"),
    "OLMoE": ("olmoe", {"num_experts": 4, "num_experts_per_tok": 2}, "num_experts", "intermediate_size"),
}


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``pruneframe_transformers.experts`` from the distribution pip-installed offline into a fresh folder."""
    site = install_offline(CONTRIB, tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site"))
    with installed_in_process(site, "pruneframe_transformers"):
        from pruneframe_transformers import experts as module

        yield module


def build(family: str) -> Any:
    model_type, fields, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **_DECODER, **fields)).eval()


def logits(model: Any, inputs: torch.Tensor = TEXT) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs).logits


def state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_experts_and_widths_go_with_router_counts_and_config_and_round_trip(experts: Any, family: str) -> None:
    model = build(family)
    _, _, count_field, width_field = FAMILIES[family]
    layers = experts.moe_layers(model)
    assert [layer.name for layer in layers] == ["model.layers.0.mlp", "model.layers.1.mlp"]

    removed = experts.prune_experts(model, ratio=0.25)
    narrowed = experts.prune_expert_widths(model, ratio=0.5)

    assert removed.describes_model and removed.changed == {count_field: 3}
    assert narrowed.describes_model and narrowed.changed == {width_field: 16}
    assert getattr(model.config, count_field) == 3 and getattr(model.config, width_field) == 16
    for layer in experts.moe_layers(model):
        assert tuple(layer.router.weight.shape) == (3, 64)
        assert layer.router.num_experts == layer.experts.num_experts == 3
        assert layer.experts.intermediate_dim == 16
        assert tuple(layer.experts.gate_up_proj.shape) == (3, 32, 64) and tuple(layer.experts.down_proj.shape) == (3, 64, 16)
    if family == "Qwen2-MoE":  # the shared expert is an ordinary MLP beside the routed ones: it keeps its width
        assert model.model.layers[0].mlp.shared_expert.gate_proj.out_features == 32
    pruned = logits(model)
    assert pruned.shape == (2, 10, 128) and torch.isfinite(pruned).all()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(logits(reloaded), pruned, rtol=0, atol=1e-5)


def test_kept_experts_compute_what_they_computed_and_an_uneven_prune_says_so(experts: Any) -> None:
    model = build("Mixtral")
    original = copy.deepcopy(model)
    status = experts.prune_experts(model, remove={"model.layers.0.mlp": [1]})

    layer, before = experts.moe_layers(model)[0], experts.moe_layers(original)[0]
    kept = torch.tensor([0, 2, 3])
    torch.testing.assert_close(layer.router.weight, before.router.weight[kept], rtol=0, atol=0)
    hidden = torch.randn(6, 64)
    index = torch.tensor([[0, 1], [2, 0], [1, 2], [0, 2], [2, 1], [1, 0]])
    weights = torch.rand(6, 2)
    with torch.no_grad():
        torch.testing.assert_close(layer.experts(hidden, index, weights), before.experts(hidden, kept[index], weights),
                                   rtol=0, atol=1e-6)
    assert experts.moe_layers(model)[1].num_experts == 4
    assert not status.describes_model and "layers differ" in status.reason
    assert [v for _, v in status.sizes["num_local_experts"]] == [3, 4]
    assert logits(model).shape == (2, 10, 128)


def test_a_narrower_expert_equals_the_original_with_the_lost_units_silenced(experts: Any) -> None:
    model = build("OLMoE")  # float32: the grouped-mm kernel takes no float64
    reference = copy.deepcopy(model)
    experts.prune_expert_widths(model, ratio=0.25)
    for layer, before in zip(experts.moe_layers(model), experts.moe_layers(reference)):
        with torch.no_grad():
            for e in range(layer.num_experts):  # find each kept unit by its down_proj column, silence the others
                now, then = layer.experts.down_proj[e], before.experts.down_proj[e]
                kept = [int((then - now[:, [j]]).abs().sum(0).argmin()) for j in range(now.shape[1])]
                assert len(set(kept)) == 24 and kept == sorted(kept)
                lost = sorted(set(range(32)) - set(kept))
                then[:, lost] = 0
    torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=1e-5)


def test_the_width_left_is_a_multiple_the_grouped_mm_kernel_runs_with(experts: Any) -> None:
    model = build("Mixtral")  # 32 units less 30% is 23; float32 rows of the fused kernel must be 16 bytes: 24 stay
    status = experts.prune_expert_widths(model, ratio=0.3)
    assert status.changed == {"intermediate_size": 24} and experts.moe_layers(model)[0].experts.intermediate_dim == 24
    assert logits(model).shape == (2, 10, 128)
    experts.prune_expert_widths(model, ratio=0.5, round_to=6)
    assert model.config.intermediate_size == 12
    with pytest.raises(ValueError, match=r"round_to=0: use a positive whole number"):
        experts.prune_expert_widths(model, ratio=0.5, round_to=0)


def test_removing_more_experts_than_top_k_allows_is_refused_and_the_model_is_untouched(experts: Any) -> None:
    model = build("Qwen3-MoE")
    before, config = state(model), model.config.to_dict()
    with pytest.raises(ValueError, match=r"leaves 1, fewer than the router's top-k \(num_experts_per_tok=2\)"):
        experts.prune_experts(model, remove={"model.layers.0.mlp": [0], "model.layers.1.mlp": [0, 1, 3]})
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.to_dict() == config and experts.moe_layers(model)[0].experts.num_experts == 4


def test_bad_arguments_are_refused_before_anything_changes(experts: Any) -> None:
    model = build("Mixtral")
    before = state(model)
    with pytest.raises(KeyError, match=r"\['model.layers.9.mlp'\] are not MoE layers"):
        experts.prune_experts(model, remove={"model.layers.9.mlp": [0]})
    with pytest.raises(IndexError, match=r"experts \[4\] are out of range; it has 4 experts"):
        experts.prune_experts(model, remove={"model.layers.0.mlp": [4]})
    with pytest.raises(ValueError, match="either ratio"):
        experts.prune_experts(model, ratio=0.25, remove={"model.layers.0.mlp": [0]})
    with pytest.raises(ValueError, match=r"ratio=1.5: use a fraction"):
        experts.prune_expert_widths(model, ratio=1.5)
    with pytest.raises(ValueError, match="importance='l7'"):
        experts.prune_experts(model, ratio=0.25, importance="l7")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4))
    with pytest.raises(ValueError, match="LlamaForCausalLM has no mixture-of-experts layer"):
        experts.prune_experts(llama, ratio=0.25)


def test_magnitude_removes_the_weakest_expert_of_each_layer(experts: Any) -> None:
    model = build("Qwen2-MoE")
    weakest = {0: 2, 1: 0}
    with torch.no_grad():
        for i, layer in enumerate(experts.moe_layers(model)):
            for t in (layer.router.weight, layer.experts.gate_up_proj, layer.experts.down_proj):
                t[weakest[i]] *= 1e-3
    originals = [layer.router.weight.clone() for layer in experts.moe_layers(model)]
    experts.prune_experts(model, ratio=0.25)
    for i, layer in enumerate(experts.moe_layers(model)):
        kept = [e for e in range(4) if e != weakest[i]]
        torch.testing.assert_close(layer.router.weight, originals[i][kept], rtol=0, atol=0)


def test_router_mass_is_the_mean_probability_per_token_and_picks_the_least_used_expert(experts: Any) -> None:
    model = build("Mixtral")
    routers = experts.router_modules(model)
    mass = RouterMassImportance()
    with pytest.raises(NotCalibratedError, match="has seen no batch"):
        mass.scores(routers[0])
    seen: list[torch.Tensor] = []
    grab = routers[0].register_forward_hook(lambda m, a, out: seen.append(torch.softmax(out[0].double(), -1)))
    batches = [TEXT, torch.randint(3, 128, (3, 7), generator=torch.Generator().manual_seed(1))]
    with mass.collect(routers):
        for batch in batches:
            logits(model, batch)
    grab.remove()
    expected = torch.cat(seen).mean(0).float()
    torch.testing.assert_close(mass.scores(routers[0]), expected)
    assert mass.scores(routers[0]).sum().item() == pytest.approx(1.0, abs=1e-5)

    least = [int(mass.scores(r).argmin()) for r in routers]
    originals = [r.weight.clone() for r in routers]
    experts.prune_experts(model, ratio=0.25, importance=mass)
    for router, weight, gone in zip(experts.router_modules(model), originals, least):
        torch.testing.assert_close(router.weight, weight[[e for e in range(4) if e != gone]], rtol=0, atol=0)


def test_expert_magnitude_is_the_norm_over_every_tensor_of_an_expert() -> None:
    router = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    fused = torch.tensor([[[4.0]], [[0.0]]])
    torch.testing.assert_close(expert_magnitude([router, fused]), torch.tensor([5.0, 1.0]))
    torch.testing.assert_close(expert_magnitude([router, fused], p=1), torch.tensor([7.0, 1.0]))
    with pytest.raises(ValueError, match=r"disagree on the number of experts along dim 0 \(\[2, 3\]\)"):
        expert_magnitude([router, torch.ones(3, 2)])


# --- through the dependency graph: MetaPruner, the plan, save_pretrained ------------------------------------------

def _meta_prune(model: Any, importance: Any = None, experts_ratio: float | None = None, **extra: Any) -> Any:
    import pruneframe as tp
    from pruneframe.importance.experts import ExpertRouter

    from pruneframe_transformers import router_modules

    if experts_ratio is not None:  # whole experts only when asked: routers become roots, with a ratio of their own
        extra = {"root_module_types": [torch.nn.Linear, ExpertRouter],
                 "pruning_ratio_dict": {router: experts_ratio for router in router_modules(model)}, **extra}
    importance = importance or tp.importance.MagnitudeImportance(p=2, target_types=[torch.nn.Linear, ExpertRouter, torch.nn.Parameter])
    pruner = tp.pruner.MetaPruner(model, TEXT, importance=importance, pruning_ratio=0.3,
                                  ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()], **extra)
    pruner.step()
    return pruner


def _plan_entries(model: Any) -> list[tuple[str, str, int]]:
    import pruneframe as tp

    return [(e["layer"], e["kind"], len(e["idxs"])) for step in tp.plan.get_plan(model)["steps"] for e in step]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_meta_pruner_narrows_every_expert_alike_and_keeps_whole_experts_unless_asked(experts: Any, family: str) -> None:
    import pruneframe as tp

    model = build(family)
    _, _, count_field, width_field = FAMILIES[family]
    with torch.no_grad():
        _meta_prune(model, tp.importance.MagnitudeImportance(p=2))
    layers = experts.moe_layers(model)
    assert [(layer.num_experts, layer.width) for layer in layers] == [(4, 24), (4, 24)]  # 30% of 32, in runs of 4 units
    assert getattr(model.config, count_field) == 4 and getattr(model.config, width_field) == 24
    entries = _plan_entries(model)
    assert ("model.layers.0.mlp.experts", "out", 8) in entries and not any(name.endswith(".mlp.gate") for name, _, _ in entries)
    _round_trips_and_replays(model, family)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_meta_pruner_removes_whole_experts_when_the_routers_are_roots(experts: Any, family: str) -> None:
    model = build(family)
    _, _, count_field, width_field = FAMILIES[family]
    with torch.no_grad():
        _meta_prune(model, experts_ratio=0.25)
    layers = experts.moe_layers(model)
    assert [(layer.num_experts, layer.width) for layer in layers] == [(3, 24), (3, 24)]
    assert all(layer.router.num_experts == layer.experts.num_experts == 3 for layer in layers)
    assert getattr(model.config, count_field) == 3 and getattr(model.config, width_field) == 24
    entries = _plan_entries(model)
    assert {("model.layers.1.mlp.gate", "out", 1), ("model.layers.1.mlp.experts.gate_up_proj", "out", 1),
            ("model.layers.1.mlp.experts.down_proj", "out", 1)} <= set(entries)
    _round_trips_and_replays(model, family)


def _round_trips_and_replays(model: Any, family: str) -> None:
    import pruneframe as tp

    expected = logits(model)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(logits(loaded), expected, rtol=0, atol=1e-6)
    fresh = build(family)
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model))
    torch.testing.assert_close(logits(fresh), expected, rtol=0, atol=0)


def _mixtral64() -> Any:
    model = build("Mixtral").double()
    model.config._experts_implementation = "eager"  # the grouped-mm kernel takes no float64 (nor widths off 16 bytes)
    with torch.no_grad():  # trained-looking routers: distinct logits, so top-k picks the same experts in both models
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(20)
    return model


def test_a_graph_prune_of_widths_and_experts_equals_the_original_with_them_masked(experts: Any) -> None:
    model = _mixtral64()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        _meta_prune(model, experts_ratio=0.25)
    assert [(layer.num_experts, layer.width) for layer in experts.moe_layers(model)] == [(3, 23), (3, 23)]
    removed: dict[str, list[int]] = {}
    for step in __import__("pruneframe").plan.get_plan(model)["steps"]:
        for entry in step:
            removed.setdefault(f"{entry['layer']}:{entry['kind']}", []).append(entry["idxs"])
    handles = []
    for k, layer in enumerate(reference.model.layers):
        (gone,) = removed[f"model.layers.{k}.mlp.gate:out"]
        (units,) = removed[f"model.layers.{k}.mlp.experts:out"]
        with torch.no_grad():  # a unit whose output weights are zero adds nothing; a masked expert is never chosen
            layer.mlp.experts.down_proj[:, :, units] = 0

        def route(router: Any, args: Any, output: Any, gone: list[int] = gone) -> Any:
            logits_ = torch.nn.functional.linear(args[0].reshape(-1, router.hidden_dim), router.weight)
            probs = torch.softmax(logits_.index_fill(-1, torch.tensor(gone), float("-inf")).float(), dim=-1)
            top, index = torch.topk(probs, router.top_k, dim=-1)
            return logits_, top / top.sum(-1, keepdim=True), index

        handles.append(layer.mlp.gate.register_forward_hook(route))
    try:
        torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=1e-12)
    finally:
        for handle in handles:
            handle.remove()


def test_router_mass_through_meta_pruner_removes_the_least_used_expert(experts: Any) -> None:
    import pruneframe as tp

    model = build("Qwen3-MoE")
    mass = RouterMassImportance(fallback=tp.importance.MagnitudeImportance(p=2))
    with torch.no_grad(), mass.collect(experts.router_modules(model)):
        model(TEXT)
    least = {layer.name: int(torch.argmin(mass.scores(layer.router))) for layer in experts.moe_layers(model)}
    with torch.no_grad():
        _meta_prune(model, mass, experts_ratio=0.25)
    entries = {e["layer"]: e["idxs"] for step in tp.plan.get_plan(model)["steps"] for e in step}
    assert {name: entries[f"{name}.gate"] for name in least} == {name: [e] for name, e in least.items()}
    assert [layer.width for layer in experts.moe_layers(model)] == [24, 24]  # the fallback scored the widths


def test_meta_pruner_leaves_experts_whole_where_top_k_would_be_broken(experts: Any) -> None:
    model = build("OLMoE")
    with pytest.warns(UserWarning, match="fewer than the router's top-k"):
        with torch.no_grad():
            _meta_prune(model, experts_ratio=0.75)
    assert [layer.num_experts for layer in experts.moe_layers(model)] == [4, 4]
    assert model.config.num_experts == 4


def test_expert_pruning_ratio_makes_every_router_a_root_with_that_ratio(experts: Any) -> None:
    import pruneframe as tp
    from pruneframe.importance.experts import ExpertRouter

    model = build("Mixtral")
    importance = tp.importance.MagnitudeImportance(p=2, target_types=[torch.nn.Linear, ExpertRouter, torch.nn.Parameter])
    ignored = [model.get_input_embeddings(), model.get_output_embeddings()]
    before = state(model)
    with pytest.raises(ValueError, match=r"expert_pruning_ratio=1.0: it must be a number in \[0, 1\)"):
        tp.pruner.MetaPruner(model, TEXT, importance, pruning_ratio=0.3, ignored_layers=ignored, expert_pruning_ratio=1.0)
    with pytest.raises(ValueError, match=r"expert_pruning_ratio='a quarter': it must be a number"):
        tp.pruner.MetaPruner(model, TEXT, importance, ignored_layers=ignored, expert_pruning_ratio="a quarter")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    with torch.no_grad():
        pruner = tp.pruner.MetaPruner(model, TEXT, importance, pruning_ratio=0.3, ignored_layers=ignored,
                                      expert_pruning_ratio=0.25)
        pruner.step()
    assert ExpertRouter in pruner.root_module_types
    layers = experts.moe_layers(model)
    assert [(layer.num_experts, layer.width) for layer in layers] == [(3, 24), (3, 24)]
    assert all(layer.router.num_experts == layer.experts.num_experts == 3 for layer in layers)
    assert model.config.num_local_experts == 3 and model.config.intermediate_size == 24
    entries = _plan_entries(model)
    assert {("model.layers.0.mlp.gate", "out", 1), ("model.layers.1.mlp.gate", "out", 1)} <= set(entries)
    _round_trips_and_replays(model, "Mixtral")


def test_expert_pruning_ratio_zero_keeps_experts_and_a_model_without_routers_is_told(experts: Any) -> None:
    import pruneframe as tp

    model = build("Mixtral")
    with torch.no_grad():
        _meta_prune(model, tp.importance.MagnitudeImportance(p=2), expert_pruning_ratio=0.0)
    assert [layer.num_experts for layer in experts.moe_layers(model)] == [4, 4]
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4))
    with pytest.raises(ValueError, match="expert_pruning_ratio=0.25: this model has no mixture-of-experts router"):
        tp.pruner.MetaPruner(llama, TEXT, tp.importance.MagnitudeImportance(p=2), expert_pruning_ratio=0.25)
