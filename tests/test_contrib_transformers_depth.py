"""Whole layers removed from Hugging Face models (``pruneframe.pruner.remove_layers`` with ``pruneframe-transformers``).

The distribution is installed offline into a temporary folder and used in this
process (``contrib_support``). Small models are built from configs (nothing is
downloaded). After a removal the model must compute what the same model built
with fewer layers computes (the kept weights loaded into it), its config must
say so (layer count, ``layer_types``, the kept attention modules' ``layer_idx``
-- all proven by the plugin's meta-device rebuild), ``save_pretrained`` +
``from_pretrained`` must give equal logits, generation with the key/value
cache must match generation without it, and the pruning plan must replay the
removal on a fresh model.
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from typing import Any, Iterator

import pytest
import torch

import pruneframe as tp

from contrib_support import contrib_plugin

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

IDS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
SMALL = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2)


@pytest.fixture(scope="module", autouse=True)
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from contrib_plugin(tmp_path_factory, "pruneframe-transformers")


def _families() -> dict[str, tuple[Any, Any]]:
    T = transformers
    return {
        "llama": (T.LlamaConfig(**SMALL), T.LlamaForCausalLM),
        # layers 2 and 3 use a sliding window: layer_types must lose the right entries
        "qwen2-sliding": (T.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=4, max_window_layers=2),
                          T.Qwen2ForCausalLM),
        "gemma2": (T.Gemma2Config(**SMALL, head_dim=16, sliding_window=4), T.Gemma2ForCausalLM),  # alternating layer_types
        "gpt2": (T.GPT2Config(vocab_size=128, n_embd=32, n_layer=4, n_head=4), T.GPT2LMHeadModel),  # n_layer
        "bert": (T.BertConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=4), T.BertForSequenceClassification),
    }


def _logits(model: Any, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _reference(config: Any, cls: type, kept: list[int]) -> Any:
    """``cls`` built with only the layers ``kept`` of ``config`` (their layer types too)."""
    smaller = copy.deepcopy(config)
    smaller.num_hidden_layers = len(kept)
    if getattr(smaller, "layer_types", None) is not None:
        smaller.layer_types = [config.layer_types[k] for k in kept]
    return cls(smaller).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2-sliding", "gemma2", "gpt2", "bert"])
def test_removed_layers_round_trip_and_generate(family: str, plugin: Any):
    config, cls = _families()[family]
    torch.manual_seed(0)
    model = cls(copy.deepcopy(config)).eval()
    layer_list = tp.pruner.layer_lists(model)[0].name
    gone = [1, 2]
    kept = [0, 3]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    reference = _reference(config, cls, kept)
    removed = tp.pruner.remove_layers(model, [f"{layer_list}.{k}" for k in gone])
    assert removed == [f"{layer_list}.1", f"{layer_list}.2"]
    assert model.config.num_hidden_layers == 2
    if getattr(config, "layer_types", None) is not None:
        assert model.config.layer_types == [config.layer_types[k] for k in kept]
    assert plugin.check_config(model) == []
    indices = [m.layer_idx for name, m in model.named_modules() if isinstance(getattr(m, "layer_idx", None), int)]
    assert indices and sorted(set(indices)) == [0, 1]

    # the same computation as the model built with two layers from the start, holding the kept layers
    reference.load_state_dict(model.state_dict())  # the kept layers under their new names
    assert torch.equal(_logits(model), _logits(reference))
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("error", plugin.ConfigMismatchWarning)
        model.save_pretrained(folder)
        loaded = cls.from_pretrained(folder).eval()
    assert len(loaded.get_submodule(layer_list)) == 2
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=1e-5)
    if hasattr(model, "generate"):
        prompt = IDS[:1, :4]
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
        assert cached.shape == (1, 10) and torch.equal(cached, uncached)
        assert torch.equal(cached, loaded.generate(prompt, max_new_tokens=6, do_sample=False))

    # the plan replays it on a freshly built model of the original config
    fresh = cls(copy.deepcopy(config)).eval()
    fresh.load_state_dict(original)
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model))
    assert fresh.config.num_hidden_layers == 2 and plugin.check_config(fresh) == []
    assert torch.equal(_logits(fresh), _logits(model))


def test_ranked_layers_after_a_width_prune_round_trip_and_replay(plugin: Any):
    config, cls = _families()["llama"]
    torch.manual_seed(0)
    model = cls(copy.deepcopy(config)).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [{"input_ids": IDS}, {"input_ids": IDS.flip(1)}]
    pruner = tp.pruner.MetaPruner(model, batches[0], tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.25,
                                  ignored_layers=[model.model.embed_tokens, model.lm_head])
    pruner.step()
    ranked = tp.pruner.rank_layers(model, batches)
    assert sorted(s.name for s in ranked) == [f"model.layers.{k}" for k in range(4)]
    assert all(0 < s.score < 2 for s in ranked)
    tp.pruner.remove_layers(model, ranked[:2])
    assert model.config.num_hidden_layers == 2 and model.config.intermediate_size == 48
    assert plugin.check_config(model) == []
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = cls.from_pretrained(folder).eval()
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=1e-5)
    fresh = cls(copy.deepcopy(config)).eval()
    fresh.load_state_dict(original)
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model))
    assert torch.equal(_logits(fresh), _logits(model))


def test_an_encoder_decoder_loses_decoder_layers_only(plugin: Any):
    T = transformers
    config = T.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=3, num_heads=4)
    torch.manual_seed(0)
    model = T.T5ForConditionalGeneration(copy.deepcopy(config)).eval()
    lists = {ll.name: ll.removable for ll in tp.pruner.layer_lists(model)}
    assert lists == {"encoder.block": (1, 2), "decoder.block": (1, 2)}  # block 0 holds the relative position bias
    tp.pruner.remove_layers(model, ["decoder.block.1"])
    assert (model.config.num_layers, model.config.num_decoder_layers) == (3, 2)
    assert plugin.check_config(model) == []
    inputs = {"input_ids": IDS, "decoder_input_ids": IDS[:, :5]}
    with torch.no_grad():
        expected = model(**inputs).logits
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = T.T5ForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=1e-5)


def test_losing_every_sliding_window_layer_clears_the_flag_the_model_keeps(plugin: Any):
    config, cls = _families()["qwen2-sliding"]
    model = cls(copy.deepcopy(config)).eval()
    assert model.model.has_sliding_layers
    tp.pruner.remove_layers(model, [2, 3])
    assert model.config.layer_types == ["full_attention", "full_attention"]
    assert model.model.has_sliding_layers is False and plugin.check_config(model) == []


def test_layers_deleted_by_hand_leave_the_config_marked_with_the_way_out(plugin: Any):
    config, cls = _families()["gemma2"]
    model = cls(copy.deepcopy(config)).eval()
    del model.model.layers[1]
    status = plugin.sync_config(model)
    assert not status.describes_model
    assert "lost blocks outside pruneframe.pruner.remove_layers" in status.reason
    assert "layer_types" in status.reason
    assert model.config.num_hidden_layers == 4  # left as it was: from_pretrained stops instead of loading a wrong model
    assert "model.layers with 4 blocks where the model has 3" in plugin.check_config(model)
