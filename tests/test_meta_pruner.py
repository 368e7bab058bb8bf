"""MetaPruner: local and global ratios, iterative steps, round_to, per-layer ratios, heads, interactive steps."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import pruneframe as tp
from architectures import AttentionBlock


def root_l2(group) -> torch.Tensor:
    """Scores from the root layer only: the L2 norm of each pruned output row (a stand-in criterion)."""
    dep, idxs = group[0]
    weight = dep.target.module.weight.detach()
    return weight.flatten(1)[idxs].norm(dim=1)


def convs(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c2, self.b2 = nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48)
        self.c3 = nn.Conv2d(48, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(self.c3(x).mean((2, 3)))


X = torch.randn(1, 3, 8, 8)


def test_local_pruning_halves_every_root_by_its_own_scores() -> None:
    model = Small()
    w1 = model.c1.weight.detach().clone()
    strongest = torch.sort(w1.flatten(1).norm(dim=1).argsort(descending=True)[:16]).values
    tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.5, ignored_layers=[model.fc]).step()
    assert (model.c1.out_channels, model.c2.out_channels, model.c3.out_channels) == (16, 24, 32)
    assert model.b1.num_features == 16 and model.fc.in_features == 32
    assert torch.equal(model.c1.weight, w1[strongest])  # the 16 channels with the largest norms, in order
    assert model(X).shape == (1, 10)


def test_global_pruning_ranks_all_groups_together() -> None:
    model = Small()
    with torch.no_grad():
        model.c2.weight.mul_(100)  # c2's channels are all far stronger: global ranking takes from c1 and c3
    tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.5, global_pruning=True, ignored_layers=[model.fc]).step()
    assert model.c2.out_channels == 48
    removed = (32 - model.c1.out_channels) + (64 - model.c3.out_channels)
    assert removed == (32 + 48 + 64) // 2
    assert model(X).shape == (1, 10)


def test_max_pruning_ratio_caps_each_layer_in_global_pruning() -> None:
    model = Small()
    with torch.no_grad():
        model.c2.weight.mul_(100)
    tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.5, global_pruning=True, max_pruning_ratio=0.6,
                         ignored_layers=[model.fc]).step()
    assert model.c1.out_channels >= 32 * 0.4 and model.c3.out_channels >= 64 * 0.4
    assert model(X).shape == (1, 10)


def test_iterative_steps_reach_the_target() -> None:
    model = Small()
    pruner = tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.5, iterative_steps=3, ignored_layers=[model.fc])
    widths = []
    for _ in range(3):
        pruner.step()
        widths.append(model.c3.out_channels)
    assert widths == [64 - int(64 * 0.5 / 3), 64 - int(64 * 1.0 / 3), 32]  # ratios of the original width
    with pytest.warns(UserWarning, match="past iterative_steps"):
        pruner.step()
    assert model.c3.out_channels == 32


def test_round_to_gives_multiples() -> None:
    model = Small()
    tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.3, round_to=8, ignored_layers=[model.fc]).step()
    assert all(c % 8 == 0 for c in convs(model).values()), convs(model)
    assert convs(model) == {"c1": 16, "c2": 32, "c3": 40}  # 22.4 -> 16, 33.6 -> 32, 44.8 -> 40
    model = Small()
    tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.3, round_to=8, global_pruning=True, ignored_layers=[model.fc]).step()
    assert all(c % 8 == 0 for c in convs(model).values()), convs(model)


def test_pruning_ratio_dict_by_module_and_by_tuple() -> None:
    model = Small()
    tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.5, pruning_ratio_dict={model.c1: 0.25},
                         ignored_layers=[model.fc]).step()
    assert convs(model) == {"c1": 24, "c2": 24, "c3": 32}
    model = Small()
    with torch.no_grad():
        model.c3.weight.mul_(100)
    tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.0, pruning_ratio_dict={(model.c1, model.c3): 0.5},
                         ignored_layers=[model.fc]).step()
    # c1 and c3 are ranked together: 48 of their 96 channels go, all from the weaker c1 (it keeps one)
    assert model.c2.out_channels == 48 and model.c3.out_channels == 64 - (48 - 31) and model.c1.out_channels == 1


def test_interactive_step_yields_groups_to_prune_or_skip() -> None:
    model = Small()
    pruner = tp.pruner.MetaPruner(model, X, root_l2, pruning_ratio=0.5, ignored_layers=[model.fc])
    groups = list(pruner.step(interactive=True))
    assert len(groups) == 3 and convs(model) == {"c1": 32, "c2": 48, "c3": 64}  # nothing pruned yet
    roots = [g[0].dep.target.name for g in groups]
    assert sorted(roots) == ["c1", "c2", "c3"]
    for g in groups:
        if g[0].dep.target.name != "c2":
            g.prune()
    assert convs(model) == {"c1": 16, "c2": 48, "c3": 32}


def test_channel_groups_and_heads_make_blocks() -> None:
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))
    # position j of each of 3 parts goes together
    tp.pruner.MetaPruner(model, torch.randn(1, 4), root_l2, pruning_ratio=0.5, out_channel_groups={model[0]: 3},
                         ignored_layers=[model[2]]).step()
    assert model[0].out_features == 6
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        model[0].weight[4:8].mul_(0.01)  # head 1 of 3 is the weakest
    tp.pruner.MetaPruner(model, torch.randn(1, 4), root_l2, num_heads={model[0]: 3}, prune_num_heads=True,
                         head_pruning_ratio=0.34, pruning_ratio=0.34, ignored_layers=[model[2]]).step()
    assert model[0].out_features == 8 and model[2].in_features == 8


def test_resnet50_local_and_global() -> None:
    """Every group's root loses half its channels (local), or half of all roots' channels go (global)."""
    x = torch.randn(1, 3, 64, 64)
    for global_pruning in (False, True):
        model = torchvision.models.resnet50(weights=None).eval()
        before = params(model)
        pruner = tp.pruner.MetaPruner(model, x, root_l2, pruning_ratio=0.5, global_pruning=global_pruning,
                                      ignored_layers=[model.fc])
        roots = [g[0].dep.target.module for g in pruner.DG.get_all_groups(ignored_layers=[model.fc],
                                                                           root_module_types=pruner.root_module_types)]
        widths = [r.out_channels for r in roots]
        pruner.step()
        assert model(x).shape == (1, 1000) and model.fc.out_features == 1000
        after = [r.out_channels for r in roots]
        if global_pruning:
            assert abs(sum(after) / sum(widths) - 0.5) < 0.01, (sum(after), sum(widths))
            assert len(set(a / w for a, w in zip(after, widths))) > 1  # not the same ratio everywhere
        else:
            assert after == [w - int(w * 0.5) for w in widths]
        assert params(model) < 0.45 * before


def test_bad_arguments_are_named_and_the_model_is_untouched() -> None:
    model = Small()
    before = copy.deepcopy(model.state_dict())
    for kwargs, match in [({"pruning_ratio": 1.5}, "pruning_ratio=1.5"), ({"iterative_steps": 0}, "iterative_steps"),
                          ({"round_to": 0}, "round_to"), ({"pruning_ratio_dict": {model.c1: -0.1}}, "pruning_ratio_dict")]:
        with pytest.raises(ValueError, match=match):
            tp.pruner.MetaPruner(model, X, root_l2, **kwargs)
    with pytest.raises(TypeError, match="importance"):
        tp.pruner.MetaPruner(model, X, "l2")

    def wrong_count(group):
        return torch.ones(3)

    with pytest.raises(tp.PruningError, match="one score per root channel"):
        tp.pruner.MetaPruner(model, X, wrong_count).step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_pruners_share_no_state() -> None:
    a, b = Small(), Small()
    pa = tp.pruner.MetaPruner(a, X, root_l2, pruning_ratio=0.5, pruning_ratio_dict={a.c1: 0.25}, ignored_layers=[a.fc])
    pb = tp.pruner.MetaPruner(b, X, root_l2, pruning_ratio=0.5, ignored_layers=[b.fc])
    assert pb.pruning_ratio_dict == {} and pb.ignored_layers == [b.fc]
    pa.step()
    assert convs(b) == {"c1": 32, "c2": 48, "c3": 64} and pb.current_step == 0
    pb.step()
    assert convs(a)["c1"] == 24 and convs(b)["c1"] == 16


def test_torch_pruning_names() -> None:
    assert tp.pruner.BasePruner is tp.pruner.MetaPruner is tp.pruner.MagnitudePruner
    assert tp.pruner.linear_scheduler(0.6, 3) == pytest.approx([0.0, 0.2, 0.4, 0.6])
    model = Small()
    with pytest.warns(DeprecationWarning, match="ch_sparsity"):
        tp.pruner.MetaPruner(model, X, root_l2, ch_sparsity=0.5, ignored_layers=[model.fc]).step()
    assert model.c1.out_channels == 16


def test_groups_a_criterion_cannot_read_stay_whole_with_a_warning() -> None:
    """BN scales: the conv groups with batch norm are pruned, the last conv (no BN) is left and named."""
    model = Small()
    with pytest.warns(UserWarning, match="1 group.*left whole.*c3"):
        tp.pruner.MetaPruner(model, X, tp.importance.BNScaleImportance(), pruning_ratio=0.5,
                             ignored_layers=[model.fc]).step()
    assert convs(model) == {"c1": 16, "c2": 24, "c3": 64}


def test_real_criteria_drive_the_pruner() -> None:
    for imp in (tp.importance.MagnitudeImportance(p=1), tp.importance.LAMPImportance(), tp.importance.FPGMImportance(),
                tp.importance.RandomImportance()):
        model = Small()
        tp.pruner.MetaPruner(model, X, imp, pruning_ratio=0.5, global_pruning=True, ignored_layers=[model.fc]).step()
        assert sum(convs(model).values()) == (32 + 48 + 64) // 2 and model(X).shape == (1, 10)


def test_multihead_attention_heads_declared_on_a_member_prune_whole_heads() -> None:
    """num_heads on an nn.MultiheadAttention that is not the group's root: whole heads go, by head_pruning_ratio."""

    torch.manual_seed(0)
    model = AttentionBlock().eval()
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        model.embed.weight[8:12].mul_(0.01)  # the channels of head 2 are the weakest
    w = model.embed.weight.detach().clone()
    pruner = tp.pruner.MetaPruner(model, x, root_l2, num_heads={model.attn: 4}, prune_num_heads=True,
                                  head_pruning_ratio=0.25, pruning_ratio=0.9, ignored_layers=[model.head])
    pruner.step()
    assert model.attn.embed_dim == 12 and model.attn.num_heads == 3 and model.embed.out_features == 12
    assert torch.equal(model.embed.weight, torch.cat([w[:8], w[12:]]))  # head 2 went
    assert model(x).shape == (2, 5, 3)


class TransposedLinear(nn.Module):
    """A plugin-style linear layer that stores its weight (in, out), like GPT-2's Conv1D."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class TransposedLinearPruner(tp.DeclarativeLayerPruner):
    tensors = (tp.TensorDims("weight", out=1, in_=0), tp.TensorDims("bias", out=0))
    out_attrs, in_attrs = ("n_out",), ("n_in",)
    output_dim = input_dim = -1


class LinearLike(TransposedLinearPruner):
    acts_like = (nn.Linear,)


class TwoTransposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = TransposedLinear(6, 8), TransposedLinear(8, 6)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


@pytest.mark.parametrize("pruner_cls, expected", [(TransposedLinearPruner, 8), (LinearLike, 4)])
def test_a_plugin_layer_that_acts_like_linear_is_a_default_root_and_target(pruner_cls, expected) -> None:
    torch.manual_seed(0)
    model = TwoTransposed()
    x = torch.randn(3, 6)
    with torch.no_grad():
        model.up.weight[:, [1, 4, 6, 7]] *= 10  # the four strongest output columns of up, by L2 norm
    strong = model.up.weight.detach()[:, [1, 4, 6, 7]].clone()
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  customized_pruners={TransposedLinear: pruner_cls()})
    pruner.step()
    # without acts_like nothing is a Linear/Conv root, so nothing is pruned; with it, up loses its 4 weakest columns
    assert (model.up.n_out, model.down.n_in, tuple(model.up.weight.shape)) == (expected, expected, (6, expected))
    if expected == 4:
        assert torch.equal(model.up.weight, strong) and model(x).shape == (3, 6)


class LiteralHeadsAttention(nn.Module):
    """Self-attention that reshapes with its stored head count and width, as timm's Attention does."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def test_whole_heads_the_trace_ties_together_stay_with_a_warning_naming_the_layer() -> None:
    model = nn.Sequential(nn.Linear(8, 16), LiteralHeadsAttention(), nn.Linear(16, 4))
    x = torch.randn(2, 5, 8)
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  num_heads={model[1].qkv: 4}, prune_num_heads=True, head_pruning_ratio=0.5)
    with pytest.warns(UserWarning, match=r"prune_num_heads cannot remove any of their heads: 1\.qkv \(4 heads\)"):
        pruner.step()
    assert model[1].qkv.out_features == 48 and model[1].proj.in_features == 16  # the attention kept every head
    assert model[0].out_features == 8 and model(x).shape == (2, 5, 4)  # the rest was pruned as asked


@pytest.mark.parametrize("global_pruning", [False, True])
def test_round_to_rounds_up_when_fewer_than_round_to_would_be_left(global_pruning: bool) -> None:
    model = Small()
    tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.9, round_to=8,
                         global_pruning=global_pruning, ignored_layers=[model.fc]).step()
    widths = list(convs(model).values())
    assert all(w % 8 == 0 and w >= 8 for w in widths), widths
    assert sum(widths) < 32 + 48 + 64 and model(X).shape == (1, 10)


class _FixedHeads(nn.Module):
    """Two blocks; the second reshapes with a literal head width, so pruning its projection breaks the model."""

    def __init__(self) -> None:
        super().__init__()
        self.free = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        x = self.free(x)
        h = self.proj(x).view(x.shape[0], 4, 4)  # literal sizes: the trace cannot know they are fixed
        return self.out(h.relu().flatten(1))


def test_a_group_that_breaks_the_model_is_left_whole_and_the_rest_is_pruned() -> None:
    torch.manual_seed(0)
    model, x = _FixedHeads(), torch.randn(2, 16)
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5, ignored_layers=[model.out])
    with pytest.warns(UserWarning, match=r"1 group\(s\) left whole.*no longer runs.*: proj, out \(RuntimeError.*invalid for input"):
        pruner.step()
    assert model.free[0].out_features == 16, "the other group was pruned"
    assert model.proj.out_features == 16 and model(x).shape == (2, 4)
    planned = {(e["layer"], e["kind"]) for step in tp.plan.get_plan(model)["steps"] for e in step}
    assert ("proj", "out") not in planned and ("free.0", "out") in planned, "the undone group left no trace in the plan"
    assert all(("proj", "out") not in {(r.name, r.kind) for r in records} for records in pruner.pruning_history())


def test_one_run_checks_a_whole_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step whose groups all need the run check runs the model once, not once per group."""
    from pruneframe.graph import dependency_graph

    calls = []
    real = dependency_graph.runs
    monkeypatch.setattr(dependency_graph, "runs", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(2, 8)
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model[4]], verify_prunes="always")
    pruner.step()
    assert (model[0].out_features, model[2].out_features) == (8, 8)
    assert calls == [1]
