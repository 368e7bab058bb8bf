"""Grouped-query attention loses query heads inside each key/value group (8 query / 2 key-value heads -> 4 / 2).

``MetaPruner(prune_query_heads=True)`` removes query heads -- their ``q_proj``
rows and ``o_proj`` input columns -- while every key/value head stays, the same
number from every group. Exactness is checked against the original model with
the removed heads masked (their ``o_proj`` input columns zeroed), in float64,
for three ways of repeating key/value heads (expand + reshape, repeat_interleave,
attention with ``enable_gqa``); a small LLaMA built from its config is pruned
the same way and round-trips ``save_pretrained`` -> ``from_pretrained``.
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruneframe as tp

from contrib_support import contrib_plugin

HEADS, KV_HEADS, HEAD_DIM, WIDTH = 8, 2, 8, 32
X = torch.randn(2, 5, WIDTH, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


class GroupedQueryAttention(nn.Module):
    """Attention whose key/value heads are repeated across their query heads, in one of three spellings."""

    def __init__(self, repeat: str, stored_repeat: bool = False):
        super().__init__()
        self.repeat, self.stored_repeat = repeat, stored_repeat
        self.n_rep = HEADS // KV_HEADS  # read only with stored_repeat: a size the code keeps
        self.q_proj = nn.Linear(WIDTH, HEADS * HEAD_DIM)
        self.k_proj = nn.Linear(WIDTH, KV_HEADS * HEAD_DIM)
        self.v_proj = nn.Linear(WIDTH, KV_HEADS * HEAD_DIM)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, HEAD_DIM).transpose(1, 2)
        n_rep = self.n_rep if self.stored_repeat else q.shape[1] // k.shape[1]
        if self.repeat == "enable_gqa":
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            if self.repeat == "expand":
                k = k[:, :, None].expand(b, k.shape[1], n_rep, s, HEAD_DIM).reshape(b, -1, s, HEAD_DIM)
                v = v[:, :, None].expand(b, v.shape[1], n_rep, s, HEAD_DIM).reshape(b, -1, s, HEAD_DIM)
            else:
                k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
            scores = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM ** 0.5, dim=-1)
            out = scores @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    """Attention between two fixed projections, so no channel reaches the model's input or output."""

    def __init__(self, repeat: str, stored_repeat: bool = False):
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(WIDTH, WIDTH), GroupedQueryAttention(repeat, stored_repeat), nn.Linear(WIDTH, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.attn(self.inp(x)))


def kept_heads(original: nn.Linear, pruned: nn.Linear, head_dim: int) -> list[int]:
    """Which of ``original``'s output heads ``pruned`` still has, read from the weights themselves."""
    rows = original.weight.reshape(-1, head_dim, original.weight.shape[1])
    kept = []
    for head in pruned.weight.reshape(-1, head_dim, pruned.weight.shape[1]):
        [match] = [h for h in range(rows.shape[0]) if torch.equal(rows[h], head)]
        kept.append(match)
    return kept


def masked(model: nn.Module, o_proj_name: str, removed: list[int], head_dim: int) -> nn.Module:
    """A copy of ``model`` with the ``o_proj`` input columns of the ``removed`` query heads zeroed."""
    reference = copy.deepcopy(model)
    o_proj = reference.get_submodule(o_proj_name)
    with torch.no_grad():
        for h in removed:
            o_proj.weight[:, h * head_dim:(h + 1) * head_dim] = 0
    return reference


def prune(model: nn.Module, inputs: Any, **kwargs: Any) -> tuple[tp.pruner.MetaPruner, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MetaPruner(model, inputs, tp.importance.MagnitudeImportance(p=2), prune_query_heads=True, **kwargs)
        for _ in range(pruner.iterative_steps):
            pruner.step()
    return pruner, [str(w.message) for w in caught]


@pytest.mark.parametrize("repeat", ["expand", "repeat_interleave", "enable_gqa"])
def test_query_heads_go_inside_each_key_value_group_and_the_prune_is_exact(repeat: str) -> None:
    torch.manual_seed(0)
    model = Block(repeat).double().eval()
    original = copy.deepcopy(model)
    _, warned = prune(model, X, pruning_ratio=0.5, ignored_layers=[model.inp, model.attn.o_proj, model.out])
    attn = model.attn
    kept = kept_heads(original.attn.q_proj, attn.q_proj, HEAD_DIM)
    removed = sorted(set(range(HEADS)) - set(kept))
    with torch.no_grad():
        error = (model(X) - masked(original, "attn.o_proj", removed, HEAD_DIM)(X)).abs().max().item()
    assert warned == []
    assert (attn.q_proj.out_features, attn.o_proj.in_features) == (4 * HEAD_DIM, 4 * HEAD_DIM)
    assert (attn.k_proj.out_features, attn.v_proj.out_features) == (KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM)  # every kv head
    assert torch.equal(attn.k_proj.weight, original.attn.k_proj.weight)
    assert [sum(h // 4 == g for h in removed) for g in range(KV_HEADS)] == [2, 2]  # the same number from each group
    assert error < 1e-12


def test_each_group_loses_its_own_weakest_query_heads_over_iterative_steps() -> None:
    torch.manual_seed(0)
    model = Block("expand").double().eval()
    with torch.no_grad():  # make heads 1, 2 (group 0) and 4, 7 (group 1) the weakest by far
        for h in (1, 2, 4, 7):
            model.attn.q_proj.weight[h * HEAD_DIM:(h + 1) * HEAD_DIM] *= 1e-3
            model.attn.o_proj.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] *= 1e-3
    original = copy.deepcopy(model)
    widths = []
    pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), prune_query_heads=True, pruning_ratio=0.5,
                                  iterative_steps=2, ignored_layers=[model.inp, model.attn.o_proj, model.out])
    for _ in range(2):
        pruner.step()
        widths.append(model.attn.q_proj.out_features // HEAD_DIM)
    assert widths == [6, 4]  # one query head per group, then another
    assert kept_heads(original.attn.q_proj, model.attn.q_proj, HEAD_DIM) == [0, 3, 5, 6]
    assert model.attn.k_proj.out_features == KV_HEADS * HEAD_DIM
    history = pruner.pruning_history()  # both steps' prunes, though the pruner traced the model again after each
    assert [sorted({r.name for r in step}) for step in history] == [["attn.o_proj", "attn.q_proj"]] * 2


def test_an_interactive_step_yields_the_query_heads_first_and_num_heads_follows() -> None:
    torch.manual_seed(0)
    model = Block("enable_gqa").double().eval()
    pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), prune_query_heads=True, pruning_ratio=0.5,
                                  num_heads={model.attn.q_proj: HEADS}, ignored_layers=[model.inp, model.attn.o_proj, model.out])
    seen = []
    for group in pruner.step(interactive=True):
        seen.append({dep.target.name: len(idxs) for dep, idxs in group})
        group.prune()
    assert seen[0] == {"attn.q_proj": 4 * HEAD_DIM, "attn.o_proj": 4 * HEAD_DIM}  # four query heads, no key/value channel
    assert pruner.num_heads[model.attn.q_proj] == 4
    assert model.attn.k_proj.out_features == KV_HEADS * HEAD_DIM
    with torch.no_grad():
        assert model(X).shape == (2, 5, 4)


def test_without_prune_query_heads_a_key_value_group_goes_whole() -> None:
    torch.manual_seed(0)
    model = Block("expand").double().eval()
    pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=[model.inp, model.attn.o_proj, model.out])
    pruner.step()
    assert (model.attn.q_proj.out_features, model.attn.k_proj.out_features) == (4 * HEAD_DIM, 1 * HEAD_DIM)


def test_a_repeat_count_the_code_keeps_leaves_the_query_heads_whole_with_a_warning() -> None:
    torch.manual_seed(0)
    model = Block("repeat_interleave", stored_repeat=True).double().eval()
    original = copy.deepcopy(model)
    pruner, warned = prune(model, X, pruning_ratio=0.5, ignored_layers=[model.inp, model.attn.o_proj, model.out])
    [message] = [w for w in warned if "query heads" in w]
    assert "attn.q_proj" in message and "no longer runs" in message
    assert model.attn.q_proj.out_features == HEADS * HEAD_DIM and torch.equal(model.attn.o_proj.weight, original.attn.o_proj.weight)
    assert any("no longer runs" in why for _, why in pruner.left_whole)
    with torch.no_grad():
        assert torch.equal(model(X), original(X))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"prune_query_heads": "yes"}, TypeError, ["prune_query_heads='yes'", "True or False"]),
    ({"prune_query_heads": True, "target_params": 0.5}, ValueError, ["target_params", "pass pruning_ratio instead"]),
])
def test_bad_query_head_arguments_are_refused_before_anything_runs(kwargs: dict[str, Any], error: type, words: list[str]) -> None:
    model = Block("expand").double().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error) as caught:
        tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), **kwargs)
    assert all(w in str(caught.value) for w in words)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- a LLaMA from transformers, with the contrib plugin installed -------------------------------------------------


@pytest.fixture(scope="module")
def transformers_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("transformers")
    yield from contrib_plugin(tmp_path_factory, "pruneframe-transformers")


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # repeated by attention with enable_gqa / by expand + reshape
def test_llama_8_query_2_key_value_heads_to_4_2_is_exact_and_round_trips(transformers_plugin: Any, attention: str) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    config._attn_implementation = attention
    model = LlamaForCausalLM(config).double().eval()
    original = copy.deepcopy(model)
    inputs = {"input_ids": torch.randint(0, 128, (2, 10))}

    def logits(m: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(**x).logits

    _, warned = prune(model, inputs, pruning_ratio=0.5, forward_fn=logits,
                      ignored_layers=[model.model.embed_tokens, model.lm_head], root_module_types=[nn.Linear],
                      pruning_ratio_dict={layer.mlp: 0.0 for layer in model.model.layers})
    reference = original
    for i, (before, after) in enumerate(zip(original.model.layers, model.model.layers)):
        removed = sorted(set(range(8)) - set(kept_heads(before.self_attn.q_proj, after.self_attn.q_proj, 16)))
        assert [sum(h // 4 == g for h in removed) for g in range(2)] == [2, 2]
        reference = masked(reference, f"model.layers.{i}.self_attn.o_proj", removed, 16)
    with torch.no_grad():
        error = (logits(model, inputs) - logits(reference, inputs)).abs().max().item()
    heads = [(a.q_proj.out_features // 16, a.k_proj.out_features // 16, a.num_key_value_groups)
                 for a in (layer.self_attn for layer in model.model.layers)]
    assert warned == []
    assert heads == [(4, 2, 2), (4, 2, 2)]
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (4, 2, 16)
    assert error < 1e-10
    assert transformers_plugin.check_config(model) == []
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation=attention).eval()
    with torch.no_grad():
        assert torch.equal(logits(model, inputs), logits(reloaded, inputs))
    assert [str(w.message) for w in caught if "config" in str(w.message).lower()] == []
    assert reloaded.config.num_attention_heads == 4 and reloaded.model.layers[1].self_attn.num_key_value_groups == 2


@pytest.mark.slow
def test_query_heads_no_config_can_state_are_left_whole_so_the_model_loads(transformers_plugin: Any) -> None:
    """8 query / 2 key-value heads at 25%: 6 query heads, which LlamaConfig refuses for a hidden size of 64. Pruned one
    attention at a time, the first looks merely uneven; the check builds its sizes as a config, so both stay whole."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    inputs = {"input_ids": torch.randint(0, 128, (2, 10))}
    found = {}
    for keep_loadable in (True, False):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        _, warned = prune(model, inputs, pruning_ratio=0.25, forward_fn=lambda m, x: m(**x).logits,
                          ignored_layers=[model.model.embed_tokens, model.lm_head], root_module_types=[nn.Linear],
                          pruning_ratio_dict={layer.mlp: 0.0 for layer in model.model.layers}, keep_loadable=keep_loadable)
        found[keep_loadable] = {"q": [layer.self_attn.q_proj.out_features for layer in model.model.layers],
                                "marker": getattr(model.config, transformers_plugin.MARKER, None), "warned": warned,
                                "model": model}
    kept = found[True]
    assert kept["q"] == [128, 128] and kept["marker"] is None
    assert len(kept["warned"]) == 2 and all("not a multiple of the number of attention heads (6)" in w for w in kept["warned"])
    with tempfile.TemporaryDirectory() as folder:
        kept["model"].save_pretrained(folder)
        AutoModelForCausalLM.from_pretrained(folder)  # loads: nothing the config cannot say
    assert found[False]["q"] == [96, 96] and "LlamaConfig cannot describe" in found[False]["marker"]["reason"]
