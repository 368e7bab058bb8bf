"""Saved files reload from anywhere, and no model source downloads anything.

A file saved from ``FILE.py:factory`` keeps the file's absolute path, sha256 and source text; one from ``hf:DIR``
keeps the config itself. ``load_pruned`` then works from any directory, after the model file moved or changed
(with a warning saying which code is used) and after the Hugging Face directory is gone.
"""
from __future__ import annotations

import os
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from pruneframe import load_pruned
from pruneframe.app import model_sources
from pruneframe.app.cli import main

MODEL_FILE = textwrap.dedent("""
    import torch
    from torch import nn

    WIDTH = 16

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU(),
                              nn.Conv2d(WIDTH, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
        return model, torch.randn(1, 3, 8, 8)
""")


@pytest.fixture
def pruned_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[Path, Path]:
    """A model file in models/, pruned from inside models/ with a relative spec; returns (model file, saved file)."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "net.py").write_text(MODEL_FILE)
    monkeypatch.chdir(folder)
    assert main(["prune", "net.py:build", "--ratio", "0.5", "--out", "net_pruned.pth"]) == 0
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder / "net.py", folder / "net_pruned.pth"


def _runs(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(model(torch.randn(2, 3, 8, 8)).shape)


def test_the_saved_file_is_plain_data_with_the_model_file_recorded(pruned_from_file: tuple[Path, Path]) -> None:
    source_file, saved_file = pruned_from_file
    saved = torch.load(saved_file, weights_only=True)
    record = saved["model_source"]
    assert record["kind"] == "file" and record["path"] == str(source_file) and record["factory"] == "build"
    assert record["text"] == MODEL_FILE and len(record["sha256"]) == 64
    assert saved["source"] == "net.py:build"  # the spec as given, for older readers


def test_it_reloads_from_another_directory(pruned_from_file: tuple[Path, Path]) -> None:
    _, saved_file = pruned_from_file
    assert os.getcwd() != str(saved_file.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("error", model_sources.ModelCodeChangedWarning)
        model = load_pruned(str(saved_file))
    assert model[0].out_channels == 8 and _runs(model) == (2, 4)


def test_it_reloads_after_the_model_file_moved(pruned_from_file: tuple[Path, Path]) -> None:
    source_file, saved_file = pruned_from_file
    source_file.rename(source_file.with_name("moved.py"))
    assert _runs(load_pruned(str(saved_file))) == (2, 4)
    with pytest.raises(model_sources.ModelSourceError, match="no longer exists; load it with model_code='saved'"):
        load_pruned(str(saved_file), model_code="file")


def test_a_changed_model_file_warns_and_the_saved_copy_is_used(pruned_from_file: tuple[Path, Path]) -> None:
    source_file, saved_file = pruned_from_file
    source_file.write_text(MODEL_FILE.replace("WIDTH = 16", "WIDTH = 32"))
    with pytest.warns(model_sources.ModelCodeChangedWarning, match=r"net.py changed since .*the copy of its code saved in .* is used"):
        model = load_pruned(str(saved_file))
    assert model[0].out_channels == 8 and _runs(model) == (2, 4)
    # the file as it is now builds a wider model that the saved plan and weights do not fit
    with pytest.raises(Exception, match="do not fit|out of range|size mismatch"):
        load_pruned(str(saved_file), model_code="file")


def test_files_saved_before_the_source_record_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "torchvision:resnet18", "--ratio", "0.25", "--input-shape", "1,3,32,32", "--out", "r.pth"]) == 0
    capsys.readouterr()
    saved = torch.load("r.pth", weights_only=True)
    del saved["model_source"]
    torch.save(saved, "old.pth")
    assert load_pruned("old.pth").conv1.out_channels == 48


def test_a_hugging_face_model_reloads_without_its_directory_nor_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=64)
    config.save_pretrained(tmp_path / "bert")  # config only: built from it
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "hf:bert", "--ratio", "0.5", "--out", "bert.pth"]) == 0
    capsys.readouterr()
    record = torch.load("bert.pth", weights_only=True)["model_source"]
    assert record["kind"] == "hf" and '"model_type": "bert"' in record["config"]
    (tmp_path / "bert" / "config.json").unlink()
    (tmp_path / "bert").rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any Hub access would now fail loudly
    model = load_pruned(str(tmp_path / "bert.pth"))
    assert model.encoder.layer[0].intermediate.dense.out_features == 32
    assert model(input_ids=torch.randint(0, 100, (1, 16)))[0].shape == (1, 16, 32)


def test_no_torchvision_builder_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection and segmentation builders default weights_backbone to ImageNet weights: it must be passed as None."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    for name in ("fasterrcnn_mobilenet_v3_large_fpn", "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large",
                 "ssdlite320_mobilenet_v3_large", "r3d_18", "raft_small", "mobilenet_v3_small"):
        built = model_sources.build(f"torchvision:{name}")
        assert not built.model.training, name
    assert isinstance(model_sources.build("torchvision:lraspp_mobilenet_v3_large").inputs, torch.Tensor)


def test_each_torchvision_family_gets_inputs_it_accepts() -> None:
    detection = model_sources.build("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", (2, 3, 64, 96))
    images, = detection.inputs
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, 64, 96)] * 2
    with torch.no_grad():
        out = detection.model(*detection.inputs)
    assert isinstance(out, list) and set(out[0]) == {"boxes", "labels", "scores"}
    with pytest.raises(model_sources.ModelSourceError, match="detection model: it takes a list of images, so --input-shape is "
                                                             r"BATCH,3,HEIGHT,WIDTH \(e.g. 1,3,320,320\), not 3,64,64"):
        model_sources.build("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", (3, 64, 64))
    assert tuple(model_sources.build("torchvision:r3d_18").inputs.shape) == (1, 3, 16, 112, 112)
    flow = model_sources.build("torchvision:raft_small").inputs
    assert isinstance(flow, tuple) and len(flow) == 2


@pytest.mark.slow
def test_a_detection_model_prunes_and_reloads(tmp_path: Path, capsys) -> None:
    out = tmp_path / "det.pth"
    assert main(["prune", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "--ratio", "0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Parameters:" in printed and "saved to" in printed
    model = load_pruned(str(out))
    with torch.no_grad():
        detections = model([torch.randn(3, 320, 320)])
    assert set(detections[0]) == {"boxes", "labels", "scores"}
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None,
                                                         weights_backbone=None).parameters())


@pytest.mark.slow
def test_a_file_saved_by_the_command_reloads_in_another_process_from_another_directory(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from conftest import subprocess_env

    made, used = tmp_path / "made_here", tmp_path / "used_here"
    made.mkdir()
    used.mkdir()
    (made / "net.py").write_text(MODEL_FILE)
    pruned = subprocess.run([sys.executable, "-m", "pruneframe", "prune", "net.py:build", "--ratio", "0.5", "--out", "p.pth"],
                            cwd=made, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert pruned.returncode == 0, pruned.stderr
    code = ("import json, sys, torch, pruneframe; m = pruneframe.load_pruned(sys.argv[1]); "
            "print(json.dumps([m[0].out_channels, list(m(torch.randn(2, 3, 8, 8)).shape)]))")
    loaded = subprocess.run([sys.executable, "-c", code, str(made / "p.pth")], cwd=used, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout) == [8, [2, 4]]
