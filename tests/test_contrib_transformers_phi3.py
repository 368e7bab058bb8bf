"""Phi-3's fused ``qkv_proj`` loses whole key/value groups: its attention slices the fused output at bounds computed
from the config, and the slice check after each prune confirms the pruned model slices where the surviving
channels are (``pruneframe.graph.slice_bounds``); before, those slices pinned every qkv channel.

The contrib ``pruneframe-transformers`` distribution is installed offline into a temporary folder (its config
fix-up updates ``num_attention_heads`` / ``num_key_value_heads``). A small Phi-3 is built from a config.
"""
from __future__ import annotations

import tempfile
import warnings
from typing import Any, Iterator

import pytest
import torch

import pruneframe as tp
from pruneframe.testing import check_prune_equivalence

from contrib_support import contrib_plugin

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, Phi3Config  # noqa: E402

pytestmark = pytest.mark.slow

TEXT = {"input_ids": torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))}
HEAD_DIM = 16  # hidden 64 / 4 heads; qkv_proj: 4 query heads [0:64], 2 key heads [64:96], 2 value heads [96:128]


@pytest.fixture(scope="module", autouse=True)
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from contrib_plugin(tmp_path_factory, "pruneframe-transformers")


def phi3() -> Any:
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return AutoModelForCausalLM.from_config(config).eval()


def logits(model: Any, inputs: Any) -> torch.Tensor:
    return model(**inputs).logits


def kv_group(g: int) -> list[int]:
    """qkv_proj's output channels of key/value group ``g``: its two query heads, its key head, its value head."""
    query = list(range(2 * g * HEAD_DIM, (2 * g + 2) * HEAD_DIM))
    return query + [64 + g * HEAD_DIM + i for i in range(HEAD_DIM)] + [96 + g * HEAD_DIM + i for i in range(HEAD_DIM)]


def test_a_query_head_takes_its_whole_key_value_group_through_the_fused_projection() -> None:
    model = phi3()
    graph = tp.DependencyGraph().build_dependency(model, TEXT, forward_fn=logits)
    attention = model.model.layers[0].self_attn
    assert [(s.start, s.end) for s in graph._trace.slices[:3]] == [(0, 64), (64, 96), (96, 128)]
    group = graph.get_pruning_group(attention.qkv_proj, tp.prune_linear_out_channels, list(range(HEAD_DIM)))
    found = {dep.target.name: idxs for dep, idxs in group}
    assert found == {"model.layers.0.self_attn.qkv_proj": kv_group(0), "model.layers.0.self_attn.o_proj": list(range(32))}


def test_one_kv_group_per_layer_is_exact() -> None:
    def step(graph: tp.DependencyGraph, model: Any) -> None:
        with graph.one_run_check():  # the config states the prune once every layer has lost its group
            for g, layer in enumerate(model.model.layers):
                graph.get_pruning_group(layer.self_attn.qkv_proj, tp.prune_linear_out_channels, kv_group(g)).prune()

    error, pruned, _ = check_prune_equivalence(phi3(), TEXT, step, forward_fn=logits)
    attention = pruned.model.layers[1].self_attn
    assert (attention.qkv_proj.out_features, attention.o_proj.in_features, attention.num_key_value_heads) == (64, 32, 1)
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (2, 1)
    assert error < 1e-9


def test_meta_pruner_removes_whole_kv_groups_and_the_model_round_trips() -> None:
    model = phi3()
    before = sum(p.numel() for p in model.parameters())
    heads = {layer.self_attn.qkv_proj: 8 for layer in model.model.layers}  # 4 query + 2 key + 2 value heads of 16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MetaPruner(model, TEXT, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, num_heads=heads,
                                      prune_num_heads=True, head_pruning_ratio=0.5,
                                      ignored_layers=[model.model.embed_tokens, model.lm_head], forward_fn=logits)
        pruner.step()
    assert not [w for w in caught if "left whole" in str(w.message)] and pruner.left_whole == []
    for layer in model.model.layers:
        attention = layer.self_attn
        assert attention.qkv_proj.out_features == 64 and attention.o_proj.in_features == 32  # one kv group of 64 and 32 left
        assert (attention.num_key_value_heads, attention.num_key_value_groups) == (1, 2)
        assert layer.mlp.gate_up_proj.out_features == 128
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.intermediate_size) == (2, 1, 64)
    assert list(pruner.num_heads.values()) == [4, 4]
    assert (before, sum(p.numel() for p in model.parameters())) == (90432, 53568)
    with torch.no_grad():
        out = logits(model, TEXT)
        assert out.shape == (2, 10, 128)
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert reloaded.config.num_attention_heads == 2 and torch.equal(out, logits(reloaded, TEXT))


def test_a_prune_the_config_cannot_follow_is_undone() -> None:
    """Layer 0 alone loses a group: no config states that, the forward still slices qkv for 4 query heads and fails."""
    model = phi3()
    graph = tp.DependencyGraph().build_dependency(model, TEXT, forward_fn=logits)
    attention = model.model.layers[0].self_attn
    with pytest.raises(tp.ModelStopsRunningError, match="no longer runs"):
        graph.get_pruning_group(attention.qkv_proj, tp.prune_linear_out_channels, kv_group(0)).prune()
    assert attention.qkv_proj.out_features == 128 and model.config.num_attention_heads == 4


def test_without_run_checks_the_slices_pin_qkv_as_before() -> None:
    model = phi3()
    graph = tp.DependencyGraph().build_dependency(model, TEXT, forward_fn=logits, verify_prunes="never")
    attention = model.model.layers[0].self_attn
    assert not graph.check_pruning_group(graph.get_pruning_group(attention.qkv_proj, tp.prune_linear_out_channels, [0]))
