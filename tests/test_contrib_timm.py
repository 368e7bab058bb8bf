"""The contrib ``pruneframe-timm`` distribution, once pip-installed, makes timm models prune correctly and keep running.

The distribution is installed offline into a temporary ``--target`` folder.
One subprocess with that folder on ``PYTHONPATH`` runs every pruning check
(timm is slow to import, so it is imported once) and prints a JSON report;
the tests below assert on it. This process and the shared virtualenv never see
the distribution.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from contrib_support import install_offline, run_python, run_readme_example

pytest.importorskip("timm")

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "pruneframe-timm"

REPORT_SCRIPT = r'''
import contextlib
import copy
import io
import json
import os
import random
import warnings

import timm
import torch
from timm.layers import LayerNorm2d
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import pruneframe as tp
from pruneframe.app import cli
from pruneframe.registry import build_registry
from pruneframe.testing import assert_prune_equivalent, masked_reference, randomize_, relative_error

report = {}
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def small_vit(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2,
                             num_classes=10, **kwargs).eval()


def small_swin():
    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=2, embed_dim=24, depths=(1, 1), num_heads=(2, 4), window_size=4,
                           num_classes=10).eval()


def attention(model, blocks):
    return [{
        "num_heads": b.attn.num_heads, "head_dim": b.attn.head_dim, "attn_dim": getattr(b.attn, "attn_dim", None),
        "qkv_out": b.attn.qkv.out_features, "proj_in": b.attn.proj.in_features, "fused_attn": bool(b.attn.fused_attn),
        "scale": b.attn.scale, "fc1_out": b.mlp.fc1.out_features,
    } for b in blocks]


def vit_facts(model, x):
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        y = model(x)
    return {"blocks": attention(model, model.blocks), "embed_dim": model.embed_dim, "num_features": model.num_features,
            "head_hidden_size": model.head_hidden_size, "features": list(features.shape),
            "pre_logits": list(pre_logits.shape), "output": list(y.shape), "finite": bool(torch.isfinite(y).all()),
            "feature_info": sorted({info["num_chs"] for info in model.feature_info})}


def meta_prune(model, x, **kwargs):
    tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5, **kwargs).step()


def inner_groups(ratio=0.5, seed=0):
    """A prune step for assert_prune_equivalent: random root blocks of the groups rooted at attn.qkv and mlp.fc1 only."""
    def step(graph, model):
        rng, done = random.Random(seed), []
        for group in list(graph.get_all_groups()):
            root = group[0].dep
            if not root.target.name.endswith(("attn.qkv", "mlp.fc1")):
                continue
            blocks = group.root_blocks()
            rng.shuffle(blocks)
            want, chosen = int(len(group.root_idxs) * ratio), []
            for block in blocks:
                if len(chosen) + len(block) <= want:
                    chosen += block
            graph.get_pruning_group(root.target.module, root.trigger, sorted(chosen)).prune()
            done.append(root.target.name)
        return done
    return step


def registry_without_timm():
    os.environ["PRUNEFRAME_DISABLE_PLUGINS"] = "timm"
    try:
        return build_registry()
    finally:
        del os.environ["PRUNEFRAME_DISABLE_PLUGINS"]


def refused(group, idxs):
    try:
        group.prune(idxs=idxs)
    except tp.ModelStopsRunningError as exc:
        return str(exc)
    return None


WITHOUT_TIMM = registry_without_timm()

# --- the plugin is found through its entry point -------------------------------------------------
listing = io.StringIO()
with contextlib.redirect_stdout(listing):
    cli.main(["plugins"])
report["plugins"] = {p["name"]: p for p in json.loads(listing.getvalue()) if p["name"] in ("timm", "linear")}
report["registry_without_timm"] = sorted(p["name"] for p in WITHOUT_TIMM.describe() if p["name"] == "timm")

# --- a small timm ViT, pruned by MetaPruner: hidden width, head widths and MLP widths ---------------
model = small_vit()
report["small_vit_before"] = vit_facts(model, X)
meta_prune(model, X)
report["small_vit"] = vit_facts(model, X)

# --- the same, saved with its plan and loaded into a freshly built model ----------------------------
buffer = io.BytesIO()
torch.save(tp.state_dict(model), buffer)
buffer.seek(0)
fresh = small_vit()
tp.load_state_dict(fresh, state_dict=torch.load(buffer, weights_only=True))
with torch.no_grad():
    report["round_trip"] = {"identical": bool(torch.equal(fresh(X), model(X))), "blocks": attention(fresh, fresh.blocks),
                            "embed_dim": fresh.embed_dim, "num_features": fresh.num_features}

# --- real timm configurations --------------------------------------------------------------------
for name, size in (("vit_tiny_patch16_224", 224), ("deit_tiny_patch16_224", 64)):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).eval()
    x = torch.randn(1, 3, size, size)
    meta_prune(model, x)
    report[name] = vit_facts(model, x)

# --- exactness: heads' widths and MLP widths, the token width kept --------------------------------
error = assert_prune_equivalent(small_vit(), X, inner_groups())
report["exact_inner_groups"] = error
# the same with MetaPruner's choice; ignoring the patch embedding keeps the LayerNorm-crossing token width
original = randomize_(small_vit().double())
pruned = copy.deepcopy(original)
pruner = tp.pruner.MetaPruner(pruned, X.double(), tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                              ignored_layers=[pruned.patch_embed.proj])
pruner.step()
reference = masked_reference(original, pruner.DG)
with torch.no_grad():
    exact = relative_error([pruned(X.double())], [reference(X.double())])
    for block in pruned.blocks:  # what timm's fused path computes: scores scaled by the new head_dim ** -0.5
        block.attn.fused_attn = True
    fused = relative_error([pruned(X.double())], [reference(X.double())])
report["exact_meta"] = {"error": exact, "fused_error": fused, "pruned": sorted({r[0].name for r in pruner.pruning_history()}),
                        "blocks": attention(pruned, pruned.blocks), "embed_dim": pruned.embed_dim}

# --- without the plugin the same head-width prune is refused -------------------------------------
report["refusals"] = {}
for label, registry in (("without", WITHOUT_TIMM), ("with", None)):
    model = small_vit()
    graph = tp.DependencyGraph(registry=registry).build_dependency(model, X)
    group = graph.get_pruning_group(model.blocks[0].attn.qkv, tp.prune_linear_out_channels, [0])
    report["refusals"][label] = {"refused": refused(group, [0]), "head_dim": model.blocks[0].attn.head_dim}

# --- Swin: head widths and MLP widths exact, MetaPruner, widths of model and head -----------------
report["swin_exact"] = assert_prune_equivalent(small_swin(), X, inner_groups())
model = small_swin()
meta_prune(model, X)
with torch.no_grad():
    features = model.forward_features(X)
    model.reset_classifier(3)
    y = model(X)
report["swin"] = {"features": list(features.shape), "num_features": model.num_features,
                  "head_hidden_size": model.head_hidden_size, "head_in": model.head.in_features,
                  "embed_dim": model.embed_dim, "patch_embed_out": model.patch_embed.proj.out_channels,
                  "reset_output": list(y.shape)}

# --- CNNs: 50% of every group, then timm's own API on the pruned model ----------------------------
report["cnn"] = {}
for name in ("resnet18", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto"):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    params = sum(p.numel() for p in model.parameters())
    before = {"num_features": model.num_features, "head_hidden_size": model.head_hidden_size}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.UnsupportedOpWarning)  # see convnext in the test
        meta_prune(model, x)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        y = model(x)
        model.reset_classifier(7)
        y7 = model(x)
    report["cnn"][name] = {
        "before": before, "param_ratio": sum(p.numel() for p in model.parameters()) / params,
        "features": features.shape[1], "num_features": model.num_features, "pre_logits": pre_logits.shape[-1],
        "head_hidden_size": model.head_hidden_size, "output": list(y.shape), "finite": bool(torch.isfinite(y).all()),
        "reset_output": list(y7.shape),
    }

# --- a hint: AttentionPoolLatent ties its head width to the token width ---------------------------
model = small_vit(global_pool="map")
meta_prune(model, X)  # would raise ModelStopsRunningError at the pool's groups without the hint
pool = model.attn_pool
with torch.no_grad():
    y = model(X)
hinted = small_vit(global_pool="map")
graph = tp.DependencyGraph().build_dependency(hinted, X)
blocked = graph.get_pruning_group(hinted.attn_pool.kv, tp.prune_linear_out_channels, [0]).blocked_reasons
unhinted = small_vit(global_pool="map")
graph = tp.DependencyGraph(registry=WITHOUT_TIMM).build_dependency(unhinted, X)
group = graph.get_pruning_group(unhinted.patch_embed.proj, tp.prune_conv_out_channels, [0])
report["attn_pool"] = {
    "output": list(y.shape), "kv": [pool.kv.in_features, pool.kv.out_features], "q": [pool.q.in_features, pool.q.out_features],
    "embed_dim": model.embed_dim, "pool_mlp_fc1": pool.mlp.fc1.out_features,
    "block_fc1": [b.mlp.fc1.out_features for b in model.blocks], "blocked_reasons": blocked,
    "token_width_refused_without_plugin": refused(group, group.root_blocks()[0]),
}

# --- timm's LayerNorm2d keeps its channels in dimension 1, whatever the spatial size ---------------
def norm_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), LayerNorm2d(8), nn.Conv2d(8, 4, 1)).eval()

x = torch.randn(1, 3, 8, 8)  # W == C == 8: a guess from sizes alone cannot tell them apart
report["layernorm2d"] = {}
for label, registry in (("with", None), ("without", WITHOUT_TIMM)):
    net = norm_net()
    weight = net[1].weight.detach().clone()
    graph = tp.DependencyGraph(registry=registry).build_dependency(net, x)
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, [2, 5])
    entry = {"members": {dep.target.name: idxs for dep, idxs in group}, "prunable": graph.check_pruning_group(group)}
    if entry["prunable"]:
        group.prune()
        entry["normalized_shape"] = list(net[1].normalized_shape)
        entry["kept_weight"] = bool(torch.equal(net[1].weight.detach(), weight[[0, 1, 3, 4, 6, 7]]))
        entry["output"] = list(net(x).shape)
    report["layernorm2d"][label] = entry

print("REPORT " + json.dumps(report))
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contrib distribution, pip-installed offline into a fresh ``--target`` folder."""
    return install_offline(CONTRIB, tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def report(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = run_python(["-c", REPORT_SCRIPT], tmp_path_factory.mktemp("run"), installed).stdout
    line = next(line for line in out.splitlines() if line.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def _consistent(block: dict[str, Any]) -> bool:
    """The stored sizes of one timm Attention (and its MLP) agree with its weights."""
    return (block["qkv_out"] == 3 * block["num_heads"] * block["head_dim"]
            and block["attn_dim"] == block["proj_in"] == block["num_heads"] * block["head_dim"])


def test_install_adds_only_the_package_and_its_metadata(installed: Path) -> None:
    assert sorted(p.name for p in installed.iterdir()) == ["pruneframe_timm", "pruneframe_timm-0.1.0.dist-info"]
    dist_info = installed / "pruneframe_timm-0.1.0.dist-info"
    # the plugin, and the framework it is imported for (only once timm is in use)
    assert sorted((dist_info / "entry_points.txt").read_text().split()) == sorted(
        ["[pruneframe.plugins]", "timm", "=", "pruneframe_timm.plugin", "[pruneframe.frameworks]", "timm", "=", "timm"])
    metadata = (dist_info / "METADATA").read_text()
    assert "Name: pruneframe-timm" in metadata and "Requires-Dist: timm>=1.0" in metadata
    assert (installed / "pruneframe_timm" / "py.typed").exists()


def test_pruneframe_plugins_lists_it(report: dict[str, Any]) -> None:
    timm_plugin = report["plugins"]["timm"]
    assert (timm_plugin["distribution"], timm_plugin["version"], timm_plugin["module"]) == ("pruneframe-timm", "0.1.0", "pruneframe_timm.plugin")
    assert timm_plugin["builtin"] is False
    assert timm_plugin["hooks"] == ["pruneframe_fixups", "pruneframe_layer_pruners", "pruneframe_module_hints"]
    assert {"timm.layers.attention.Attention", "timm.models.vision_transformer.VisionTransformer",
            "timm.layers.attention_pool.AttentionPoolLatent", "timm.layers.norm.LayerNorm2d"} <= set(timm_plugin["module_types"])
    assert timm_plugin["functions"] == ["prune_timm_layernorm2d_in_channels", "prune_timm_layernorm2d_out_channels"]
    assert report["plugins"]["linear"]["builtin"] is True, "the built-ins still load beside it"
    assert report["registry_without_timm"] == [], "PRUNEFRAME_DISABLE_PLUGINS=timm leaves it out"


def test_meta_pruner_halves_a_timm_vit_and_it_runs(report: dict[str, Any]) -> None:
    before, after = report["small_vit_before"], report["small_vit"]
    assert before["blocks"][0]["head_dim"] == 12 and before["embed_dim"] == 48
    assert after["output"] == [2, 10] and after["finite"]
    for block in after["blocks"]:
        # heads keep their number, each loses half its width; the MLP loses half its hidden features
        assert (block["num_heads"], block["head_dim"], block["fc1_out"]) == (4, 6, 48)
        assert _consistent(block)
        assert block["fused_attn"] is False and block["scale"] == pytest.approx(12 ** -0.5)
    assert after["embed_dim"] == after["num_features"] == after["head_hidden_size"] == 24
    assert after["features"] == [2, 17, 24] and after["pre_logits"] == [2, 24]
    assert after["feature_info"] == [24]


@pytest.mark.parametrize("name,tokens", [("vit_tiny_patch16_224", 197), ("deit_tiny_patch16_224", 17)])
def test_meta_pruner_halves_timm_tiny_vits(report: dict[str, Any], name: str, tokens: int) -> None:
    facts = report[name]
    assert facts["output"] == [1, 1000] and facts["finite"]
    assert facts["embed_dim"] == facts["num_features"] == facts["head_hidden_size"] == 96
    assert facts["features"] == [1, tokens, 96]
    for block in facts["blocks"]:
        assert (block["num_heads"], block["head_dim"], block["fc1_out"]) == (3, 32, 384)
        assert _consistent(block) and block["scale"] == pytest.approx(64 ** -0.5)


def test_head_widths_and_mlp_widths_prune_exactly(report: dict[str, Any]) -> None:
    assert report["exact_inner_groups"] < 1e-9
    meta = report["exact_meta"]
    assert meta["error"] < 1e-9
    assert meta["pruned"] == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1"]
    assert meta["embed_dim"] == 48, "the ignored patch embedding keeps the token width"
    assert all(b["head_dim"] == 6 and _consistent(b) for b in meta["blocks"])
    # Why the fix-up keeps scale and leaves the fused path: scaling by the new head_dim ** -0.5 is another model.
    assert meta["fused_error"] > 1e-6


def test_the_fixup_is_what_makes_head_widths_prunable(report: dict[str, Any]) -> None:
    without, with_plugin = report["refusals"]["without"], report["refusals"]["with"]
    assert "no longer runs" in without["refused"] and "[2, 17, 3, 4, 12]" in without["refused"]
    assert without["head_dim"] == 12
    assert with_plugin == {"refused": None, "head_dim": 11}


def test_state_dict_round_trip_replays_the_fixups(report: dict[str, Any]) -> None:
    trip = report["round_trip"]
    assert trip["identical"] is True
    assert trip["blocks"] == report["small_vit"]["blocks"]
    assert trip["embed_dim"] == trip["num_features"] == 24


def test_swin_prunes_exactly_and_keeps_its_widths(report: dict[str, Any]) -> None:
    assert report["swin_exact"] < 1e-9
    swin = report["swin"]
    assert swin["features"][-1] == swin["num_features"] == swin["head_hidden_size"] == swin["head_in"] == 24
    assert swin["embed_dim"] == swin["patch_embed_out"] == 12
    assert swin["reset_output"] == [2, 3]


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto"])
def test_cnns_prune_by_half_and_timm_api_still_fits(report: dict[str, Any], name: str) -> None:
    cnn = report["cnn"][name]
    assert cnn["output"] == [1, 1000] and cnn["finite"]
    assert cnn["param_ratio"] < 0.5
    assert cnn["features"] == cnn["num_features"] and cnn["pre_logits"] == cnn["head_hidden_size"]
    assert cnn["reset_output"] == [1, 7], "reset_classifier builds a classifier that fits the pruned features"
    if name != "convnext_atto":  # its last stage is not pruned (see the contrib README): nothing to fix there
        assert cnn["num_features"] < cnn["before"]["num_features"]


def test_attention_pool_latent_is_hinted(report: dict[str, Any]) -> None:
    pool = report["attn_pool"]
    assert pool["output"] == [2, 10]
    assert pool["kv"] == [48, 96] and pool["q"] == [48, 48] and pool["embed_dim"] == 48
    assert pool["pool_mlp_fc1"] == 48 and pool["block_fc1"] == [48, 48], "the MLPs still prune (96 -> 48)"
    assert any("AttentionPoolLatent merges its heads back" in r for r in pool["blocked_reasons"])
    assert "no longer runs" in pool["token_width_refused_without_plugin"]


def test_channels_first_layer_norm_keeps_channels_in_dim_1(report: dict[str, Any]) -> None:
    with_plugin = report["layernorm2d"]["with"]
    assert with_plugin["members"] == {"0": [2, 5], "1": [2, 5], "2": [2, 5]}
    assert with_plugin["prunable"] is True
    assert with_plugin["normalized_shape"] == [6] and with_plugin["kept_weight"] is True
    assert with_plugin["output"] == [1, 4, 8, 8]
    # the built-in nn.LayerNorm pruner, guessing from sizes, takes W for the channels: nothing can be pruned
    assert report["layernorm2d"]["without"]["prunable"] is False


def test_readme_example_runs(installed: Path, tmp_path: Path) -> None:
    run_readme_example(CONTRIB, installed, tmp_path)
