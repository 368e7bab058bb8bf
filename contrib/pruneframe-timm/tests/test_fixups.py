"""The timm plugin's fix-ups and hints, on small timm modules, loaded into a private registry."""
from __future__ import annotations

import pytest
import torch
from pruneframe_timm import plugin as timm_plugin
from pruneframe_timm.attention import attention_sizes
from pruneframe_timm.widths import vision_transformer
from timm.models.vision_transformer import Attention, VisionTransformer

import pruneframe
from pruneframe.registry import Registry, build_registry


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The installed plugins plus this checkout's timm plugin (an installed copy is disabled, so it is not loaded twice)."""
    monkeypatch.setenv("PRUNEFRAME_DISABLE_PLUGINS", "timm")
    return build_registry(extra_plugins=[("timm", timm_plugin)])


def small_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=4, mlp_ratio=2, num_classes=10).eval()


def test_attention_sizes_follow_the_qkv_weight_and_are_idempotent() -> None:
    attn = Attention(48, num_heads=4)
    attn.fused_attn = True
    attn.qkv = torch.nn.Linear(48, 3 * 4 * 10)
    attn.proj = torch.nn.Linear(40, 48)
    attention_sizes(attn)
    first = (attn.num_heads, attn.head_dim, attn.attn_dim, attn.scale, attn.fused_attn)
    attention_sizes(attn)
    assert (attn.num_heads, attn.head_dim, attn.attn_dim, attn.scale, attn.fused_attn) == first
    assert first == (4, 10, 40, pytest.approx(12 ** -0.5), False)  # scale stays the trained one
    assert attn(torch.randn(2, 5, 48)).shape == (2, 5, 48)


def test_attention_sizes_keep_the_fused_path_while_the_width_is_unchanged() -> None:
    attn = Attention(48, num_heads=4)
    attn.fused_attn = True
    attention_sizes(attn)
    assert (attn.head_dim, attn.attn_dim, attn.fused_attn) == (12, 48, True)


def test_attention_sizes_leave_widths_no_head_count_explains() -> None:
    attn = Attention(48, num_heads=4)
    attn.qkv = torch.nn.Linear(48, 3 * 4 * 12 - 2)  # not 3 * heads * anything
    attention_sizes(attn)
    assert (attn.head_dim, attn.attn_dim) == (12, 48)
    attn = Attention(48, num_heads=4)
    attn.qkv = torch.nn.Linear(48, 3 * 4 * 10)  # proj still reads 48: q, k, v and the merge disagree
    attention_sizes(attn)
    assert (attn.head_dim, attn.attn_dim) == (12, 48)


def test_vit_widths_come_from_the_token_stream_or_not_at_all() -> None:
    model = small_vit()
    model.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 40))  # disagrees with pos_embed and patch_embed (48)
    vision_transformer(model)
    assert model.embed_dim == model.num_features == 48


class MergingToInputWidth(Attention):
    """timm's Attention as older releases wrote it: no attn_dim, heads merged back to the input's width."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.attn_dim

    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


def test_attention_merging_to_its_input_width_is_kept_whole(registry: Registry) -> None:
    model = small_vit()
    block = model.blocks[0]
    block.attn = MergingToInputWidth(48, num_heads=4, qkv_bias=True)
    x = torch.randn(2, 3, 32, 32)
    graph = pruneframe.DependencyGraph(registry=registry).build_dependency(model, x)
    for layer, fn in ((block.attn.qkv, pruneframe.prune_linear_out_channels), (model.patch_embed.proj, pruneframe.prune_conv_out_channels)):
        group = graph.get_pruning_group(layer, fn, [0])
        assert not graph.check_pruning_group(group)
        assert any("reads its head width from the width of its input" in r for r in group.blocked_reasons)
    group = graph.get_pruning_group(block.mlp.fc1, pruneframe.prune_linear_out_channels, [0, 1])
    group.prune()
    assert block.mlp.fc1.out_features == 94 and model(x).shape == (2, 10)


def test_the_plugin_registers_its_hooks(registry: Registry) -> None:
    info = next(p for p in registry.describe() if p["name"] == "timm")
    assert info["hooks"] == ["pruneframe_fixups", "pruneframe_layer_pruners", "pruneframe_module_hints"]
    assert "timm.layers.attention.Attention" in info["module_types"]
    model, x = small_vit(), torch.randn(1, 3, 32, 32)
    graph = pruneframe.DependencyGraph(registry=registry).build_dependency(model, x)
    graph.get_pruning_group(model.blocks[0].attn.qkv, pruneframe.prune_linear_out_channels, [0]).prune()
    graph.get_pruning_group(model.patch_embed.proj, pruneframe.prune_conv_out_channels, [0]).prune()
    attn = model.blocks[0].attn
    assert (attn.head_dim, attn.attn_dim, model.embed_dim, model.num_features) == (11, 44, 47, 47)
    assert model(x).shape == (1, 10)


def test_attention_sizes_serve_tnt_attention_with_its_separate_v() -> None:
    from timm.models.tnt import Attention as TntAttention

    attn = TntAttention(48, hidden_dim=32, num_heads=4)
    attn.qk = torch.nn.Linear(48, 2 * 4 * 6)  # each q and k head 8 -> 6 wide; v (48) and proj keep their widths
    attention_sizes(attn)
    assert (attn.num_heads, attn.head_dim, attn.hidden_dim, attn.scale) == (4, 6, 24, pytest.approx(8 ** -0.5))
    assert attn(torch.randn(2, 5, 48)).shape == (2, 5, 48)


def test_metaformer_scale_shape_follows_its_parameter() -> None:
    from pruneframe_timm.widths import scale_shape
    from timm.models.metaformer import Scale

    scale = Scale(16)
    scale.scale = torch.nn.Parameter(torch.ones(10))
    scale_shape(scale)
    assert scale.shape == (10, 1, 1) and scale(torch.randn(1, 10, 3, 3)).shape == (1, 10, 3, 3)
    flat = Scale(16, use_nchw=False)
    flat.scale = torch.nn.Parameter(torch.ones(10))
    scale_shape(flat)
    assert flat.shape == (10,)
