"""Plan on the meta device with weights read from a safetensors checkpoint, then stream the prune into a new directory.

The streamed result must equal pruning the model in memory (tensor by tensor,
then logits after ``from_pretrained``), and bad checkpoints or output paths
must be refused before anything is written, leaving the source as it was.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import pruneframe as tp
from pruneframe.plan import get_plan, plan_from_json
from pruneframe.checkpoint import Checkpoint, CheckpointError, CheckpointImportance, LayerLoader, open_for_planning, save_pruned

from contrib_support import contrib_plugin



def digest(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` and the hash of its bytes: equal digests mean nothing was changed."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 24), nn.LayerNorm(24), nn.Linear(24, 3))


def sharded(model: nn.Module, directory: Path, per_shard: int = 2) -> Path:
    """``model``'s state dict as safetensors shards of ``per_shard`` tensors each, with an index."""
    directory.mkdir()
    names = list(model.state_dict())
    chunks = [names[i:i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map = {}
    for k, chunk in enumerate(chunks):
        shard = f"model-{k + 1:05d}-of-{len(chunks):05d}.safetensors"
        save_file({n: model.state_dict()[n].contiguous() for n in chunk}, str(directory / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in chunk})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "tokenizer.json").write_text('{"stand-in": "a tokenizer file is copied as it is"}')
    return directory


def plan_on_meta(template: nn.Module, checkpoint: Checkpoint, ratio: float = 0.4) -> tuple[nn.Module, LayerLoader]:
    with torch.device("meta"):
        model = copy.deepcopy(template).to("meta")
    loader = LayerLoader(model, copy.deepcopy(model), checkpoint)
    importance = CheckpointImportance(tp.importance.MagnitudeImportance(p=2), loader)
    tp.pruner.MetaPruner(model, torch.zeros(2, 6, device="meta"), importance=importance, pruning_ratio=ratio,
                         ignored_layers=[model[4]]).step()
    return model, loader


def test_a_streamed_prune_equals_the_prune_in_memory(tmp_path: Path) -> None:
    real = mlp()
    source = sharded(real, tmp_path / "source")
    before = digest(source)
    planned, loader = plan_on_meta(real, Checkpoint(source))
    in_memory = copy.deepcopy(real)
    tp.pruner.MetaPruner(in_memory, torch.randn(2, 6), importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.4,
                         ignored_layers=[in_memory[4]]).step()
    assert in_memory[0].out_features < 32 and in_memory[2].out_features < 24  # both widths were pruned
    out = save_pruned(planned, loader, tmp_path / "out")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    streamed = {name: t for shard in sorted(set(index["weight_map"].values())) for name, t in load_file(str(out / shard)).items()}
    expected = in_memory.state_dict()
    assert streamed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(streamed[name], tensor), name
    assert sorted(set(index["weight_map"].values())) == sorted(p.name for p in source.glob("*.safetensors"))
    assert (out / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    assert plan_from_json(str(out / "pruning_plan.json")) == get_plan(planned)
    assert digest(source) == before


def test_checkpoint_importance_gives_the_scores_of_the_weights_in_memory(tmp_path: Path) -> None:
    real = mlp()
    checkpoint = Checkpoint(sharded(real, tmp_path / "source"))
    with torch.device("meta"):
        meta = copy.deepcopy(real).to("meta")
    loader = LayerLoader(meta, copy.deepcopy(meta), checkpoint)
    wrapped, plain = CheckpointImportance(tp.importance.MagnitudeImportance(p=1), loader), tp.importance.MagnitudeImportance(p=1)
    meta_graph = tp.DependencyGraph().build_dependency(meta, torch.zeros(2, 6, device="meta"))
    real_graph = tp.DependencyGraph().build_dependency(real, torch.randn(2, 6))
    meta_groups = list(meta_graph.get_all_groups(ignored_layers=[meta[4]]))
    real_groups = list(real_graph.get_all_groups(ignored_layers=[real[4]]))
    assert len(meta_groups) == len(real_groups) == 2
    for on_meta, in_memory in zip(meta_groups, real_groups):
        assert torch.allclose(wrapped(on_meta), plain(in_memory), rtol=1e-6, atol=0)
    assert meta[0].weight.is_meta  # the layers were onloaded only while they were read


def test_checkpoint_importance_refuses_a_criterion_that_needs_gradients(tmp_path: Path) -> None:
    loader = LayerLoader(mlp(), mlp(), Checkpoint(sharded(mlp(), tmp_path / "source")))
    with pytest.raises(TypeError, match="TaylorImportance reads gradients"):
        CheckpointImportance(tp.importance.TaylorImportance(), loader)


# --- bad input: refused before any write, the source left as it was --------------------------------------------------
def _missing_shard(d: Path) -> str:
    next(d.glob("model-00002-*.safetensors")).unlink()
    return "names shard files that are not in"


def _garbage_header(d: Path) -> str:
    next(d.glob("model-00001-*.safetensors")).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    return "its header is not JSON"


def _truncated(d: Path) -> str:
    shard = next(d.glob("model-00002-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-7])
    return "is truncated or damaged"


def _index_disagrees(d: Path) -> str:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["0.weight"] = next(d.glob("model-00003-*.safetensors")).name
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return "puts tensors in shards that do not hold them"


def _damaged_index(d: Path) -> str:
    (d / "model.safetensors.index.json").write_text("{ not json")
    return "is not a safetensors index"


def _no_safetensors(d: Path) -> str:
    for f in d.glob("model*"):
        f.unlink()
    torch.save({}, d / "pytorch_model.bin")
    return r"weights found: \['pytorch_model\.bin'\]\); streaming reads safetensors"


@pytest.mark.parametrize("damage", [_missing_shard, _garbage_header, _truncated, _index_disagrees, _damaged_index, _no_safetensors])
def test_a_damaged_checkpoint_is_refused_on_opening(tmp_path: Path, damage: Any) -> None:
    source = sharded(mlp(), tmp_path / "source")
    message = damage(source)
    before = digest(source)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(source)
    assert digest(source) == before


def test_weights_that_do_not_fit_the_model_are_refused_with_the_names(tmp_path: Path) -> None:
    checkpoint = Checkpoint(sharded(mlp(), tmp_path / "source"))
    other = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 20), nn.LayerNorm(20), nn.Linear(20, 3))
    with pytest.raises(CheckpointError, match=r"other shapes: 2\.weight: \(24, 32\) here, \(20, 32\) in the model"):
        checkpoint.check_fits(other)


@pytest.mark.parametrize("where", ["exists", "source", "inside", "no-parent"])
def test_a_bad_output_directory_is_refused_before_anything_is_written(tmp_path: Path, where: str) -> None:
    source = sharded(mlp(), tmp_path / "source")
    planned, loader = plan_on_meta(mlp(), Checkpoint(source))
    out = {"exists": tmp_path / "taken", "source": source, "inside": source / "pruned", "no-parent": tmp_path / "a" / "b"}[where]
    if where == "exists":
        out.mkdir()
    before, listing = digest(source), sorted(os.listdir(tmp_path))
    message = {"exists": "exists; give a new directory", "source": "is the checkpoint being read, or inside it",
               "inside": "is the checkpoint being read, or inside it", "no-parent": "its parent .* is not a directory"}[where]
    with pytest.raises(CheckpointError, match=message):
        save_pruned(planned, loader, out)
    assert digest(source) == before and sorted(os.listdir(tmp_path)) == listing


def test_an_interrupted_write_leaves_no_output_and_the_source_as_it_was(tmp_path: Path) -> None:
    source = sharded(mlp(), tmp_path / "source")
    planned, loader = plan_on_meta(mlp(), Checkpoint(source))
    before, listing = digest(source), sorted(os.listdir(tmp_path))
    written = []

    def interrupt(nbytes: int, shard: str) -> None:
        written.append(shard)
        if len(written) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_pruned(planned, loader, tmp_path / "out", progress=interrupt)
    assert digest(source) == before and sorted(os.listdir(tmp_path)) == listing  # no "out", no partial directory


# --- a Hugging Face checkpoint, through the contrib plugin ----------------------------------------------------------
@pytest.fixture(scope="module")
def transformers_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("transformers")
    yield from contrib_plugin(tmp_path_factory, "pruneframe-transformers")


@pytest.mark.slow
@pytest.mark.parametrize("tied", [False, True])
def test_a_sharded_llama_streamed_loads_with_the_logits_of_the_prune_in_memory(tmp_path: Path, transformers_plugin: Any,
                                                                               tied: bool) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).eval()
    source = tmp_path / "source"
    model.save_pretrained(source, max_shard_size="40KB")
    assert len(list(source.glob("*.safetensors"))) > 5
    (source / "tokenizer_config.json").write_text("{}")
    before = digest(source)
    x = torch.randint(0, 128, (2, 12))
    in_memory = copy.deepcopy(model)
    kwargs = dict(pruning_ratio=0.3, round_to=4, ignored_layers=[] if tied else [in_memory.lm_head])
    tp.pruner.MetaPruner(in_memory, {"input_ids": x}, importance=tp.importance.MagnitudeImportance(p=2),
                         forward_fn=lambda m, i: m(**i).logits, **kwargs).step()
    session = open_for_planning(source)
    planned = session.model
    assert planned.model.layers[0].mlp.up_proj.weight.is_meta
    kwargs["ignored_layers"] = [] if tied else [planned.lm_head]
    tp.pruner.MetaPruner(planned, session.example_inputs, importance=session.importance(tp.importance.MagnitudeImportance(p=2)),
                         forward_fn=session.forward, **kwargs).step()
    out = session.save(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert in_memory.config.hidden_size == loaded.config.hidden_size == 44
    assert in_memory.config.intermediate_size == loaded.config.intermediate_size == 88
    expected, got = in_memory.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    with torch.no_grad():
        assert torch.equal(in_memory(x).logits, loaded(x).logits)
    assert (out / "tokenizer_config.json").exists() and digest(source) == before


@pytest.mark.slow
def test_a_checkpoint_whose_shapes_disagree_with_its_config_is_refused(tmp_path: Path, transformers_plugin: Any) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "source")
    edited = json.loads((tmp_path / "source" / "config.json").read_text())
    edited["intermediate_size"] = 96
    (tmp_path / "source" / "config.json").write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=r"do not fit the model its config builds .*mlp\.down_proj\.weight: \(64, 128\) here, "
                                              r"\(64, 96\) in the model"):
        open_for_planning(tmp_path / "source")


@pytest.mark.slow
def test_activation_calibration_onloads_each_layer_and_gives_the_plan_made_in_memory(tmp_path: Path,
                                                                                     transformers_plugin: Any) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "source", max_shard_size="40KB")
    batches = [{"input_ids": torch.randint(0, 128, (1, 10))} for _ in range(3)]
    in_memory = copy.deepcopy(model)
    kwargs = dict(pruning_ratio=0.3, round_to=4)
    pruner = tp.pruner.MetaPruner(in_memory, batches[0], importance=tp.importance.ActivationImportance(),
                                  ignored_layers=[in_memory.lm_head], forward_fn=lambda m, i: m(**i).logits, **kwargs)
    pruner.calibrate(batches)
    pruner.step()
    session = open_for_planning(tmp_path / "source")
    planned = session.model
    with session.loader.onloading(), torch.no_grad():  # the planned model runs for real, one onloaded layer at a time
        assert torch.equal(planned(**batches[0]).logits, model(**batches[0]).logits)
    assert planned.model.layers[1].mlp.down_proj.weight.is_meta  # and holds no weights afterwards
    pruner = tp.pruner.MetaPruner(planned, session.example_inputs, importance=tp.importance.ActivationImportance(),
                                  ignored_layers=[planned.lm_head], forward_fn=session.forward, **kwargs)
    with session.loader.onloading():
        pruner.calibrate(batches)
    pruner.step()
    assert get_plan(planned) == get_plan(in_memory)


@pytest.mark.slow
def test_removed_layers_and_narrower_ones_stream_like_the_prune_in_memory(tmp_path: Path, transformers_plugin: Any) -> None:
    """Blocks removed after a width prune: the output drops their tensors and renumbers the rest, as in memory."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "source", max_shard_size="60KB")
    x = torch.randint(0, 128, (2, 9))

    def prune(m: Any, inputs: Any, forward: Any, importance: Any) -> None:
        tp.pruner.MetaPruner(m, inputs, importance=importance, pruning_ratio=0.25, ignored_layers=[m.lm_head, m.model.embed_tokens],
                             forward_fn=forward).step()
        tp.pruner.remove_layers(m, ["model.layers.1", "model.layers.2"])
        tp.pruner.MetaPruner(m, inputs, importance=importance, pruning_ratio=0.25, ignored_layers=[m.lm_head, m.model.embed_tokens],
                             forward_fn=forward).step()

    in_memory = copy.deepcopy(model)
    prune(in_memory, {"input_ids": x}, lambda m, i: m(**i).logits, tp.importance.MagnitudeImportance(p=2))
    session = open_for_planning(tmp_path / "source")
    prune(session.model, session.example_inputs, session.forward, session.importance(tp.importance.MagnitudeImportance(p=2)))
    out = session.save(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config.num_hidden_layers == 2 and loaded.config.intermediate_size == in_memory.config.intermediate_size == 72
    expected, got = in_memory.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    with torch.no_grad():
        assert torch.equal(in_memory(x).logits, loaded(x).logits)
