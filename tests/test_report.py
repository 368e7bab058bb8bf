"""pruneframe.app.report: the per-layer table of what a prune changed, and the layer sides it left whole with why."""
from __future__ import annotations

import io
import warnings
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

import pruneframe as tp
from architectures import AttentionBlock, SortNet
from pruneframe.app.report import (
    CHOSE_NONE,
    UNTOUCHED,
    KeptWhole,
    LayerChange,
    SizeChange,
    channel_groups,
    compact_names,
    kept_whole,
    kept_whole_table,
    layer_changes,
    layer_sizes,
    layer_table,
    print_prune_report,
    shorten_names,
)


def changes(snapshot, model) -> dict[str, str]:
    """{layer: "size a -> b, ..."} of every layer that changed."""
    return {row.name: ", ".join(map(str, row.changes)) for row in layer_changes(snapshot, model)}


def why(records) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(r.name, r.kind): r.reasons for r in records}


def assert_aligned(table: str) -> None:
    """Every row of a table has its column separators at the same places."""
    rows = [line for line in table.splitlines() if " | " in line]
    bars = {tuple(i for i, c in enumerate(line) if c == "|") for line in rows}
    assert len(rows) >= 2 and len(bars) == 1, table


# --- torchvision resnet18 ---------------------------------------------------------------------
def test_resnet18_table_lists_every_changed_size_and_the_sides_left_whole() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    snapshot = layer_sizes(model)
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 32, 32), tp.importance.MagnitudeImportance(), pruning_ratio=0.5)
    pruner.step()
    rows = changes(snapshot, model)
    assert rows["conv1"] == "out_channels 64 -> 32"
    assert rows["bn1"] == "num_features 64 -> 32"
    assert rows["layer1.0.conv1"] == "in_channels 64 -> 32, out_channels 64 -> 32"
    assert rows["layer4.0.downsample.0"] == "in_channels 256 -> 128, out_channels 512 -> 256"
    assert rows["fc"] == "in_features 512 -> 256"
    convs_and_norms = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    assert sorted(rows) == sorted(convs_and_norms)  # containers, ReLUs and pools did not change
    assert why(kept_whole(pruner)) == {("conv1", "in"): ("it comes from a model input",),
                                       ("fc", "out"): ("it reaches a model output",)}

    table = layer_table(snapshot, model)
    assert table.splitlines()[0] == f"Layers changed: {len(rows)} of {len(dict(model.named_modules()))}"
    assert " conv1                 | Conv2d      | out_channels 64 -> 32" in table
    assert_aligned(table)
    out = io.StringIO()
    print_prune_report(snapshot, model, pruner, file=out)
    text = out.getvalue()
    assert text.startswith(table + "\n\n")
    assert "Kept whole: 2 layer sides\n  it comes from a model input (1):\n    conv1 (in)\n" \
           "  it reaches a model output (1):\n    fc (out)\n" in text


def test_resnet18_with_an_ignored_layer_names_it_as_the_reason() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    snapshot = layer_sizes(model)
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 32, 32), tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model.layer4[1].conv2])
    pruner.step()
    rows = changes(snapshot, model)
    # the residual stream of layer4 is tied to the ignored conv: only the inputs from layer3 shrink
    assert rows["layer4.0.conv2"] == "in_channels 512 -> 256" and rows["layer4.1.conv2"] == "in_channels 512 -> 256"
    assert "fc" not in rows and "layer4.0.bn2" not in rows
    ignored = ("layer4.1.conv2 is an ignored layer",)
    assert why(kept_whole(pruner)) == {
        ("conv1", "in"): ("it comes from a model input",),
        **{(name, "out"): ignored for name in ("layer4.0.conv2", "layer4.0.bn2", "layer4.0.downsample.0",
                                                 "layer4.0.downsample.1", "layer4.1.conv2", "layer4.1.bn2")},
        ("layer4.1.conv1", "in"): ignored, ("fc", "in"): ignored,
        ("fc", "out"): ("it reaches a model output",),
    }
    text = kept_whole_table(kept_whole(pruner))
    assert "  layer4.1.conv2 is an ignored layer (8):\n    layer4.{0,1}.conv2 (out), layer4.{0,1}.bn2 (out)," in text
    full = kept_whole_table(kept_whole(pruner), all_layers=True)
    assert " layer4.0.downsample.1 | BatchNorm2d | out  | 512      | layer4.1.conv2 is an ignored layer" in full
    assert_aligned(full)


# --- an op no plugin handles, an ignored layer ------------------------------------------------
def test_an_unknown_op_is_named_as_the_reason() -> None:
    model = SortNet().eval()
    snapshot = layer_sizes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.UnsupportedOpWarning)
        pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 4, 4), tp.importance.MagnitudeImportance(), pruning_ratio=0.5)
    pruner.step()
    assert changes(snapshot, model) == {"b": "out_channels 8 -> 4", "c": "in_channels 8 -> 4"}
    assert why(kept_whole(pruner)) == {
        ("a", "in"): ("it comes from a model input",),
        ("a", "out"): ("it reaches aten.sort.default, which no op plugin handles",),
        ("b", "in"): ("it comes out of aten.sort.default, which no op plugin handles",),
        ("c", "out"): ("it reaches a model output",)}


def test_a_graph_reports_layers_ignored_at_build_and_the_sides_nothing_pruned() -> None:
    model = nn.Sequential(OrderedDict(a=nn.Conv2d(3, 8, 1), b=nn.Conv2d(8, 8, 1), c=nn.Conv2d(8, 8, 1), d=nn.Conv2d(8, 2, 1)))
    snapshot = layer_sizes(model)
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 4, 4), ignored_layers=[model.b])
    DG.get_pruning_group(model.a, tp.prune_conv_out_channels, [0, 1, 2]).prune()
    assert changes(snapshot, model) == {"a": "out_channels 8 -> 5", "b": "in_channels 8 -> 5"}
    assert [(r.name, r.kind, r.channels, r.reasons) for r in DG.kept_whole()] == [
        ("a", "in", 3, ("it comes from a model input",)), ("b", "out", 8, ("b is an ignored layer",)),
        ("c", "in", 8, ("b is an ignored layer",)), ("d", "out", 2, ("it reaches a model output",))]
    assert why(kept_whole(DG)) == {**why(DG.kept_whole()), ("c", "out"): (UNTOUCHED,), ("d", "in"): (UNTOUCHED,)}


def test_a_pruner_that_chose_nothing_of_a_group_says_so() -> None:
    model = nn.Sequential(OrderedDict(a=nn.Conv2d(3, 8, 1), b=nn.Conv2d(8, 8, 1), c=nn.Conv2d(8, 2, 1)))
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 4, 4), tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  pruning_ratio_dict={model.b: 0.0})
    pruner.step()
    assert (model.a.out_channels, model.b.out_channels) == (4, 8)
    assert why(kept_whole(pruner))[("b", "out")] == (CHOSE_NONE,) and why(kept_whole(pruner))[("c", "in")] == (CHOSE_NONE,)


def test_channels_no_root_layer_holds_are_named_as_such() -> None:
    class SumOverChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(4, 8, 1)
            self.c = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x).sum(1, keepdim=True).expand(-1, 4, -1, -1)  # values of no channel of a
            return self.c(torch.relu(self.b(y)))

    model = SumOverChannels().eval()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 4, 4), tp.importance.MagnitudeImportance(), pruning_ratio=0.5)
    pruner.step()
    reasons = why(kept_whole(pruner))
    assert (model.a.out_channels, model.b.in_channels, model.b.out_channels) == (4, 4, 4) and ("b", "out") not in reasons
    assert reasons[("b", "in")] == ("the pruner ranks the channels of root layers (ConvNd, Linear, RNNBase) and none of them "
                                    "holds these",)


def test_groups_a_pruner_records_as_left_whole_are_listed_with_its_reason() -> None:
    """A pruner that records ``left_whole`` -- (group, reason) pairs -- has its reasons reported for sides still whole."""
    model = nn.Sequential(OrderedDict(a=nn.Conv2d(3, 8, 1), bn=nn.BatchNorm2d(8), b=nn.Conv2d(8, 8, 1), c=nn.Conv2d(8, 2, 1)))
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 4, 4))
    undone = DG.get_pruning_group(model.a, tp.prune_conv_out_channels, [0, 1])
    pruned = DG.get_pruning_group(model.b, tp.prune_conv_out_channels, [0])
    pruned.prune()

    class RecordingPruner:  # the attributes kept_whole reads from a MetaPruner
        ignored_layers = ()
        root_module_types = (nn.Conv2d,)
        left_whole = ((undone, "a size the model's code keeps: after pruning it the model no longer runs"),
                      (pruned, "recorded, but pruned later in the same run"))

    RecordingPruner.DG = DG
    reasons = why(kept_whole(RecordingPruner()))
    code = ("a size the model's code keeps: after pruning it the model no longer runs",)
    assert reasons[("a", "out")] == code and reasons[("bn", "out")] == code and reasons[("b", "in")] == code
    assert ("b", "out") not in reasons and ("c", "in") not in reasons  # pruned: not whole, whatever was recorded


# --- Hugging Face, attention heads, configs -----------------------------------------------------
@pytest.mark.filterwarnings("ignore:LlamaForCausalLM is a transformers model")  # no pruneframe-transformers here
def test_tiny_llama_table_and_kept_sides() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    snapshot = layer_sizes(model)
    ids = torch.randint(0, 100, (1, 8))
    pruner = tp.pruner.MetaPruner(model, {"input_ids": ids}, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  forward_fn=lambda m, x: m(**x).logits)
    pruner.step()
    rows = changes(snapshot, model)
    assert rows["model.embed_tokens"] == "embedding_dim 64 -> 32"
    assert rows["model.norm"] == "weight (64,) -> (32,)"  # an RMSNorm keeps its size only in its weight
    assert rows["model.layers.1.self_attn.k_proj"] == "in_features 64 -> 32, out_features 32 -> 16"
    assert rows["model.layers.0.mlp.down_proj"] == "in_features 128 -> 64, out_features 64 -> 32"
    assert rows["lm_head"] == "in_features 64 -> 32"
    assert "config" not in rows  # no plugin changed the config: its sizes are as they were
    assert why(kept_whole(pruner)) == {("lm_head", "out"): ("it reaches a model output",)}
    assert model(ids).logits.shape == (1, 8, 100)


def test_num_heads_of_multihead_attention() -> None:
    model = AttentionBlock().eval()
    snapshot = layer_sizes(model)
    pruner = tp.pruner.MetaPruner(model, torch.randn(2, 5, 6), tp.importance.MagnitudeImportance(), num_heads={model.attn: 4},
                                  prune_num_heads=True, head_pruning_ratio=0.5, pruning_ratio=0.9)
    pruner.step()
    rows = changes(snapshot, model)
    assert "num_heads 4 -> 2" in rows["attn"] and "embed_dim 16 -> 8" in rows["attn"]
    assert rows["embed"] == "out_features 16 -> 8" and rows["head"] == "in_features 16 -> 8"


def test_a_hugging_face_config_is_a_row_of_its_own() -> None:
    from transformers import LlamaConfig

    holder = nn.Module()
    holder.config = LlamaConfig(hidden_size=64, num_attention_heads=4)
    holder.proj = nn.Linear(64, 64)
    snapshot = layer_sizes(holder)
    holder.config.hidden_size, holder.config.num_attention_heads = 32, 2
    assert [(r.name, r.type, r.changes) for r in layer_changes(snapshot, holder)] == [
        ("config", "LlamaConfig", (SizeChange("hidden_size", 64, 32), SizeChange("num_attention_heads", 4, 2)))]


# --- after whole blocks were removed -----------------------------------------------------------
class WidthBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(16, width), nn.Linear(width, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.relu(self.fc(x)))


class WidthStack(nn.Module):
    """Four residual blocks of one layout whose inner widths differ (8, 16, 24, 32), so a renumbered block is told apart."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(WidthBlock(8 * (k + 1)) for k in range(4))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_after_remove_layers_kept_blocks_compare_under_their_new_names_and_removed_ones_are_one_row() -> None:
    torch.manual_seed(0)
    model = WidthStack().eval()
    snapshot = layer_sizes(model)
    pruner = tp.pruner.MetaPruner(model, torch.randn(2, 16), tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  remove_layers=["layers.1"])
    pruner.step()
    rows = layer_changes(snapshot, model)
    assert [(r.name, r.type) for r in rows if r.status == "removed"] == [("layers.1", "WidthBlock")]
    assert not [r for r in rows if r.status == "added"]
    shown = changes(snapshot, model)
    assert shown["layers.0.fc"] == "out_features 8 -> 4"
    assert shown["layers.1.fc"] == "out_features 24 -> 12"  # the block that was layers.2, against its own sizes
    assert shown["layers.2.out"] == "in_features 32 -> 16"  # was layers.3
    assert "layers.3.fc" not in shown and "layers.1.out" in shown
    table = layer_table(snapshot, model).splitlines()
    removed = " layers.1     | WidthBlock | removed (named as before the removal; the kept blocks are renumbered)"
    assert table[0] == "Layers changed: 7 of 15" and removed in table
    assert table[table.index(removed) + 1].startswith(" layers.1.fc  | Linear     | out_features 24 -> 12")


def test_a_snapshot_taken_after_an_earlier_removal_follows_the_next_one() -> None:
    torch.manual_seed(0)
    model = WidthStack().eval()
    tp.pruner.remove_layers(model, ["layers.0"])  # widths now 16, 24, 32 under layers.0 .. layers.2
    snapshot = layer_sizes(model)
    tp.pruner.remove_layers(model, ["layers.1"])  # the 24 goes; 32 is layers.1 now
    rows = layer_changes(snapshot, model, all_layers=True)
    assert [r.name for r in rows if r.status == "removed"] == ["layers.1"]
    assert [r.status for r in rows if r.name == "layers.1.fc"] == ["unchanged"]  # the 32-wide block, unchanged
    assert not [r for r in rows if r.status in ("added", "changed")]


# --- the table's options and refusals ---------------------------------------------------------
def test_all_layers_shows_the_unchanged_ones_and_an_unpruned_model_says_so() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    snapshot = layer_sizes(model)
    assert layer_table(snapshot, model) == "Layers changed: 0 of 4 (nothing was pruned)"
    model[0] = nn.Conv2d(3, 6, 1)  # sizes can change any way; the table reads the module as it is
    rows = layer_changes(snapshot, model, all_layers=True)
    assert [(r.name, r.status) for r in rows] == [("", "unchanged"), ("0", "changed"), ("1", "unchanged"), ("2", "unchanged")]
    assert rows[1] == LayerChange("0", "Conv2d", "changed", (SizeChange("out_channels", 8, 6),))
    table = layer_table(snapshot, model, all_layers=True)
    assert " (model) | Sequential | unchanged" in table and " 1       | ReLU       | unchanged" in table
    assert_aligned(table)


def test_bad_arguments_are_named() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="the snapshot layer_sizes\\(model\\) made before the prune, not Sequential"):
        layer_changes(model, model)
    with pytest.raises(ValueError, match="taken of a Sequential, but this model is a Linear"):
        layer_changes(layer_sizes(model), nn.Linear(4, 4))
    with pytest.raises(TypeError, match="pass the DependencyGraph or the pruner .* not Sequential"):
        kept_whole(model)
    DG = tp.DependencyGraph().build_dependency(nn.Sequential(nn.Linear(4, 4)), torch.randn(1, 4))
    with pytest.raises(ValueError, match="prunes another model"):
        print_prune_report(layer_sizes(model), model, DG, file=io.StringIO())


# --- names and groups -------------------------------------------------------------------------
def test_names_that_differ_in_a_number_are_written_once() -> None:
    assert compact_names(["bn1", "layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv1"]) == [
        ("bn1", 1), ("layer1.{0,1}.conv2", 2), ("layer2.0.conv1", 1)]
    names = [f"model.layers.{i}.self_attn.{p}" for i in (0, 1, 2, 3, 5) for p in ("q_proj", "k_proj")]
    assert compact_names(names) == [("model.layers.{0-3,5}.self_attn.q_proj", 5), ("model.layers.{0-3,5}.self_attn.k_proj", 5)]
    assert compact_names(["a.0.b.0", "a.0.b.1", "a.1.b.0", "a.1.b.1"]) == [("a.{0,1}.b.{0,1}", 4)]
    assert shorten_names([f"block{i}.conv" for i in range(30)], width=40) == \
           "block0.conv, block1.conv, block2.conv, ... (27 more)"


def test_channel_groups_hold_every_channel_once() -> None:
    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 6, 1)
            self.mix = nn.Conv2d(10, 5, 1)

        def forward(self, x):
            return self.mix(torch.cat([self.a(x), self.b(x)], dim=1))

    model = TwoBranch()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 4, 4))
    summaries = channel_groups(DG)
    assert [(s.root, s.kind, s.channels, s.status) for s in summaries] == [
        ("a", "out", 4, "prunable"), ("b", "out", 6, "prunable"),
        ("a", "in", 3, "blocked"), ("b", "in", 3, "blocked"),  # both read the input, but through no channel of a layer
        ("mix", "out", 5, "blocked")]
    assert [(m.name, m.kind, m.channels) for m in summaries[1].members] == [("b", "out", 6), ("mix", "in", 6)]
    assert summaries[2].reasons == ("it comes from a model input",)
    held: dict[int, int] = {}
    for s in summaries:
        for space, traced in s.group.touched:
            held[id(space)] = held.get(id(space), 0) + traced.numel()
    sides = [s for node in DG.module2node.values() for s in (node.out_space, node.in_space) if s is not None and s.size]
    assert {id(s): s.size for s in sides} == held


def test_kept_whole_records_are_plain_values() -> None:
    record = KeptWhole("fc", "Linear", "out", 10, ["it reaches a model output"])
    assert record.reasons == ("it reaches a model output",) and record == KeptWhole("fc", "Linear", "out", 10, ("it reaches a model output",))


class FixedView(nn.Module):
    """a's 8 channels are viewed as 2 x 4 with a literal 4: no prune of a survives the run check."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        y = y.view(y.shape[0], 2, 4, y.shape[2], y.shape[3]).flatten(1, 2)
        return self.c(torch.relu(self.b(y)))


def test_metapruner_reports_the_groups_it_left_whole_and_why() -> None:
    model = FixedView().eval()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 4, 4), tp.importance.MagnitudeImportance(), pruning_ratio=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruner.step()
    assert (model.a.out_channels, model.b.out_channels) == (8, 4)
    reasons = {(r.name, r.kind): r.reasons for r in kept_whole(pruner)}
    assert reasons[("a", "out")][0].startswith("a size the model's code keeps: after pruning it the model no longer runs (")
    assert ("b", "out") not in reasons  # pruned

    model = nn.Sequential(OrderedDict(a=nn.Conv2d(3, 8, 1), b=nn.Conv2d(8, 2, 1)))
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 4, 4), tp.importance.BNScaleImportance(), pruning_ratio=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruner.step()
    assert {(r.name, r.kind): r.reasons for r in kept_whole(pruner)}[("a", "out")][0].startswith("the importance cannot score it: ")
