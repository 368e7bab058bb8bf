"""``pruneframe prune MODEL --remove-layers N|NAME[,NAME]``: whole blocks removed before the widths are pruned.

Names need no data (a file-defined model and torchvision's ResNet-18); a count is ranked by block influence on
``--calibration`` text, which only ``hf:DIR --save-pretrained`` reads (a small sharded LLaMA with a word-level
tokenizer, the transformers plugin installed offline for those tests); everything else is refused before the model
is built, with the way out, and nothing is written.
"""
from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

import pruneframe as tp
from pruneframe.app import model_sources
from pruneframe.app.cli import main

from contrib_support import contrib_plugin, save_word_tokenizer

MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc1 = nn.Linear(width, 2 * width)
            self.fc2 = nn.Linear(2 * width, width)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 8)
            self.layers = nn.ModuleList(Block(8) for _ in range(4))
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = self.embed(x)
            for block in self.layers:
                x = block(x)
            return self.head(x)

    def build():
        torch.manual_seed(0)
        return Stack().eval(), torch.randn(2, 5, 3)
""")


@pytest.fixture
def stack_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "stack.py").write_text(MODEL_FILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "stack.py"


def _built_stack(path: Path) -> Any:
    return model_sources.build(f"{path}:build")


def test_named_blocks_are_removed_as_the_python_api_removes_them_and_reload(stack_file: Path, capsys: Any) -> None:
    assert main(["prune", "stack.py:build", "--ratio", "0.5", "--remove-layers", "layers.1,layers.2", "--out", "p.pth"]) == 0
    said = capsys.readouterr().out
    assert "removed 2 layer(s): layers.1, layers.2 (the kept blocks are renumbered" in said
    assert "layers.1.fc1 | Linear | in_features 8 -> 4, out_features 16 -> 8" in " ".join(said.split())
    loaded = tp.load_pruned(str(stack_file.parent / "p.pth"))
    built = _built_stack(stack_file)
    pruner = tp.pruner.MetaPruner(built.model, built.inputs, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  remove_layers=["layers.1", "layers.2"])
    pruner.step()
    assert len(loaded.layers) == 2
    with torch.no_grad():
        assert torch.equal(loaded(built.inputs), built.model(built.inputs))


def test_torchvision_names_work_and_a_dry_run_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    argv = ["prune", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--ratio", "0.25", "--remove-layers", "layer1.1"]
    assert main([*argv, "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "removed 1 layer(s): layer1.1" in said and "dry run: nothing was written" in said
    assert list(tmp_path.iterdir()) == []
    assert main([*argv, "--out", str(tmp_path / "r18.pth")]) == 0
    capsys.readouterr()
    loaded = tp.load_pruned(str(tmp_path / "r18.pth"))
    assert len(loaded.layer1) == 1 and loaded.layer1[0].conv1.out_channels == 48
    assert loaded(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_a_count_without_calibration_data_is_refused_before_the_model_is_built(tmp_path: Path, capsys: Any,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was built before --remove-layers was checked")

    monkeypatch.setattr(model_sources, "build", no_build)
    assert main(["prune", "torchvision:resnet18", "--remove-layers", "2", "--out", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert "--remove-layers 2: a count is chosen by block influence on calibration data" in err
    assert "name the blocks to remove instead (--remove-layers layer1.1,layer3.1)" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling, message", [
    ("layers.9", "--remove-layers: the model has no module 'layers.9'; its layer lists: layers (4 blocks)"),
    ("layers", "--remove-layers: layers is a layer list, not a block"),
    ("layers.0,layers.1,layers.2,layers.3", "this would remove all 4 blocks of layers; keep at least one"),
])
def test_names_that_are_no_removable_block_are_refused(stack_file: Path, capsys: Any, spelling: str, message: str) -> None:
    before = stack_file.read_bytes()
    assert main(["prune", "stack.py:build", "--remove-layers", spelling, "--out", "p.pth"]) == 2
    assert message in capsys.readouterr().err
    assert not (stack_file.parent / "p.pth").exists() and stack_file.read_bytes() == before


@pytest.mark.parametrize("spelling", ["-1", "layers.1,3", ","])
def test_a_malformed_value_is_a_usage_error(spelling: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "torchvision:resnet18", "--remove-layers", spelling, "--dry-run"])
    assert exit_.value.code == 2
    assert "give a count of blocks to remove (2) or their names separated by commas" in capsys.readouterr().err


# --- hf:DIR --save-pretrained ----------------------------------------------------------------
@pytest.fixture(scope="module")
def transformers_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pytest.importorskip("transformers")
    yield from contrib_plugin(tmp_path_factory, "pruneframe-transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, transformers_plugin: Any) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("checkpoint") / "llama"
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(directory, max_shard_size="40KB")
    save_word_tokenizer(directory)
    return directory


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    path = tmp_path / "calibration.txt"
    path.write_text("the w1 w2 of w3 and w4\nit was w5 w6 and w7 in w8\na w9 is the w10 of w11 w12\n")
    return path


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


@pytest.mark.slow
def test_a_count_is_ranked_on_the_calibration_text_as_the_python_api_ranks_it(checkpoint: Path, calibration: Path,
                                                                             tmp_path: Path, capsys: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pruneframe.app.pretrained import _forward

    before = _digest(checkpoint)
    out = tmp_path / "shallower"
    assert main(["prune", f"hf:{checkpoint}", "--ratio", "0.25", "--remove-layers", "2", "--calibration", str(calibration),
                 "--save-pretrained", str(out)]) == 0
    said = capsys.readouterr().out
    assert "mode: in memory" in said and "removed 2 layer(s): model.layers." in said
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 2 and _digest(checkpoint) == before

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    batches = [{k: v for k, v in dict(tokenizer(line, return_tensors="pt")).items() if k in ("input_ids", "attention_mask")}
               for line in calibration.read_text().splitlines()]
    inputs = {"input_ids": torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(0))}
    pruner = tp.pruner.MetaPruner(model, inputs, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.25,
                                  remove_layers=2, forward_fn=_forward)
    pruner.calibrate(batches)
    pruner.step()
    assert f"removed 2 layer(s): {', '.join(pruner.removed_layers)} " in said
    x = torch.randint(0, 128, (2, 9))
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(out).eval(), x), _logits(model, x))


@pytest.mark.slow
def test_names_need_no_calibration_for_a_checkpoint_in_memory(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    from transformers import AutoConfig

    out = tmp_path / "named"
    assert main(["prune", f"hf:{checkpoint}", "--ratio", "0.0", "--remove-layers", "model.layers.0,model.layers.3",
                 "--save-pretrained", str(out)]) == 0
    said = capsys.readouterr().out
    assert "removed 2 layer(s): model.layers.0, model.layers.3" in said
    assert "config | LlamaConfig | num_hidden_layers 4 -> 2" in " ".join(said.split())
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 2


@pytest.mark.slow
def test_named_blocks_stream_into_the_same_checkpoint_as_in_memory(checkpoint: Path, tmp_path: Path, capsys: Any) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    common = ["prune", f"hf:{checkpoint}", "--ratio", "0.25", "--remove-layers", "model.layers.1,model.layers.2",
              "--save-pretrained"]
    assert main([*common, str(tmp_path / "memory")]) == 0
    assert main([*common, str(tmp_path / "streamed"), "--max-memory", "10KB"]) == 0
    said = capsys.readouterr().out
    assert "mode: streaming" in said and said.count("removed 2 layer(s): model.layers.1, model.layers.2") == 2
    assert AutoConfig.from_pretrained(tmp_path / "streamed").num_hidden_layers == 2
    x = torch.randint(0, 128, (2, 9))
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "memory").eval(), x),
                       _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "streamed").eval(), x))


@pytest.mark.slow
def test_a_counted_removal_streams_into_the_same_checkpoint_as_in_memory(checkpoint: Path, calibration: Path,
                                                                        tmp_path: Path, capsys: Any) -> None:
    """Ranking by block influence runs the calibration through the planned model, each layer onloaded from the shards."""
    from transformers import AutoModelForCausalLM

    common = ["prune", f"hf:{checkpoint}", "--ratio", "0.25", "--remove-layers", "2", "--calibration", str(calibration),
              "--save-pretrained"]
    assert main([*common, str(tmp_path / "memory")]) == 0
    assert main([*common, str(tmp_path / "streamed"), "--max-memory", "10KB"]) == 0
    said = capsys.readouterr().out
    assert "mode: streaming" in said and said.count("removed 2 layer(s)") == 2
    x = torch.randint(0, 128, (2, 9))
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "memory").eval(), x),
                       _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "streamed").eval(), x))


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", [
    (["--remove-layers", "1"], "--remove-layers 1 ranks the blocks by block influence on calibration text: pass "
                               "--calibration FILE"),
    (["--remove-layers", "model.layers.9"], "--remove-layers: the model has no module 'model.layers.9'"),
])
def test_what_cannot_be_done_is_refused_and_nothing_is_written(checkpoint: Path, calibration: Path, tmp_path: Path,
                                                               capsys: Any, extra: list[str], message: str) -> None:
    before = _digest(checkpoint)
    argv = ["prune", f"hf:{checkpoint}", "--save-pretrained", str(tmp_path / "out"),
            *[e.format(calibration=calibration) for e in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "out").exists() and _digest(checkpoint) == before
