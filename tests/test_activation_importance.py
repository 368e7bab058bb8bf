"""ActivationImportance and MetaPruner.calibrate: statistics over many batches, gradients over a loader, clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pruneframe as tp
from architectures import AttentionBlock
from pruneframe.importance import ActivationImportance, HessianImportance, NotCalibratedError, TaylorImportance


def _mlp(dead: slice = slice(1, 3)) -> nn.Sequential:
    """Linear(4, 6) - ReLU - Linear(6, 3) whose first layer's channels ``dead`` always output zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight[dead] = 0
        model[0].bias[dead] = 0
    return model


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _batches() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(2, 3, 6, 6), torch.randn(3, 3, 4, 5), torch.randn(1, 3, 8, 8)]  # shaped unlike each other


@pytest.mark.parametrize("statistic", ["mean_abs", "l2"])
def test_statistics_equal_a_hand_computation_over_every_batch(statistic: str) -> None:
    model = ConvNet().eval()
    batches = _batches()
    imp = ActivationImportance(statistic=statistic)
    with imp.compute_importance(model):
        for x in batches:
            model(x)
    with torch.no_grad():
        conv_out = torch.cat([model.conv(x).permute(0, 2, 3, 1).reshape(-1, 5) for x in batches]).double()
        fc_in = torch.cat([torch.relu(model.bn(model.conv(x))).mean((2, 3)) for x in batches]).double()

    def expected(values: torch.Tensor) -> torch.Tensor:
        return values.abs().mean(0) if statistic == "mean_abs" else values.square().mean(0).sqrt()

    torch.testing.assert_close(imp.statistics(model.conv), expected(conv_out))
    torch.testing.assert_close(imp.statistics(model.fc, "in"), expected(fc_in))
    assert imp.statistics(model.conv, "in") is not None and imp.statistics(nn.Linear(1, 1)) is None


def test_every_batch_of_every_block_counts_and_nothing_outside() -> None:
    model = _mlp(dead=slice(0, 0))
    xs = [torch.randn(4, 4), torch.randn(2, 5, 4), torch.randn(3, 4)]
    imp = ActivationImportance()
    with imp.compute_importance(model):
        model(xs[0])
        model(xs[1])
    model(torch.randn(50, 4) * 100)  # outside any block: not counted
    with imp.compute_importance(model):
        model(xs[2])
    with torch.no_grad():
        rows = torch.cat([model[0](x).reshape(-1, 6) for x in xs]).double()
    torch.testing.assert_close(imp.statistics(model[0]), rows.abs().mean(0))
    assert not model[0]._forward_hooks  # the hooks went with the block


def test_scoring_before_any_batch_names_both_ways_to_collect() -> None:
    model = _mlp()
    imp = ActivationImportance()
    group = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 4)).get_pruning_group(
        model[0], tp.prune_linear_out_channels, idxs=[0, 1])
    with pytest.raises(NotCalibratedError, match=r"compute_importance\(model\).*pruner\.calibrate\(batches\)"):
        imp(group)
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), imp, pruning_ratio=0.5, ignored_layers=[model[2]])
    with pytest.raises(NotCalibratedError, match="has seen no batch yet"):
        pruner.step()
    assert model[0].out_features == 6  # nothing was pruned


def test_meta_pruner_removes_the_channels_that_never_fire() -> None:
    model = _mlp(dead=slice(1, 3))
    kept = model[0].weight.detach()[[0, 3, 4, 5]].clone()
    imp = ActivationImportance()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), imp, pruning_ratio=0.34, ignored_layers=[model[2]])
    assert pruner.calibrate([torch.randn(8, 4) for _ in range(3)]) == 3
    group = pruner.DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(6)))
    scores = imp(group)
    assert scores[1] == 0 and scores[2] == 0 and bool((scores[[0, 3, 4, 5]] > 0).all())
    pruner.step()
    assert model[0].out_features == 4 and model[2].in_features == 4
    assert torch.equal(model[0].weight, kept)


def test_whole_heads_are_scored_by_their_channels_activations() -> None:
    model = _mlp(dead=slice(4, 6))  # 3 heads of width 2: head 2 is silent
    with torch.no_grad():
        model[0].weight[0:2] *= 0.05  # head 0 has the smallest weights but fires
        model[0].bias[0:2] = 5.0
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), ActivationImportance(), num_heads={model[0]: 3},
                                  prune_num_heads=True, head_pruning_ratio=0.34, pruning_ratio=0.34, ignored_layers=[model[2]])
    pruner.calibrate([torch.randn(16, 4)])
    pruner.step()
    assert model[0].out_features == 4 and pruner.num_heads[model[0]] == 2
    assert bool((model[0].bias[:2] == 5.0).all())  # head 0 stayed: magnitude would have removed it


class TwoExperts(nn.Module):
    """Top-1 routing by the sign of the first feature: each expert sees only its own tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList([nn.Linear(3, 4), nn.Linear(3, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 4)
        for k, expert in enumerate(self.experts):
            mine = (x[:, 0] > 0) == (k == 0)
            out[mine] = expert(x[mine])
        return out


def test_each_expert_is_averaged_over_the_tokens_routed_to_it() -> None:
    torch.manual_seed(2)
    model = TwoExperts()
    xs = [torch.randn(7, 3), torch.randn(5, 3)]
    imp = ActivationImportance()
    with imp.compute_importance(model), torch.no_grad():
        for x in xs:
            model(x)
    for k, expert in enumerate(model.experts):
        tokens = torch.cat([x[(x[:, 0] > 0) == (k == 0)] for x in xs])
        with torch.no_grad():
            torch.testing.assert_close(imp.statistics(expert), expert(tokens).abs().mean(0).double())


def test_calibrate_shows_a_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    model = _mlp()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), ActivationImportance(), ignored_layers=[model[2]])
    pruner.calibrate([torch.randn(2, 4)] * 3)
    assert capsys.readouterr().err == ""
    pruner.calibrate([torch.randn(2, 4)] * 3, progress=True)
    captured = capsys.readouterr()
    assert "calibrating" in captured.err and "0/3" in captured.err and captured.out == ""


def test_calibrate_runs_in_eval_mode_and_leaves_the_model_as_it_was() -> None:
    model = ConvNet().train()
    imp = ActivationImportance()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 6, 6), imp, ignored_layers=[model.fc])
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches()
    pruner.calibrate([{"x": x} for x in batches])  # dicts are keyword inputs, as for example_inputs
    assert model.training and model.bn.training and torch.is_grad_enabled()
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    with torch.no_grad():
        model.eval()
        expected = torch.cat([model.conv(x).permute(0, 2, 3, 1).reshape(-1, 5) for x in batches]).abs().mean(0)
    torch.testing.assert_close(imp.statistics(model.conv), expected.double())


def test_taylor_over_a_loader_is_the_sum_of_the_per_batch_gradients() -> None:
    model = _mlp(dead=slice(0, 0))
    torch.manual_seed(3)
    data = torch.utils.data.TensorDataset(torch.randn(10, 4), torch.randint(0, 3, (10,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)

    def loss_fn(m: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)  # an earlier gradient is replaced, not added to
    imp = TaylorImportance()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), imp, pruning_ratio=0.34, ignored_layers=[model[2]])
    assert pruner.calibrate(loader, loss_fn=loss_fn) == 3
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    group = pruner.DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(6)))
    scores = imp(group)
    model.zero_grad(set_to_none=True)
    for batch in loader:
        loss_fn(model, batch).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad)
    torch.testing.assert_close(scores, imp(group))


def test_hessian_over_a_loader_accumulates_every_sample_and_keeps_grad() -> None:
    model = _mlp(dead=slice(0, 0))
    xs = [torch.randn(3, 4), torch.randn(2, 4)]
    imp = HessianImportance()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), imp, pruning_ratio=0.34, ignored_layers=[model[2]])
    pruner.calibrate(xs, loss_fn=lambda m, x: m(x).square().sum(1))  # one loss per sample
    assert all(p.grad is None for p in model.parameters())
    group = pruner.DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(6)))
    by_hand = HessianImportance()
    for x in xs:
        for row in x:
            model.zero_grad(set_to_none=True)
            model(row[None]).square().sum().backward()
            by_hand.accumulate_grad(model)
    torch.testing.assert_close(imp(group), by_hand(group))


@pytest.mark.parametrize("importance, kwargs, error, message", [
    (tp.importance.MagnitudeImportance(), {}, TypeError, "needs no data"),
    (TaylorImportance(), {}, ValueError, "pass loss_fn="),
    (ActivationImportance(), {"loss_fn": lambda m, b: m(b).sum()}, ValueError, "drop loss_fn"),
])
def test_calibrate_refuses_a_criterion_it_cannot_feed(importance, kwargs, error, message) -> None:
    model = _mlp()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), importance, ignored_layers=[model[2]])
    with pytest.raises(error, match=message):
        pruner.calibrate([torch.randn(2, 4)], **kwargs)


def test_calibrate_refuses_bad_batches_and_losses() -> None:
    model = _mlp()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), ActivationImportance(), ignored_layers=[model[2]])
    with pytest.raises(TypeError, match=r"not a Tensor: for one batch x, pass \[x\]"):
        pruner.calibrate(torch.randn(2, 4))
    with pytest.raises(ValueError, match="got no batches"):
        pruner.calibrate([])
    with pytest.raises(ValueError, match="statistic='max'"):
        ActivationImportance(statistic="max")
    assert ActivationImportance(p=2).statistic == "l2" and ActivationImportance(p=1).statistic == "mean_abs"
    with pytest.raises(ValueError, match=r"p=3: ActivationImportance takes p=1 \(mean \|x\|\) or p=2"):
        ActivationImportance(p=3)
    with pytest.raises(ValueError, match="were both given"):
        ActivationImportance(statistic="l2", p=1)
    taylor = tp.pruner.MetaPruner(model, torch.randn(1, 4), TaylorImportance(), ignored_layers=[model[2]])
    with pytest.raises(ValueError, match=r"scalar loss tensor.*shape \(2, 3\)"):
        taylor.calibrate([torch.randn(2, 4)], loss_fn=lambda m, x: m(x))


def test_statistics_from_before_a_prune_are_refused_until_collected_again() -> None:
    model = _mlp()
    imp = ActivationImportance()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), imp, pruning_ratio=0.5, iterative_steps=3,
                                  ignored_layers=[model[2]])
    pruner.calibrate([torch.randn(8, 4)])
    pruner.step()
    assert model[0].out_features == 5
    with pytest.raises(tp.errors.PruningError, match=r"pruned after they were collected.*imp\.reset\(\)"):
        pruner.step()
    with pytest.raises(ValueError, match="with 6 output channels, but it now has 5: the model was pruned since"), \
            imp.compute_importance(model):
        model(torch.randn(2, 4))
    pruner.calibrate([torch.randn(8, 4)])  # starts afresh on the pruned model
    pruner.step()  # the refused step counted: this is step 3 of 3, to half the original 6
    assert model[0].out_features == 3


def test_a_silent_attention_head_goes_first() -> None:
    """num_heads on an nn.MultiheadAttention fed by a Linear whose head-2 channels never fire: head 2 goes."""

    torch.manual_seed(0)
    model = AttentionBlock().eval()
    with torch.no_grad():
        model.embed.weight[8:12] = 0
        model.embed.bias[8:12] = 0
    kept = torch.cat([model.embed.weight[:8], model.embed.weight[12:]]).detach().clone()
    pruner = tp.pruner.MetaPruner(model, torch.randn(2, 5, 6), ActivationImportance(), num_heads={model.attn: 4},
                                  prune_num_heads=True, head_pruning_ratio=0.25, pruning_ratio=0.9, ignored_layers=[model.head])
    pruner.calibrate([torch.randn(3, 7, 6) for _ in range(3)])  # longer sequences than the example inputs
    pruner.step()
    assert model.attn.num_heads == 3 and model.attn.embed_dim == 12 and torch.equal(model.embed.weight, kept)
    assert model(torch.randn(1, 4, 6)).shape == (1, 4, 3)


def test_a_trace_inside_the_block_adds_nothing() -> None:
    model = _mlp(dead=slice(0, 0))
    x = torch.randn(3, 4)
    imp = ActivationImportance()
    with imp.compute_importance(model):
        tp.pruner.MetaPruner(model, torch.randn(1, 4) * 1000, imp, ignored_layers=[model[2]])  # traced on fake tensors
        model(x)
    with torch.no_grad():
        torch.testing.assert_close(imp.statistics(model[0]), model[0](x).abs().mean(0).double())


def test_calibrate_takes_a_generator_of_unknown_length() -> None:
    model = _mlp(dead=slice(0, 0))
    xs = [torch.randn(3, 4) for _ in range(4)]
    imp = ActivationImportance(statistic="l2")
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 4), imp, ignored_layers=[model[2]])
    assert pruner.calibrate((x for x in xs), progress=True) == 4
    with torch.no_grad():
        rows = torch.cat([model[0](x) for x in xs]).double()
    torch.testing.assert_close(imp.statistics(model[0]), rows.square().mean(0).sqrt())
