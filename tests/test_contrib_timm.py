"""The contrib ``pruneframe-timm`` distribution, once pip-installed, makes timm models prune correctly and keep running.

The distribution is installed offline into a temporary ``--target`` folder,
and for this module's tests that folder is put on ``sys.path`` with a fresh
process-wide plugin registry (``installed_in_process``), so the plugin is
found through its entry point exactly as after ``pip install``; other test
modules and the shared virtualenv never see it.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.app import cli
from pruneframe.registry import build_registry
from pruneframe.testing import assert_prune_equivalent, masked_reference, randomize_, relative_error

from contrib_support import install_offline, installed_in_process, run_readme_example

timm = pytest.importorskip("timm")
from timm.layers import LayerNorm2d  # noqa: E402
from timm.models.swin_transformer import SwinTransformer  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

pytestmark = pytest.mark.slow

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "pruneframe-timm"
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The contrib distribution, pip-installed offline into a fresh ``--target`` folder."""
    return install_offline(CONTRIB, tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module", autouse=True)
def plugin(installed: Path) -> Iterator[None]:
    """Every test here runs with the installed plugin in the process-wide registry."""
    with installed_in_process(installed, "pruneframe_timm"):
        yield


@pytest.fixture(scope="module")
def without_timm(plugin: None) -> Any:
    """A registry of every installed plugin but this one."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PRUNEFRAME_DISABLE_PLUGINS", "timm")
    try:
        return build_registry()
    finally:
        mp.undo()


def small_vit(**kwargs: Any) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2,
                             num_classes=10, **kwargs).eval()


def small_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=2, embed_dim=24, depths=(1, 1), num_heads=(2, 4), window_size=4,
                           num_classes=10).eval()


def attention(blocks: Any) -> list[dict[str, Any]]:
    return [{
        "num_heads": b.attn.num_heads, "head_dim": b.attn.head_dim, "attn_dim": getattr(b.attn, "attn_dim", None),
        "qkv_out": b.attn.qkv.out_features, "proj_in": b.attn.proj.in_features, "fused_attn": bool(b.attn.fused_attn),
        "scale": b.attn.scale, "fc1_out": b.mlp.fc1.out_features,
    } for b in blocks]


def vit_facts(model: Any, x: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        y = model(x)
    return {"blocks": attention(model.blocks), "embed_dim": model.embed_dim, "num_features": model.num_features,
            "head_hidden_size": model.head_hidden_size, "features": list(features.shape),
            "pre_logits": list(pre_logits.shape), "output": list(y.shape), "finite": bool(torch.isfinite(y).all()),
            "feature_info": sorted({info["num_chs"] for info in model.feature_info})}


def meta_prune(model: nn.Module, x: torch.Tensor, **kwargs: Any) -> tp.pruner.MetaPruner:
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5, **kwargs)
    pruner.step()
    return pruner


def inner_groups(ratio: float = 0.5, seed: int = 0):
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


def refused(group: tp.Group, idxs: list[int]) -> str | None:
    try:
        group.prune(idxs=idxs)
    except tp.ModelStopsRunningError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def pruned_vit() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """A small timm ViT pruned by MetaPruner (hidden width, head widths, MLP widths): model, facts before, after."""
    model = small_vit()
    before = vit_facts(model, X)
    meta_prune(model, X)
    return model, before, vit_facts(model, X)


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


def test_pruneframe_plugins_lists_it(without_timm: Any) -> None:
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        cli.main(["plugins"])
    plugins = {p["name"]: p for p in json.loads(listing.getvalue())}
    timm_plugin = plugins["timm"]
    assert (timm_plugin["distribution"], timm_plugin["version"], timm_plugin["module"]) == ("pruneframe-timm", "0.1.0", "pruneframe_timm.plugin")
    assert timm_plugin["builtin"] is False
    assert timm_plugin["hooks"] == ["pruneframe_fixups", "pruneframe_layer_pruners", "pruneframe_module_hints"]
    assert {"timm.layers.attention.Attention", "timm.models.vision_transformer.VisionTransformer",
            "timm.layers.attention_pool.AttentionPoolLatent", "timm.layers.norm.LayerNorm2d"} <= set(timm_plugin["module_types"])
    assert timm_plugin["functions"] == ["prune_timm_layernorm2d_in_channels", "prune_timm_layernorm2d_out_channels"]
    assert plugins["linear"]["builtin"] is True, "the built-ins still load beside it"
    assert "timm" not in {p.name for p in without_timm.plugins}, "PRUNEFRAME_DISABLE_PLUGINS=timm leaves it out"


def test_meta_pruner_halves_a_timm_vit_and_it_runs(pruned_vit: Any) -> None:
    _, before, after = pruned_vit
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


@pytest.mark.parametrize("name,size,tokens", [("vit_tiny_patch16_224", 224, 197), ("deit_tiny_patch16_224", 64, 17)])
def test_meta_pruner_halves_timm_tiny_vits(name: str, size: int, tokens: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).eval()
    x = torch.randn(1, 3, size, size)
    meta_prune(model, x)
    facts = vit_facts(model, x)
    assert facts["output"] == [1, 1000] and facts["finite"]
    assert facts["embed_dim"] == facts["num_features"] == facts["head_hidden_size"] == 96
    assert facts["features"] == [1, tokens, 96]
    for block in facts["blocks"]:
        assert (block["num_heads"], block["head_dim"], block["fc1_out"]) == (3, 32, 384)
        assert _consistent(block) and block["scale"] == pytest.approx(64 ** -0.5)


def test_head_widths_and_mlp_widths_prune_exactly() -> None:
    assert assert_prune_equivalent(small_vit(), X, inner_groups()) < 1e-9
    # the same with MetaPruner's choice; ignoring the patch embedding keeps the LayerNorm-crossing token width
    original = randomize_(small_vit().double())
    pruned = copy.deepcopy(original)
    pruner = meta_prune(pruned, X.double(), ignored_layers=[pruned.patch_embed.proj])
    reference = masked_reference(original, pruner.DG)
    with torch.no_grad():
        assert relative_error([pruned(X.double())], [reference(X.double())]) < 1e-9
        for block in pruned.blocks:  # what timm's fused path computes: scores scaled by the new head_dim ** -0.5
            block.attn.fused_attn = True
        fused = relative_error([pruned(X.double())], [reference(X.double())])
    assert sorted({r[0].name for r in pruner.pruning_history()}) == [
        "blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1"]
    assert pruned.embed_dim == 48, "the ignored patch embedding keeps the token width"
    assert all(b["head_dim"] == 6 and _consistent(b) for b in attention(pruned.blocks))
    # Why the fix-up keeps scale and leaves the fused path: scaling by the new head_dim ** -0.5 is another model.
    assert fused > 1e-6


def test_the_fixup_is_what_makes_head_widths_prunable(without_timm: Any) -> None:
    outcome = {}
    for label, registry in (("without", without_timm), ("with", None)):
        model = small_vit()
        graph = tp.DependencyGraph(registry=registry).build_dependency(model, X)
        group = graph.get_pruning_group(model.blocks[0].attn.qkv, tp.prune_linear_out_channels, [0])
        outcome[label] = {"refused": refused(group, [0]), "head_dim": model.blocks[0].attn.head_dim}
    without, with_plugin = outcome["without"], outcome["with"]
    assert "no longer runs" in without["refused"] and "[2, 17, 3, 4, 12]" in without["refused"]
    assert without["head_dim"] == 12
    assert with_plugin == {"refused": None, "head_dim": 11}


def test_state_dict_round_trip_replays_the_fixups(pruned_vit: Any) -> None:
    model, _, after = pruned_vit
    buffer = io.BytesIO()
    torch.save(tp.state_dict(model), buffer)
    buffer.seek(0)
    fresh = small_vit()
    tp.load_state_dict(fresh, state_dict=torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))
    assert attention(fresh.blocks) == after["blocks"]
    assert fresh.embed_dim == fresh.num_features == 24


def test_swin_prunes_exactly_and_keeps_its_widths() -> None:
    assert assert_prune_equivalent(small_swin(), X, inner_groups()) < 1e-9
    model = small_swin()
    meta_prune(model, X)
    with torch.no_grad():
        features = model.forward_features(X)
        model.reset_classifier(3)
        y = model(X)
    assert features.shape[-1] == model.num_features == model.head_hidden_size == model.head.in_features == 24
    assert model.embed_dim == model.patch_embed.proj.out_channels == 12
    assert list(y.shape) == [2, 3]


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto"])
def test_cnns_prune_by_half_and_timm_api_still_fits(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    params = sum(p.numel() for p in model.parameters())
    num_features_before = model.num_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.UnsupportedOpWarning)  # convnext: see below
        meta_prune(model, x)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        y = model(x)
        model.reset_classifier(7)
        y7 = model(x)
    assert list(y.shape) == [1, 1000] and bool(torch.isfinite(y).all())
    assert sum(p.numel() for p in model.parameters()) / params < 0.5
    assert features.shape[1] == model.num_features and pre_logits.shape[-1] == model.head_hidden_size
    assert list(y7.shape) == [1, 7], "reset_classifier builds a classifier that fits the pruned features"
    if name != "convnext_atto":  # its last stage is not pruned (see the contrib README): nothing to fix there
        assert model.num_features < num_features_before


def test_attention_pool_latent_is_hinted(without_timm: Any) -> None:
    model = small_vit(global_pool="map")
    meta_prune(model, X)  # the pool's groups would be left whole without the hint
    pool = model.attn_pool
    with torch.no_grad():
        assert list(model(X).shape) == [2, 10]
    assert [pool.kv.in_features, pool.kv.out_features] == [48, 96] and [pool.q.in_features, pool.q.out_features] == [48, 48]
    assert model.embed_dim == 48
    assert pool.mlp.fc1.out_features == 48 and [b.mlp.fc1.out_features for b in model.blocks] == [48, 48], \
        "the MLPs still prune (96 -> 48)"
    hinted = small_vit(global_pool="map")
    graph = tp.DependencyGraph().build_dependency(hinted, X)
    blocked = graph.get_pruning_group(hinted.attn_pool.kv, tp.prune_linear_out_channels, [0]).blocked_reasons
    assert any("AttentionPoolLatent merges its heads back" in r for r in blocked)
    unhinted = small_vit(global_pool="map")
    graph = tp.DependencyGraph(registry=without_timm).build_dependency(unhinted, X)
    group = graph.get_pruning_group(unhinted.patch_embed.proj, tp.prune_conv_out_channels, [0])
    assert "no longer runs" in refused(group, group.root_blocks()[0])


def test_channels_first_layer_norm_keeps_channels_in_dim_1(without_timm: Any) -> None:
    def norm_net() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 1), LayerNorm2d(8), nn.Conv2d(8, 4, 1)).eval()

    x = torch.randn(1, 3, 8, 8)  # W == C == 8: a guess from sizes alone cannot tell them apart
    net = norm_net()
    weight = net[1].weight.detach().clone()
    graph = tp.DependencyGraph().build_dependency(net, x)
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, [2, 5])
    assert {dep.target.name: idxs for dep, idxs in group} == {"0": [2, 5], "1": [2, 5], "2": [2, 5]}
    assert graph.check_pruning_group(group)
    group.prune()
    assert list(net[1].normalized_shape) == [6] and torch.equal(net[1].weight.detach(), weight[[0, 1, 3, 4, 6, 7]])
    assert list(net(x).shape) == [1, 4, 8, 8]
    # the built-in nn.LayerNorm pruner, guessing from sizes, takes W for the channels: nothing can be pruned
    net = norm_net()
    graph = tp.DependencyGraph(registry=without_timm).build_dependency(net, x)
    assert not graph.check_pruning_group(graph.get_pruning_group(net[0], tp.prune_conv_out_channels, [2, 5]))


def test_readme_example_runs(installed: Path, tmp_path: Path) -> None:
    run_readme_example(CONTRIB, installed, tmp_path)


def test_with_the_plugin_installed_there_is_no_missing_plugin_warning() -> None:
    from pruneframe.errors import MissingPluginWarning

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingPluginWarning)
        tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
