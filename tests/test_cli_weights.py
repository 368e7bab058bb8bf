"""``pruneframe prune --weights`` and a Hugging Face directory's own weights: loaded, checked first, and said so."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision

from pruneframe import load_pruned
from pruneframe.app.cli import main
from pruneframe.app.weights import WeightsError, load_weights

SMALL = ("--input-shape", "1,3,32,32", "--ratio", "0.25")


def _resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd, "epoch": 3}, lambda sd: {"model": sd, "optimizer": {}},
                                  lambda sd: {f"module.{k}": v for k, v in sd.items()}],
                         ids=["state-dict", "checkpoint-state_dict", "checkpoint-model", "data-parallel-prefix"])
def test_weights_are_loaded_before_the_prune_and_end_up_in_the_saved_model(tmp_path: Path, capsys, wrap) -> None:
    state = _resnet18_state()
    torch.save(wrap(state), tmp_path / "trained.pth")
    out = tmp_path / "pruned.pth"
    assert main(["prune", "torchvision:resnet18", *SMALL, "--weights", str(tmp_path / "trained.pth"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(rf"weights: {re.escape(str(tmp_path / 'trained.pth'))}(\[.+\])?: 122 tensors", printed), printed
    pruned = load_pruned(str(out))
    # the classifier keeps its outputs, so its bias is the trained one; the first conv keeps trained filters
    assert torch.equal(pruned.fc.bias, state["fc.bias"])
    kept = pruned.conv1.weight.shape[0]
    trained = state["conv1.weight"]
    matches = sum(bool((trained == w).all(dim=(1, 2, 3)).any()) for w in pruned.conv1.weight)
    assert kept == 48 and matches == kept


def test_bad_weights_are_named_with_their_first_bad_keys_before_anything_runs(tmp_path: Path, capsys) -> None:
    state = _resnet18_state()
    torch.save({"fc.weight": torch.zeros(3, 3)} | {k: v for k, v in state.items() if k != "fc.weight"}, tmp_path / "shape.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4")} | {"extra.weight": torch.zeros(1)},
               tmp_path / "keys.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    (tmp_path / "text.pth").write_text("not a torch file")
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a module, not tensors: weights_only refuses it
    cases = {
        "shape.pth": ["1 shape mismatch: fc.weight: (3, 3) in the file, (1000, 512) in the model"],
        "keys.pth": ["missing: layer4.0.conv1.weight, layer4.0.bn1.weight", "1 unexpected: extra.weight"],
        "list.pth": ["holds a list, not a state dict"],
        "meta.pth": ["is not a state dict", "'epoch' (int)", "'state_dict' or 'model'"],
        "text.pth": ["torch.load(weights_only=True) cannot read it"],
        "pickled.pth": ["torch.load(weights_only=True) cannot read it", "torch.save(model.state_dict(), path)"],
    }
    for name, fragments in cases.items():
        before = sorted(p.name for p in tmp_path.iterdir())
        code = main(["prune", "torchvision:resnet18", *SMALL, "--weights", str(tmp_path / name), "--out", str(tmp_path / "o.pth")])
        captured = capsys.readouterr()
        assert code == 2, name
        assert f"--weights {tmp_path / name}" in captured.err, captured.err
        for fragment in fragments:
            assert fragment in captured.err, (name, captured.err)
        assert "step 1/1" not in captured.out and sorted(p.name for p in tmp_path.iterdir()) == before


def test_load_weights_leaves_the_model_as_it_was_when_they_do_not_fit(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = _resnet18_state()
    state["fc.weight"] = torch.zeros(10, 512)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"fc.weight: \(10, 512\) in the file, \(1000, 512\) in the model"):
        load_weights(model, str(tmp_path / "w.pth"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_pruned_file_given_as_weights_points_to_load_pruned(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pruned.pth"
    assert main(["prune", "torchvision:resnet18", *SMALL, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["prune", "torchvision:resnet18", *SMALL, "--weights", str(out), "--dry-run"]) == 2
    assert f"is a pruned model saved by pruneframe: load it with pruneframe.load_pruned('{out}')" in capsys.readouterr().err


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128)
    torch.manual_seed(3)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def test_a_hugging_face_directory_with_weights_is_loaded_and_a_config_only_one_built(llama_dir: Path, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    saved = load_file(llama_dir / "model.safetensors")
    assert main(["prune", f"hf:{llama_dir}", "--ratio", "0.25", "--out", str(tmp_path / "with.pth")]) == 0
    printed = capsys.readouterr().out
    assert f"weights: {llama_dir / 'model.safetensors'} (from_pretrained, local files only) into LlamaModel" in printed
    pruned = load_pruned(str(tmp_path / "with.pth"))
    assert torch.equal(pruned.norm.weight, saved["norm.weight"])  # the hidden size is kept: the trained norm weights

    (llama_dir / "model.safetensors").unlink()
    assert main(["prune", f"hf:{llama_dir}", "--ratio", "0.25", "--dry-run"]) == 0
    assert "weights: random initialisation from config.json (the directory has no model.safetensors" in capsys.readouterr().out


def test_weights_given_for_a_hugging_face_directory_replace_its_own(llama_dir: Path, tmp_path: Path, capsys) -> None:
    import transformers

    config = json.loads((llama_dir / "config.json").read_text())
    other = transformers.AutoModel.from_config(transformers.LlamaConfig(**{k: config[k] for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size")}))
    torch.nn.init.constant_(other.norm.weight, 0.5)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    assert main(["prune", f"hf:{llama_dir}", "--ratio", "0.25", "--weights", str(tmp_path / "other.pth"),
                 "--out", str(tmp_path / "p.pth")]) == 0
    printed = capsys.readouterr().out
    assert "the directory's own weights (model.safetensors) are not loaded, --weights replaces them" in printed
    assert bool((load_pruned(str(tmp_path / "p.pth")).norm.weight == 0.5).all())


def test_a_sharded_hugging_face_checkpoint_is_loaded_through_its_index(llama_dir: Path, tmp_path: Path, capsys) -> None:
    import transformers

    model = transformers.AutoModel.from_pretrained(llama_dir, local_files_only=True)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 1
    assert main(["prune", f"hf:{tmp_path / 'sharded'}", "--ratio", "0.25", "--out", str(tmp_path / "s.pth")]) == 0
    assert (f"weights: {tmp_path / 'sharded' / 'model.safetensors.index.json'} (from_pretrained, local files only)"
            in capsys.readouterr().out)
    assert torch.equal(load_pruned(str(tmp_path / "s.pth")).norm.weight, model.norm.weight)
