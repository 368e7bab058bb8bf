"""The contrib ``pruneframe-transformers`` distribution prunes Hugging Face models and keeps them consistent.

The distribution is installed offline into a temporary ``--target`` folder,
and for this module's tests that folder is put on ``sys.path`` with a fresh
process-wide plugin registry (``installed_in_process``), so the plugin is found
through its entry point exactly as after ``pip install``. Small LLaMA, Qwen2,
BERT, ViT and GPT-2 models are built from configs (no weights are downloaded).
Attention-head and MLP-width prunes are checked exactly with
``pruneframe.testing`` (float64), with the embeddings ignored so that no hidden
channel crossing a LayerNorm/RMSNorm is pruned.
"""
from __future__ import annotations

import io
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

import pruneframe as tp
from pruneframe.registry import build_registry
from pruneframe.testing import check_prune_equivalence, prune_random

from contrib_support import install_offline, installed_in_process, run_python, run_readme_example

pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForMaskedLM, AutoModelForSequenceClassification, BertConfig,
    BertForMaskedLM, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
    Qwen2ForCausalLM, ViTConfig, ViTForImageClassification,
)
from transformers.models.llama.modeling_llama import LlamaMLP  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

pytestmark = pytest.mark.slow

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "pruneframe-transformers"
TEXT = {"input_ids": torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))}
IMAGE = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contrib distribution, pip-installed offline into a fresh ``--target`` folder."""
    return install_offline(CONTRIB, tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module", autouse=True)
def plugin(installed: Path) -> Iterator[Any]:
    """Every test here runs with the installed plugin in the process-wide registry; yields its package."""
    with installed_in_process(installed, "pruneframe_transformers"):
        import pruneframe_transformers

        yield pruneframe_transformers


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


TEXT = {"input_ids": torch.randint(0, 128, (2, 10))}
IMAGE = {"pixel_values": torch.randn(2, 3, 32, 32)}


def logits(model, inputs):
    return model(**inputs).logits


def llama_config(layers=2):
    return LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)


def qwen2_config():
    return Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)


def bert_config():
    return BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=32, num_labels=3)


def vit_config():
    return ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     image_size=32, patch_size=8, num_labels=5)


def gpt2_config():
    return GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)


def fields(config):
    names = ("num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "n_inner", "hidden_size")
    return {n: getattr(config, n, None) for n in names}


def mismatch_warnings(caught):
    from pruneframe_transformers import ConfigMismatchWarning

    return [str(w.message) for w in caught if issubclass(w.category, ConfigMismatchWarning)]


def round_trip(model, inputs, auto):
    """save_pretrained + from_pretrained: the reloaded model's outputs equal, and the warnings saving gave."""
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(folder)
        reloaded = auto.from_pretrained(folder).eval()
    with torch.no_grad():
        return {"same": bool(torch.equal(logits(model, inputs), logits(reloaded, inputs))),
                "warnings": mismatch_warnings(caught), "reloaded": fields(reloaded.config)}


def refused_load(model, auto):
    """save_pretrained, then from_pretrained: the error it raises (None if it loaded), and the warnings saving gave."""
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(folder)
        saved = json.loads(Path(folder, "config.json").read_text())
        from pruneframe_transformers import MARKER
        try:
            auto.from_pretrained(folder)
            error = None
        except RuntimeError as exc:
            error = str(exc)
    return {"error": error, "warnings": mismatch_warnings(caught), "saved_marker": saved.get(MARKER)}


def plan_round_trip(model, inputs, build):
    """pruneframe.state_dict -> torch.save/load -> load_state_dict on a freshly built original: equal outputs."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the plan is the way round a config that cannot say the prune: no need to warn
        warnings.simplefilter("ignore", sys.modules["pruneframe_transformers"].ConfigMismatchWarning)
        torch.save(tp.state_dict(model), buffer)
    buffer.seek(0)
    fresh = build().to(next(model.parameters()).dtype).eval()
    tp.load_state_dict(fresh, state_dict=torch.load(buffer, weights_only=True))
    with torch.no_grad():
        return bool(torch.equal(logits(model, inputs), logits(fresh, inputs))), fresh


def meta_prune(model, inputs, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MetaPruner(model, inputs, importance=kwargs.pop("importance", tp.importance.MagnitudeImportance(p=2)),
                                      forward_fn=logits, **kwargs)
        pruner.step()
    return mismatch_warnings(caught)


def marker(config):
    from pruneframe_transformers import MARKER

    return getattr(config, MARKER, None)


def prune_one_kv_group_per_layer(found):
    """Layer 0 loses key/value head 0, layer 1 key/value head 1 (each with its 4 query heads), both MLPs half."""
    def step(graph, model):
        for i, layer in enumerate(model.model.layers):
            query = list(range(32 * i, 32 * i + 32))
            group = graph.get_pruning_group(layer.self_attn.q_proj, tp.prune_linear_out_channels, query)
            found[i] = {dep.target.name: idxs for dep, idxs in group}
            group.prune()
            graph.get_pruning_group(layer.mlp.gate_proj, tp.prune_linear_out_channels, list(range(0, 128, 2))).prune()
    return step



def test_install_adds_only_the_package_and_its_metadata(installed: Path) -> None:
    assert sorted(p.name for p in installed.iterdir()) == ["pruneframe_transformers", "pruneframe_transformers-0.1.0.dist-info"]
    entry_points = (installed / "pruneframe_transformers-0.1.0.dist-info" / "entry_points.txt").read_text().split()
    # the plugin, and the framework it is imported for (only once transformers is in use)
    assert sorted(entry_points) == sorted(["[pruneframe.plugins]", "transformers", "=", "pruneframe_transformers.plugin",
                                           "[pruneframe.frameworks]", "transformers", "=", "transformers"])
    assert (installed / "pruneframe_transformers" / "py.typed").exists()


def test_cli_lists_the_plugin_through_its_entry_point(installed: Path, tmp_path: Path) -> None:
    """In a clean process, as a user runs it."""
    listed = json.loads(run_python(["-m", "pruneframe", "plugins", "--load"], tmp_path, installed).stdout)
    plugins = {entry["name"]: entry for entry in listed}
    plugin = plugins["transformers"]
    assert (plugin["distribution"], plugin["module"], plugin["builtin"]) == ("pruneframe-transformers", "pruneframe_transformers.plugin", False)
    assert plugin["hooks"] == ["pruneframe_fixups", "pruneframe_layer_pruners", "pruneframe_module_hints"]
    assert plugin["functions"] == ["prune_hf_conv1d_in_channels", "prune_hf_conv1d_out_channels"]
    for cls in ("transformers.pytorch_utils.Conv1D", "transformers.modeling_utils.PreTrainedModel",
                "transformers.models.llama.modeling_llama.LlamaAttention", "transformers.models.qwen2.modeling_qwen2.Qwen2Attention",
                "transformers.models.bert.modeling_bert.BertSelfAttention", "transformers.models.vit.modeling_vit.ViTAttention",
                "transformers.models.gpt2.modeling_gpt2.GPT2Attention"):
        assert cls in plugin["module_types"]
    assert plugins["linear"]["distribution"] == "pruneframe"


def test_conv1d_pruner_keeps_the_right_rows_and_columns(plugin: Any) -> None:
    registry = tp.get_registry()
    layer = Conv1D(6, 4)
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = (x[:, [1, 2, 3]] @ layer.weight[[1, 2, 3]][:, [0, 2, 4, 5]] + layer.bias[[0, 2, 4, 5]])
        tp.prune_hf_conv1d_out_channels(layer, [1, 3])
        tp.prune_hf_conv1d_in_channels(layer, [0])
        conv = {
            "pruner_is_plugins": isinstance(registry.layer_pruner(Conv1D), plugin.Conv1DPruner),
            "plugin": registry.layer_pruner_entry(registry.layer_pruner(Conv1D)).plugin,
            "shape": list(layer.weight.shape), "nf": layer.nf, "nx": layer.nx,
            "same": bool(torch.allclose(layer(x[:, [1, 2, 3]]), expected)),
        }
    assert conv["pruner_is_plugins"] and conv["plugin"] == "transformers"
    assert (conv["shape"], conv["nf"], conv["nx"]) == ([3, 4], 4, 3)  # weight (in, out) after dropping 2 outputs, 1 input
    assert conv["same"]


def test_llama_kv_group_takes_its_query_heads_and_is_exact() -> None:
    groups: dict[int, Any] = {}
    error, pruned, graph = check_prune_equivalence(LlamaForCausalLM(llama_config()).eval(), TEXT,
                                                   prune_one_kv_group_per_layer(groups), forward_fn=logits)
    attention = pruned.model.layers[0].self_attn
    exact = {"error": error, "q": attention.q_proj.out_features, "k": attention.k_proj.out_features,
             "v": attention.v_proj.out_features, "o_in": attention.o_proj.in_features,
             "groups": attention.num_key_value_groups, "config": fields(pruned.config),
             "mlp": pruned.model.layers[1].mlp.intermediate_size}
    layer0 = groups[0]
    assert layer0["model.layers.0.self_attn.q_proj"] == list(range(32))  # 4 query heads of width 8
    assert layer0["model.layers.0.self_attn.k_proj"] == list(range(8))  # their one key/value head
    assert layer0["model.layers.0.self_attn.v_proj"] == list(range(8))
    assert layer0["model.layers.0.self_attn.o_proj"] == list(range(32))
    assert groups[1]["model.layers.1.self_attn.k_proj"] == list(range(8, 16))
    assert exact["error"] < 1e-9
    assert (exact["q"], exact["k"], exact["v"], exact["o_in"], exact["groups"], exact["mlp"]) == (32, 8, 8, 32, 4, 64)
    assert exact["config"] == {"num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 64,
                               "n_inner": None, "hidden_size": 64}


def test_llama_meta_pruner_halves_query_heads_and_round_trips(plugin: Any) -> None:
    model = LlamaForCausalLM(llama_config()).eval()
    warned = meta_prune(model, TEXT, pruning_ratio=0.5, ignored_layers=[model.model.embed_tokens])
    with torch.no_grad():
        shape = list(model(**TEXT).logits.shape)
    meta = {
        "warnings": warned, "shape": shape, "config": fields(model.config), "check": plugin.check_config(model),
        "marker": marker(model.config),
        "layers": [[a.q_proj.out_features // a.head_dim, a.k_proj.out_features // a.head_dim,
                    a.v_proj.out_features // a.head_dim, a.num_key_value_groups] for a in (layer.self_attn for layer in model.model.layers)],
        "round_trip": round_trip(model, TEXT, AutoModelForCausalLM),
    }
    assert meta["warnings"] == []
    assert meta["shape"] == [2, 10, 128]
    assert meta["layers"] == [[4, 1, 1, 4], [4, 1, 1, 4]]  # query heads, key heads, value heads, groups
    assert meta["config"] == {"num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 64,
                              "n_inner": None, "hidden_size": 64}
    assert meta["check"] == [] and meta["marker"] is None
    assert meta["round_trip"] == {"same": True, "warnings": [], "reloaded": meta["config"]}


def test_llama_hidden_size_prune_round_trips() -> None:
    model = LlamaForCausalLM(llama_config()).eval()  # the hidden size too: crosses RMSNorm, so checked by round trip only
    warned = meta_prune(model, TEXT, pruning_ratio=0.25)
    hidden = {"warnings": warned, "config": fields(model.config), "decoder_hidden": model.model.layers[0].hidden_size,
              "mlp_hidden": model.model.layers[0].mlp.hidden_size, "round_trip": round_trip(model, TEXT, AutoModelForCausalLM)}
    assert hidden["warnings"] == []
    assert hidden["config"]["hidden_size"] == 48 and hidden["config"]["head_dim"] == 8
    assert hidden["config"]["intermediate_size"] == 96
    assert (hidden["decoder_hidden"], hidden["mlp_hidden"]) == (48, 48)
    assert hidden["round_trip"]["same"] and hidden["round_trip"]["reloaded"] == hidden["config"]


def test_llama_uneven_prune_says_so_and_the_plan_round_trips(plugin: Any) -> None:
    model = LlamaForCausalLM(llama_config()).eval()  # non-uniform: only layer 0 loses a key/value group
    graph = tp.DependencyGraph().build_dependency(model, TEXT, forward_fn=logits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph.get_pruning_group(model.model.layers[0].self_attn.q_proj, tp.prune_linear_out_channels, list(range(32))).prune()
    load = refused_load(model, AutoModelForCausalLM)  # first: the export warns once per model and situation
    same, fresh = plan_round_trip(model, TEXT, lambda: LlamaForCausalLM(llama_config()))
    uneven = {
        "prune_warnings": mismatch_warnings(caught), "config": fields(model.config), "marker": marker(model.config),
        "check": plugin.check_config(model), "load": load,
        "plan_same": same, "fresh_groups": [layer.self_attn.num_key_value_groups for layer in fresh.model.layers],
        "fresh_marker": marker(fresh.config),
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.state_dict()
        model.state_dict()
    uneven["warned_again"] = mismatch_warnings(caught)
    assert uneven["prune_warnings"] == []  # the prune itself cannot tell whether the other layers follow
    assert uneven["config"]["num_attention_heads"] == 8  # left describing the unpruned model
    assert uneven["marker"]["sizes"] == {"num_attention_heads": [4, 8], "num_key_value_heads": [1, 2]}
    assert uneven["check"]  # the config does not rebuild this model
    load = uneven["load"]
    [message] = load["warnings"]  # exporting warns, once
    assert "model.layers.0.self_attn=4" in message and "model.layers.1.self_attn=8" in message
    assert "pruneframe.state_dict" in message and "pruneframe.load_state_dict" in message
    assert load["error"] is not None and "mismatch" in load["error"]  # from_pretrained refuses, loudly
    assert load["saved_marker"]["sizes"] == uneven["marker"]["sizes"]
    assert uneven["warned_again"] == []
    assert uneven["plan_same"] and uneven["fresh_groups"] == [4, 4] and uneven["fresh_marker"] == uneven["marker"]


def test_a_width_that_is_not_whole_heads_is_refused(plugin: Any) -> None:
    """A width that is not a whole number of heads (pruned behind the graph's back) is refused, never guessed."""
    model = LlamaForCausalLM(llama_config()).eval()
    tp.prune_linear_out_channels(model.model.layers[0].self_attn.q_proj, [0, 1, 2])
    tp.prune_linear_in_channels(model.model.layers[0].self_attn.o_proj, [0, 1, 2])
    with pytest.raises(ValueError) as caught:
        plugin.sync_config(model)
    message = str(caught.value)
    assert "not a whole number of heads" in message and "q_proj" in message


def fail_when_pruned(mlp: Any) -> None:
    if mlp.gate_proj.out_features < 128:
        raise RuntimeError("a later fix-up fails")


class FailingFixup:
    @tp.hookimpl
    def pruneframe_fixups(register):  # noqa: N805 - a namespace of hook functions
        register([LlamaMLP], fail_when_pruned, name="fail-when-pruned")


def test_an_undone_prune_restores_the_config_too(plugin: Any) -> None:
    """A prune undone after the config fix-up ran: the rollback puts back the config object the modules share as well."""
    model = LlamaForCausalLM(llama_config(layers=1)).eval()  # one layer: a single prune is uniform, so the config is written
    before = model.config.to_dict()
    graph = tp.DependencyGraph(registry=build_registry(extra_plugins=[("failing", FailingFixup)]))
    graph.build_dependency(model, TEXT, forward_fn=logits)
    with pytest.raises(tp.PruningError) as refused:
        graph.get_pruning_group(model.model.layers[0].mlp.gate_proj, tp.prune_linear_out_channels, list(range(64))).prune()
    undone = {"refused": str(refused.value), "width": model.model.layers[0].mlp.gate_proj.out_features,
              "config": model.config.to_dict()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.state_dict()
    undone.update(warnings=mismatch_warnings(caught), check=plugin.check_config(model))
    assert "a later fix-up fails" in undone["refused"]
    assert undone["width"] == 128 and undone["config"] == before  # intermediate_size back at 128, no marker
    assert undone["warnings"] == [] and undone["check"] == []


def test_qwen2_grouped_query_attention(plugin: Any) -> None:
    error, pruned, graph = check_prune_equivalence(Qwen2ForCausalLM(qwen2_config()).eval(), TEXT,
                                                   prune_random(0.5, seed=1, ignored_layers=lambda m: [m.model.embed_tokens]),
                                                   forward_fn=logits)
    exact = {"error": error, "config": fields(pruned.config), "check": plugin.check_config(pruned),
             "groups": [layer.self_attn.num_key_value_groups for layer in pruned.model.layers]}
    assert exact["error"] < 1e-9 and exact["check"] == [] and exact["groups"] == [4, 4]
    assert exact["config"]["num_attention_heads"] == 4 and exact["config"]["num_key_value_heads"] == 1
    assert exact["config"]["head_dim"] == 8  # not a Qwen2Config field: added, because Qwen2Attention reads it
    model = Qwen2ForCausalLM(qwen2_config()).eval()
    warned = meta_prune(model, TEXT, pruning_ratio=0.5, ignored_layers=[model.model.embed_tokens])
    meta = {"warnings": warned, "config": fields(model.config), "round_trip": round_trip(model, TEXT, AutoModelForCausalLM)}
    assert meta["warnings"] == [] and meta["config"]["intermediate_size"] == 64
    assert meta["round_trip"]["same"] and meta["round_trip"]["warnings"] == []


def test_bert_heads_are_exact_but_not_expressible_by_its_config() -> None:
    error, pruned, graph = check_prune_equivalence(
        BertForSequenceClassification(bert_config()).eval(), TEXT,
        prune_random(0.5, seed=1, ignored_layers=lambda m: [m.bert.embeddings.word_embeddings]), forward_fn=logits)
    attention = pruned.bert.encoder.layer[0].attention.self
    load = refused_load(pruned, AutoModelForSequenceClassification)
    same, _ = plan_round_trip(pruned, TEXT, lambda: BertForSequenceClassification(bert_config()))
    heads = {"error": error, "heads": attention.num_attention_heads, "all_head_size": attention.all_head_size,
             "query": attention.query.out_features, "config": fields(pruned.config),
             "marker": marker(pruned.config), "load": load, "plan_same": same}
    assert heads["error"] < 1e-9
    assert (heads["heads"], heads["all_head_size"], heads["query"]) == (2, 32, 32)
    assert heads["config"]["num_attention_heads"] == 4 and heads["config"]["intermediate_size"] == 128
    reason = heads["marker"]["reason"]  # the attention's inner width shrank, and BertConfig ties it to hidden_size
    assert reason.startswith("BertConfig cannot describe these sizes: bert.encoder.layer.0.attention.")
    assert "is now 32 while" in reason and "(both follow hidden_size)" in reason
    [message] = heads["load"]["warnings"]
    assert "BertConfig" in message and "pruneframe.state_dict" in message
    assert "mismatch" in heads["load"]["error"]
    assert heads["plan_same"]


def test_bert_mlp_prune_round_trips() -> None:
    model = BertForSequenceClassification(bert_config()).eval()
    layers = [layer.intermediate.dense for layer in model.bert.encoder.layer]
    warned = meta_prune(model, TEXT, pruning_ratio=0.0, pruning_ratio_dict={layer: 0.5 for layer in layers})
    mlp = {"warnings": warned, "config": fields(model.config), "widths": [layer.out_features for layer in layers],
           "round_trip": round_trip(model, TEXT, AutoModelForSequenceClassification)}
    assert mlp["warnings"] == [] and mlp["widths"] == [64, 64] and mlp["config"]["intermediate_size"] == 64
    assert mlp["round_trip"] == {"same": True, "warnings": [], "reloaded": mlp["config"]}


def loadable_prune(model, inputs, **kwargs):
    """MetaPruner's defaults (keep_loadable): the warnings that named groups left whole for the config's sake."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MetaPruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=2), forward_fn=logits,
                                      **kwargs)
        pruner.step()
    return [str(w.message) for w in caught if "stays loadable" in str(w.message)], pruner


def test_bert_by_default_keeps_what_its_config_cannot_state_and_round_trips() -> None:
    """BertConfig ties the attention's width to hidden_size: MetaPruner leaves q/k/v whole, prunes the MLP, and it loads."""
    model = BertForSequenceClassification(bert_config()).eval()
    embeddings = model.bert.embeddings.word_embeddings
    said, pruner = loadable_prune(model, TEXT, pruning_ratio=0.3, ignored_layers=[embeddings, model.classifier])
    attention = model.bert.encoder.layer[0].attention.self
    found = {"query": [layer.attention.self.query.out_features for layer in model.bert.encoder.layer],
             "mlp": [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer],
             "heads": attention.num_attention_heads, "config": fields(model.config), "marker": marker(model.config),
             "round_trip": round_trip(model, TEXT, AutoModelForSequenceClassification)}
    assert found["query"] == [64, 64] and found["heads"] == 4 and found["mlp"] == [90, 90]
    assert found["config"]["intermediate_size"] == 90 and found["marker"] is None
    assert found["round_trip"]["same"] and found["round_trip"]["warnings"] == []
    [message] = said
    assert "3 group(s) left whole" in message and "bert.encoder.layer.0.attention.self.query" in message
    assert "bert.pooler.dense" in message  # pooler -> classifier: its width is hidden_size too
    assert "BertConfig cannot describe these sizes" in message and "keep_loadable=False" in message
    assert len(pruner.left_whole) == 3 and all("could not state it" in why for _, why in pruner.left_whole)


def test_bert_hidden_size_and_heads_pruned_in_step_are_written_and_round_trip(plugin: Any) -> None:
    """Nothing ignored, 50%: hidden 64 -> 32 and 2 of 4 heads of 16. No tensor shape sets num_attention_heads, but the
    attention stores it (the probe finds the copy), so the proposal carries it and the rebuild accepts it."""
    from pruneframe_transformers.probing import probe

    model = BertForMaskedLM(bert_config()).eval()
    copies = probe(type(model), model.config).copies
    said, _ = loadable_prune(model, TEXT, pruning_ratio=0.5)
    found = {"config": fields(model.config), "heads": model.bert.encoder.layer[1].attention.self.num_attention_heads,
             "query": model.bert.encoder.layer[1].attention.self.query.weight.shape, "said": said,
             "round_trip": round_trip(model, TEXT, AutoModelForMaskedLM)}
    assert ("bert.encoder.layer.0.attention.self", "num_attention_heads") in copies["num_attention_heads"]
    assert (found["config"]["hidden_size"], found["config"]["num_attention_heads"], found["heads"]) == (32, 2, 2)
    assert tuple(found["query"]) == (32, 32) and found["said"] == []
    assert found["round_trip"]["same"] and found["round_trip"]["warnings"] == []


def test_gpt2_by_default_prunes_its_mlp_only_and_round_trips() -> None:
    model = GPT2LMHeadModel(gpt2_config()).eval()
    said, _ = loadable_prune(model, TEXT, pruning_ratio=0.5, ignored_layers=[model.transformer.wte])
    found = {"c_attn": [b.attn.c_attn.nf for b in model.transformer.h], "c_fc": [b.mlp.c_fc.nf for b in model.transformer.h],
             "wte": model.transformer.wte.weight.shape[1], "round_trip": round_trip(model, TEXT, AutoModelForCausalLM)}
    assert found["c_attn"] == [192, 192] and found["c_fc"] == [128, 128] and found["wte"] == 64
    assert found["round_trip"]["same"] and found["round_trip"]["warnings"] == []
    assert len(said) == 1 and "GPT2Config cannot describe these sizes" in said[0]


def ignore_vit(model: Any) -> list[Any]:
    return [model.vit.embeddings.patch_embeddings.projection]


def test_vit_heads_and_mlp_are_exact_and_round_trip(plugin: Any) -> None:
    """HF ViT: heads and MLP; ViTAttention reads head_dim from the config, so fewer heads can be written."""
    error, pruned, graph = check_prune_equivalence(ViTForImageClassification(vit_config()).eval(), IMAGE,
                                                   prune_random(0.5, seed=1, ignored_layers=ignore_vit), forward_fn=logits)
    attention = pruned.vit.layers[0].attention
    exact = {"error": error, "heads": attention.num_attention_heads, "q": attention.q_proj.out_features,
             "config": fields(pruned.config), "check": plugin.check_config(pruned)}
    assert exact["error"] < 1e-9 and (exact["heads"], exact["q"]) == (2, 32) and exact["check"] == []
    assert exact["config"]["num_attention_heads"] == 2 and exact["config"]["head_dim"] == 16
    assert exact["config"]["intermediate_size"] == 64
    model = ViTForImageClassification(vit_config()).eval()
    warned = meta_prune(model, IMAGE, pruning_ratio=0.5, ignored_layers=ignore_vit(model))
    meta = {"warnings": warned, "config": fields(model.config), "heads": [layer.attention.num_attention_heads for layer in model.vit.layers],
            "round_trip": round_trip(model, IMAGE, AutoModelForImageClassification)}
    assert meta["warnings"] == [] and meta["heads"] == [2, 2]
    assert meta["round_trip"]["same"] and meta["round_trip"]["reloaded"]["head_dim"] == 16


def test_vit_module_hint_keeps_an_attention_it_cannot_keep_consistent() -> None:
    """An attention module without an attribute the fix-ups rely on keeps its projections whole."""
    model = ViTForImageClassification(vit_config()).eval()
    del model.vit.layers[0].attention.num_attention_heads
    graph = tp.DependencyGraph().build_dependency(model, IMAGE, forward_fn=logits)
    kept = graph.get_pruning_group(model.vit.layers[0].attention.q_proj, tp.prune_linear_out_channels, list(range(16)))
    free = graph.get_pruning_group(model.vit.layers[1].attention.q_proj, tp.prune_linear_out_channels, list(range(16)))
    hint = {"kept_ok": graph.check_pruning_group(kept), "kept_reasons": kept.blocked_reasons,
            "free_ok": graph.check_pruning_group(free)}
    free.prune()  # the other layer still prunes; the fix-ups leave the unknown layout alone
    hint["after"] = [model.vit.layers[1].attention.num_attention_heads, model.vit.layers[1].attention.q_proj.out_features,
                     hasattr(model.vit.layers[0].attention, "num_attention_heads")]
    assert not hint["kept_ok"] and hint["free_ok"]
    assert any("lacks num_attention_heads" in reason for reason in hint["kept_reasons"])
    assert hint["after"] == [3, 48, False]  # one head of 16 gone; the unknown layout was left alone


def test_gpt2_heads_and_mlp_are_exact() -> None:
    """GPT-2: Conv1D, heads through the fused c_attn, MLP."""
    error, pruned, graph = check_prune_equivalence(
        GPT2LMHeadModel(gpt2_config()).eval(), TEXT,
        prune_random(0.5, seed=1, ignored_layers=lambda m: [m.transformer.wte]), forward_fn=logits)
    attention = pruned.transformer.h[0].attn
    load = refused_load(pruned, AutoModelForCausalLM)
    same, _ = plan_round_trip(pruned, TEXT, lambda: GPT2LMHeadModel(gpt2_config()))
    exact = {"error": error, "c_attn": attention.c_attn.nf, "split_size": attention.split_size,
             "heads": attention.num_heads, "c_proj_in": attention.c_proj.nx, "c_fc": pruned.transformer.h[0].mlp.c_fc.nf,
             "pruned": sorted({r.name for records in graph.pruning_history() for r in records}),
             "marker": marker(pruned.config), "load": load, "plan_same": same}
    assert exact["error"] < 1e-9
    assert (exact["c_attn"], exact["split_size"], exact["heads"], exact["c_proj_in"], exact["c_fc"]) == (96, 32, 2, 32, 128)
    assert "transformer.h.0.attn.c_attn" in exact["pruned"] and "transformer.h.1.mlp.c_fc" in exact["pruned"]
    assert "GPT2Config cannot describe these sizes" in exact["marker"]["reason"]  # head width = n_embd / n_head
    assert "mismatch" in exact["load"]["error"] and len(exact["load"]["warnings"]) == 1
    assert exact["plan_same"]


def test_gpt2_mlp_prune_round_trips() -> None:
    model = GPT2LMHeadModel(gpt2_config()).eval()
    fc = [block.mlp.c_fc for block in model.transformer.h]
    warned = meta_prune(model, TEXT, pruning_ratio=0.0, pruning_ratio_dict={layer: 0.5 for layer in fc})  # Conv1D acts like Linear
    with torch.no_grad():
        shape = list(model(**TEXT).logits.shape)
    mlp = {"warnings": warned, "config": fields(model.config), "widths": [layer.nf for layer in fc], "shape": shape,
           "round_trip": round_trip(model, TEXT, AutoModelForCausalLM)}
    assert mlp["warnings"] == [] and mlp["widths"] == [128, 128] and mlp["shape"] == [2, 10, 128]
    assert mlp["config"]["n_inner"] == 128
    assert mlp["round_trip"] == {"same": True, "warnings": [], "reloaded": mlp["config"]}


def test_meta_pruner_defaults_take_gpt2_conv1d_as_linear() -> None:
    model = GPT2LMHeadModel(gpt2_config()).eval()  # every Conv1D is a root, heads and MLP halve (the config cannot say it)
    meta_prune(model, TEXT, pruning_ratio=0.5, ignored_layers=[model.transformer.wte], keep_loadable=False)
    with torch.no_grad():
        shape = list(model(**TEXT).logits.shape)
    meta = {"shape": shape, "heads": [b.attn.num_heads for b in model.transformer.h],
            "c_attn": [b.attn.c_attn.nf for b in model.transformer.h], "c_fc": [b.mlp.c_fc.nf for b in model.transformer.h]}
    assert meta["shape"] == [2, 10, 128]
    assert meta["heads"] == [2, 2] and meta["c_attn"] == [96, 96]  # 2 of 4 heads of width 16, in q, k and v
    assert meta["c_fc"] == [128, 128]


def test_readme_example_runs(installed: Path, tmp_path: Path) -> None:
    run_readme_example(CONTRIB, installed, tmp_path)


def test_gpt2_with_tied_embeddings_prunes_with_nothing_ignored_and_stays_tied() -> None:
    """GPT-2's default: lm_head.weight is wte.weight. The hidden size prunes once, for both, and the tie holds."""
    model = GPT2LMHeadModel(gpt2_config()).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    meta_prune(model, TEXT, pruning_ratio=0.3, keep_loadable=False)  # GPT2Config cannot state a narrower n_embd alone
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.shape[1] < 64 and model.lm_head.in_features == model.transformer.wte.weight.shape[1]
    with torch.no_grad():
        assert list(model(**TEXT).logits.shape) == [2, 10, 128]
    same, fresh = plan_round_trip(model, TEXT, lambda: GPT2LMHeadModel(gpt2_config()))
    assert same and fresh.lm_head.weight is fresh.transformer.wte.weight


def test_a_tied_llama_hidden_size_prune_round_trips_through_save_pretrained() -> None:
    config = llama_config()
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    warned = meta_prune(model, TEXT, pruning_ratio=0.25)
    assert warned == [] and model.config.hidden_size == 48
    assert model.lm_head.weight is model.model.embed_tokens.weight
    trip = round_trip(model, TEXT, AutoModelForCausalLM)
    assert trip["same"] and trip["warnings"] == [] and trip["reloaded"]["hidden_size"] == 48


def test_with_the_plugin_installed_there_is_no_missing_plugin_warning() -> None:
    from pruneframe.errors import MissingPluginWarning

    model = LlamaForCausalLM(llama_config(layers=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingPluginWarning)
        tp.DependencyGraph().build_dependency(model, example_inputs=TEXT)


# --- config inference for families with no family code -------------------------------------------------------------
def tiny_config(name: str) -> Any:
    """A 2-layer config of family ``name`` (hidden 64, MLP 128, 4 query / 2 key-value heads, vocabulary 128)."""
    import transformers

    sizes = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                 bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if name == "Falcon":  # no intermediate_size (ffn_hidden_size, 4 x hidden by default); grouped key/value heads
        return transformers.FalconConfig(**sizes, new_decoder_architecture=True, num_kv_heads=2)
    if name == "OPT":  # ffn_dim; no grouped key/value heads
        return transformers.OPTConfig(**sizes, ffn_dim=128, word_embed_proj_dim=64)
    return getattr(transformers, f"{name}Config")(**sizes, intermediate_size=128, num_key_value_heads=2)


def family_code_in(model: Any) -> list[str]:
    from pruneframe_transformers.families import family_of

    return sorted({type(m).__name__ for m in model.modules() if family_of(m) is not None})


def allclose_round_trip(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """save_pretrained + AutoModelForCausalLM.from_pretrained: outputs equal to 1e-5, the config it reloads, the warnings."""
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        close = bool(torch.allclose(model(**inputs).logits, reloaded(**inputs).logits, atol=1e-5, rtol=0))
    return {"close": close, "warnings": mismatch_warnings(caught), "config": reloaded.config.to_dict()}


def size_fields(config: Any) -> dict[str, Any]:
    names = ("hidden_size", "intermediate_size", "ffn_hidden_size", "ffn_dim", "num_attention_heads", "num_key_value_heads",
             "num_kv_heads", "head_dim")
    values = config.to_dict() if not isinstance(config, dict) else config
    return {n: values[n] for n in names if n in values}


NO_FAMILY_CODE = ["Mistral", "Qwen3", "Granite", "Starcoder2", "Phi3", "Olmo2", "Gemma", "Gemma2", "Falcon", "StableLm", "OPT"]


@pytest.mark.parametrize("family", NO_FAMILY_CODE)
def test_config_inference_round_trips_a_family_without_family_code(plugin: Any, family: str) -> None:
    """MetaPruner 30% (L2, embedding and lm_head kept): the config is inferred from the shapes, and from_pretrained rebuilds it."""
    model = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    before = size_fields(model.config)
    warned = meta_prune(model, TEXT, pruning_ratio=0.3,
                        ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()])
    after = size_fields(model.config)
    trip = allclose_round_trip(model, TEXT)
    assert family_code_in(model) == []  # nothing in families.py serves this family
    width = {"Falcon": "ffn_hidden_size", "OPT": "ffn_dim"}.get(family, "intermediate_size")
    assert {k: (before[k], v) for k, v in after.items() if before.get(k) != v} == {width: (before[width], before[width] - int(before[width] * 0.3))}
    assert warned == [] and plugin.check_config(model) == [] and marker(model.config) is None
    assert trip["close"] and trip["warnings"] == [] and size_fields(trip["config"]) == after


@pytest.mark.parametrize(("family", "head_dim_unset"), [("Mistral", False), ("Starcoder2", True), ("Olmo2", True), ("Gemma2", False)])
def test_config_inference_follows_fewer_heads_of_the_same_width(plugin: Any, family: str, head_dim_unset: bool) -> None:
    """At 50% one of the two key/value groups goes (with its query heads); the head width stays, and the config says so."""
    config = tiny_config(family)
    assert (getattr(config, "head_dim", None) is None) == head_dim_unset
    model = AutoModelForCausalLM.from_config(config).eval()
    width = model.model.layers[0].self_attn.head_dim
    warned = meta_prune(model, TEXT, pruning_ratio=0.5,
                        ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()])
    trip = allclose_round_trip(model, TEXT)
    heads = [(layer.self_attn.q_proj.out_features // width, layer.self_attn.k_proj.out_features // width)
             for layer in model.model.layers]
    assert family_code_in(model) == [] and warned == [] and heads == [(2, 1), (2, 1)]
    fields_now = size_fields(model.config)
    assert (fields_now["num_attention_heads"], fields_now["num_key_value_heads"], fields_now["intermediate_size"]) == (2, 1, 64)
    # the head width is kept (Gemma 2's is 256 by default, independent of hidden_size); written where the config
    # would otherwise derive hidden_size / heads = 32
    assert fields_now["head_dim"] == width and plugin.check_config(model) == []
    assert trip["close"] and trip["warnings"] == [] and size_fields(trip["config"]) == fields_now


def test_stored_counts_the_prune_left_stale_follow_the_rebuilt_model_exactly(plugin: Any) -> None:
    """MistralMLP stores intermediate_size and nothing in families.py updates it: the accepted config's rebuild sets it,
    and the pruned model still equals the original with the lost connections zeroed (float64)."""
    error, pruned, _ = check_prune_equivalence(
        AutoModelForCausalLM.from_config(tiny_config("Mistral")).eval(), TEXT,
        prune_random(0.5, seed=1, ignored_layers=lambda m: [m.model.embed_tokens, m.lm_head]), forward_fn=logits)
    mlps = [layer.mlp for layer in pruned.model.layers]
    assert family_code_in(pruned) == []
    assert error < 1e-9
    assert [(m.gate_proj.out_features, m.intermediate_size) for m in mlps] == [(64, 64), (64, 64)]
    assert pruned.config.intermediate_size == 64 and plugin.check_config(pruned) == []


def test_config_inference_refuses_a_non_uniform_prune_and_names_the_layers(plugin: Any) -> None:
    """Only layer 0's MLP shrinks: no MistralConfig says that; the config is marked, export warns naming both layers."""
    build = lambda: AutoModelForCausalLM.from_config(tiny_config("Mistral")).eval()  # noqa: E731
    model = build()
    graph = tp.DependencyGraph().build_dependency(model, TEXT, forward_fn=logits)
    graph.get_pruning_group(model.model.layers[0].mlp.gate_proj, tp.prune_linear_out_channels, list(range(64))).prune()
    load = refused_load(model, AutoModelForCausalLM)
    same, _ = plan_round_trip(model, TEXT, build)
    assert family_code_in(model) == []
    assert model.config.intermediate_size == 128  # still the unpruned model's
    assert marker(model.config)["sizes"] == {"intermediate_size": [64, 128]}
    assert "the layers differ (intermediate_size is [64, 128]" in marker(model.config)["reason"]
    [message] = load["warnings"]
    assert "model.layers.0.mlp=64" in message and "model.layers.1.mlp=128" in message and "pruneframe.state_dict" in message
    assert load["error"] is not None and "mismatch" in load["error"]
    assert same


def test_config_inference_refuses_fewer_heads_a_config_derives_the_width_of(plugin: Any) -> None:
    """GPT-NeoX derives the head width as hidden_size / num_attention_heads: 3 heads of 16 cannot be written."""
    from transformers import GPTNeoXConfig

    build = lambda: AutoModelForCausalLM.from_config(GPTNeoXConfig(  # noqa: E731
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0)).eval()
    model = build()
    meta_prune(model, TEXT, pruning_ratio=0.3, ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()],
               keep_loadable=False)
    attention = model.gpt_neox.layers[0].attention
    load = refused_load(model, AutoModelForCausalLM)
    same, _ = plan_round_trip(model, TEXT, build)
    assert (attention.query_key_value.out_features, attention.dense.in_features) == (144, 48)  # 3 heads of 16, q, k and v
    reason = marker(model.config)["reason"]
    assert reason.startswith("GPTNeoXConfig cannot describe these sizes: gpt_neox.layers.0.attention.")
    assert "(both follow hidden_size); likewise in 1 more: gpt_neox.layers.1.attention" in reason  # every layer it happens in
    assert model.config.num_attention_heads == 4 and model.config.intermediate_size == 128  # left as they were
    [message] = load["warnings"]
    assert "GPTNeoXConfig" in message and "pruneframe.load_state_dict" in message
    assert "mismatch" in load["error"] and same


def test_the_probe_is_cached_per_model_class_and_config(plugin: Any) -> None:
    """A second prune of a model built from the same config learns nothing again: no meta-device probe builds."""
    plugin.probe_cache_clear()
    first = AutoModelForCausalLM.from_config(tiny_config("Mistral")).eval()
    meta_prune(first, TEXT, pruning_ratio=0.3, ignored_layers=[first.model.embed_tokens, first.lm_head])
    after_first = plugin.probe_cache_info()
    second = AutoModelForCausalLM.from_config(tiny_config("Mistral")).eval()
    meta_prune(second, TEXT, pruning_ratio=0.3, ignored_layers=[second.model.embed_tokens, second.lm_head])
    after_second = plugin.probe_cache_info()
    assert after_first.misses == 1 and after_first.size == 1
    assert after_second.misses == 1 and after_second.hits > after_first.hits
    assert second.config.intermediate_size == first.config.intermediate_size == 90


def encoder_case(name: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model class to build and reload with, config, inputs) of a tiny encoder, encoder-decoder or two-tower model."""
    import transformers as hf

    ids = torch.randint(3, 128, (2, 10))
    encoder = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   max_position_embeddings=64)
    if name == "RoBERTa":
        return hf.RobertaForSequenceClassification, hf.RobertaConfig(**encoder, pad_token_id=1), {"input_ids": ids}
    if name == "ELECTRA":
        return hf.ElectraForSequenceClassification, hf.ElectraConfig(**encoder, embedding_size=64), {"input_ids": ids}
    if name == "DistilBERT":
        config = hf.DistilBertConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64)
        return hf.DistilBertForSequenceClassification, config, {"input_ids": ids}
    if name == "T5":
        config = hf.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0)
        return hf.T5ForConditionalGeneration, config, {"input_ids": ids, "decoder_input_ids": ids}
    if name == "BART":
        config = hf.BartConfig(vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                               decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64)
        return hf.BartForConditionalGeneration, config, {"input_ids": ids, "decoder_input_ids": ids}
    assert name == "CLIP"  # a config holding two nested configs
    tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    config = hf.CLIPConfig(text_config=dict(tower, vocab_size=128, max_position_embeddings=64),
                           vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=32)
    return hf.CLIPModel, config, {"input_ids": ids, "pixel_values": torch.randn(2, 3, 32, 32)}


def scores(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.logits_per_image


MLP_INPUTS = ("fc1", "intermediate.dense", "wi", "lin1")  # the first MLP layer's name in these families
CHANGED = {"RoBERTa": {"intermediate_size": (128, 90)}, "ELECTRA": {"intermediate_size": (128, 90)},
           "DistilBERT": {"hidden_dim": (128, 90)}, "T5": {"d_ff": (128, 90)},
           "BART": {"encoder_ffn_dim": (128, 90), "decoder_ffn_dim": (128, 90)},
           "CLIP": {"text_config.intermediate_size": (128, 90), "vision_config.intermediate_size": (128, 90)}}


@pytest.mark.parametrize("family", list(CHANGED))
def test_config_inference_follows_mlp_prunes_of_encoders_and_encoder_decoders(plugin: Any, family: str) -> None:
    """The MLP widths at 30% (every first MLP layer a root): the family's own field names, nested configs included."""
    from pruneframe_transformers.probing import get_field

    cls, config, inputs = encoder_case(family)
    before = {name: get_field(config, name) for name in CHANGED[family]}
    model = cls._from_config(config).eval()
    roots = {m: 0.3 for n, m in model.named_modules() if n.endswith(MLP_INPUTS)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tp.pruner.MetaPruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.0,
                             pruning_ratio_dict=roots, forward_fn=scores).step()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as saving:
        warnings.simplefilter("always")
        model.save_pretrained(folder)
        reloaded = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        close = bool(torch.allclose(scores(model, inputs), scores(reloaded, inputs), atol=1e-5, rtol=0))
    assert family_code_in(model) == [] and len(roots) == (4 if family in ("BART", "CLIP", "T5") else 2)
    assert {name: (before[name], get_field(model.config, name)) for name in CHANGED[family]} == CHANGED[family]
    assert mismatch_warnings(caught) == [] and mismatch_warnings(saving) == [] and plugin.check_config(model) == []
    assert {name: get_field(reloaded.config, name) for name in CHANGED[family]} == {n: v for n, (_, v) in CHANGED[family].items()}
    assert close


def test_t5_heads_lose_width_and_d_kv_follows(plugin: Any) -> None:
    """T5 reshapes with its stored head count, so the trace shrinks every head alike; d_kv and d_ff follow, and it reloads."""
    cls, config, inputs = encoder_case("T5")
    model = cls._from_config(config).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tp.pruner.MetaPruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3,
                             ignored_layers=[model.shared, model.lm_head], forward_fn=scores).step()
    attention = model.encoder.block[0].layer[0].SelfAttention
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reloaded = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        close = bool(torch.allclose(scores(model, inputs), scores(reloaded, inputs), atol=1e-5, rtol=0))
    assert mismatch_warnings(caught) == [] and family_code_in(model) == []
    assert (attention.q.out_features, attention.n_heads, attention.key_value_proj_dim) == (48, 4, 12)
    assert (model.config.num_heads, model.config.d_kv, model.config.d_ff) == (4, 12, 90) and plugin.check_config(model) == []
    assert close


@pytest.mark.parametrize("family", ["Mistral", "Qwen3", "Granite", "Starcoder2", "Phi3", "Olmo2"])
def test_config_inference_follows_a_hidden_size_prune(plugin: Any, family: str) -> None:
    """MetaPruner 25% with nothing ignored: the hidden size shrinks through every norm and residual add, and the config follows."""
    model = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    warned = meta_prune(model, TEXT, pruning_ratio=0.25)
    trip = allclose_round_trip(model, TEXT)
    assert family_code_in(model) == [] and warned == []
    assert (model.config.hidden_size, model.config.intermediate_size) == (48, 96) and model.get_input_embeddings().embedding_dim == 48
    assert plugin.check_config(model) == [] and trip["close"] and trip["warnings"] == []
    assert size_fields(trip["config"]) == size_fields(model.config)


def test_a_stored_scale_the_rebuild_would_change_rejects_the_config(plugin: Any) -> None:
    """Gemma scales its embeddings by sqrt(hidden_size), a float it stores: the pruned model still multiplies by sqrt(64),
    a config with hidden_size 48 would build sqrt(48), so the config is marked instead of written."""
    model = AutoModelForCausalLM.from_config(tiny_config("Gemma")).eval()
    meta_prune(model, TEXT, pruning_ratio=0.25, keep_loadable=False)
    load = refused_load(model, AutoModelForCausalLM)
    reason = marker(model.config)["reason"]
    assert model.get_input_embeddings().embedding_dim == 48 and model.config.hidden_size == 64
    assert reason.startswith("GemmaConfig cannot describe these sizes: with hidden_size=48, intermediate_size=96 it builds "
                             "model.embed_tokens.scalar_embed_scale = 6.928")
    assert reason.endswith("where the model has 8.0")
    assert len(load["warnings"]) == 1 and "mismatch" in load["error"]
    model = AutoModelForCausalLM.from_config(tiny_config("Gemma")).eval()  # the default keeps what the config can state
    said, _ = loadable_prune(model, TEXT, pruning_ratio=0.25)
    assert model.get_input_embeddings().embedding_dim == 64 and model.config.intermediate_size == 96
    assert round_trip(model, TEXT, AutoModelForCausalLM)["same"] and "scalar_embed_scale" in said[0]
