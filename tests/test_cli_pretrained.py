"""``pruneframe prune hf:DIR --save-pretrained OUT``: in memory or streamed, the same pruned checkpoint; bad input refused early.

A small sharded LLaMA with a word-level tokenizer is written to a temporary
directory (nothing is downloaded); the transformers plugin is installed offline
for this module as in tests/test_contrib_transformers.py.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from pruneframe.app.cli import main

from contrib_support import contrib_plugin, save_word_tokenizer

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module", autouse=True)
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from contrib_plugin(tmp_path_factory, "pruneframe-transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("checkpoint") / "llama"
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16)
    LlamaForCausalLM(config).save_pretrained(directory, max_shard_size="40KB")
    save_word_tokenizer(directory)
    return directory


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def logits(directory: Path, x: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(directory).eval()(x).logits


def test_streamed_and_in_memory_prunes_give_the_same_checkpoint(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    before = digest(checkpoint)
    common = ["prune", f"hf:{checkpoint}", "--ratio", "0.3", "--round-to", "4", "--save-pretrained"]
    assert main([*common, str(tmp_path / "memory")]) == 0
    said = capsys.readouterr().out
    assert "mode: in memory" in said and "Parameters: 0.0904 M -> 0.0516 M" in said
    assert main([*common, str(tmp_path / "streamed"), "--max-memory", "10KB"]) == 0
    said = capsys.readouterr().out
    assert "mode: streaming: planned on the meta device" in said and "Parameters: 0.0904 M -> 0.0516 M" in said
    x = torch.randint(0, 128, (2, 9))
    assert torch.equal(logits(tmp_path / "memory", x), logits(tmp_path / "streamed", x))
    for out in ("memory", "streamed"):
        assert (tmp_path / out / "tokenizer.json").read_bytes() == (checkpoint / "tokenizer.json").read_bytes()
    assert digest(checkpoint) == before


def test_activation_importance_reads_a_calibration_file(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    samples = tmp_path / "calibration.jsonl"
    samples.write_text('the w1 w2 of w3\n{"text": "it was w5 w6 and w7"}\n\na w8 in w9 is the w10\n')
    argv = ["prune", f"hf:{checkpoint}", "--ratio", "0.3", "--round-to", "4", "--importance", "activation",
            "--calibration", str(samples), "--save-pretrained"]
    assert main([*argv, str(tmp_path / "a")]) == 0
    assert main(["prune", f"hf:{checkpoint}", "--ratio", "0.3", "--round-to", "4", "--save-pretrained", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "a").intermediate_size == AutoConfig.from_pretrained(tmp_path / "b").intermediate_size
    x = torch.randint(0, 128, (1, 7))
    assert not torch.equal(logits(tmp_path / "a", x), logits(tmp_path / "b", x))  # other channels were chosen
    # streamed: the calibration forwards onload each layer from the shards while it runs; the same channels go
    assert main([*argv, str(tmp_path / "streamed"), "--max-memory", "10KB"]) == 0
    assert "mode: streaming" in capsys.readouterr().out
    assert torch.equal(logits(tmp_path / "a", x), logits(tmp_path / "streamed", x))


@pytest.mark.parametrize("extra, message", [
    (["--importance", "activation"], "--importance activation needs data: pass --calibration FILE"),
    (["--importance", "taylor", "--calibration", "{calibration}", "--max-memory", "1KB"],
     "--importance taylor needs gradients, which a model planned without its weights does not have"),
    (["--calibration", "{calibration}"], "--calibration is read by --importance activation, taylor or hessian"),
    (["--calibration", "{missing}", "--importance", "activation"], "no such readable file"),
    (["--out", "{out}.pth"], "leave out --out, --weights and --target-*"),
    (["--no-keep-loadable"], "--no-keep-loadable with --save-pretrained: the saved config could not state what it adds"),
])
def test_bad_arguments_are_refused_and_nothing_is_written(checkpoint: Path, tmp_path: Path, capsys: Any, extra: list[str],
                                                         message: str) -> None:
    (tmp_path / "calibration.txt").write_text("the w1\n")
    values = {"calibration": str(tmp_path / "calibration.txt"), "missing": str(tmp_path / "nope.txt"), "out": str(tmp_path / "x")}
    argv = ["prune", f"hf:{checkpoint}", "--save-pretrained", str(tmp_path / "out"), *[e.format(**values) for e in extra]]
    before = digest(checkpoint)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and digest(checkpoint) == before


def test_an_output_inside_the_source_or_existing_is_refused(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    before = digest(checkpoint)
    assert main(["prune", f"hf:{checkpoint}", "--save-pretrained", str(checkpoint / "pruned")]) == 2
    assert "is the checkpoint being read, or inside it" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["prune", f"hf:{checkpoint}", "--save-pretrained", str(tmp_path / "taken")]) == 2
    assert "it exists; give a new directory" in capsys.readouterr().err
    assert digest(checkpoint) == before and list((tmp_path / "taken").iterdir()) == []


def test_a_missing_shard_is_named_before_anything_runs(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    next(broken.glob("model-00003-*.safetensors")).unlink()
    assert main(["prune", f"hf:{broken}", "--save-pretrained", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "names shard files that are not in" in err and "model-00003-of-00012.safetensors" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ratio, sizes, warned", [
    ("0.3", {"hidden": 64, "heads": 4, "query": 64, "mlp": 90}, True),  # 45 hidden, 3 heads of 16: no config says it
    ("0.5", {"hidden": 32, "heads": 2, "query": 32, "mlp": 64}, False),  # 2 heads of 16 = hidden 32: BertConfig says it
])
def test_a_bert_checkpoint_prunes_to_a_directory_from_pretrained_loads(tmp_path: Path, capsys: Any, ratio: str,
                                                                      sizes: dict[str, int], warned: bool) -> None:
    """BertConfig ties the attention's width to the hidden size: what it cannot state is kept whole, and the output loads."""
    from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    source = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=32)).save_pretrained(source)
    save_word_tokenizer(source)
    assert main(["prune", f"hf:{source}", "--ratio", ratio, "--save-pretrained", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    pruned = AutoModelForMaskedLM.from_pretrained(tmp_path / "out").eval()  # strict: any size mismatch raises
    layer = pruned.bert.encoder.layer[0]
    found = {"hidden": pruned.config.hidden_size, "heads": pruned.config.num_attention_heads,
             "query": layer.attention.self.query.out_features, "mlp": layer.intermediate.dense.out_features}
    assert found == sizes
    said = [line for line in captured.err.splitlines() if "stays loadable" in line]  # a warning, in the command's words
    assert len(said) == int(warned)
    if warned:
        assert said[0].startswith("warning: 3 group(s) left whole") and "BertConfig cannot describe" in said[0]
        assert "the model's own format could not state it" in captured.out  # and the report's kept-whole section
