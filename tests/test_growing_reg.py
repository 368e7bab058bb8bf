"""GrowingRegPruner: per-channel L2 penalties that grow for the weak channels, checked against hand-computed gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pruneframe as tp


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2))
    return model, torch.randn(2, 3)


def _pruner(model, x, **kwargs):
    imp = tp.importance.MagnitudeImportance(p=2, normalizer=None)
    return tp.pruner.GrowingRegPruner(model, x, imp, ignored_layers=[model[2]], **kwargs)


def test_every_channel_starts_at_reg_and_gets_gamma_times_its_weights() -> None:
    model, x = _mlp()
    pruner = _pruner(model, x, reg=0.1, delta_reg=0.5)
    pruner.regularize(model)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    assert torch.allclose(model[0].weight.grad, 0.1 * w1)  # the root's rows
    assert torch.allclose(model[2].weight.grad, 0.1 * w2)  # and the columns coupled with them
    assert model[0].bias.grad is None  # biases only with bias=True
    pruner.regularize(model, bias=True)
    assert torch.allclose(model[0].bias.grad, 0.1 * model[0].bias.detach())
    assert torch.allclose(model[0].weight.grad, 0.2 * w1)  # added to what was there


def test_update_reg_grows_the_weakest_channel_by_delta_reg_and_the_strongest_not_at_all() -> None:
    model, x = _mlp()
    pruner = _pruner(model, x, reg=0.1, delta_reg=0.5)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    scores = (w1.pow(2).sum(1) + w2.pow(2).sum(0)) / 2  # the criterion: mean of the squared magnitudes
    pruner.update_reg()
    pruner.update_reg()
    gamma = 0.1 + 2 * 0.5 * (scores.max() - scores) / (scores.max() - scores.min())
    assert torch.allclose(gamma.min(), torch.tensor(0.1)) and torch.allclose(gamma.max(), torch.tensor(1.1))
    pruner.regularize(model)
    assert torch.allclose(model[0].weight.grad, gamma[:, None] * w1, atol=1e-6)
    assert torch.allclose(model[2].weight.grad, gamma[None, :] * w2, atol=1e-6)


def test_after_a_step_update_regularizer_follows_the_pruned_model() -> None:
    model, x = _mlp()
    pruner = _pruner(model, x, reg=0.1, delta_reg=0.5, pruning_ratio=0.5)
    pruner.update_reg()
    pruner.step()
    assert model[0].out_features == 2
    with pytest.raises(ValueError, match="older than a prune"):
        pruner.regularize(model)
    pruner.update_regularizer()
    model.zero_grad(set_to_none=True)
    pruner.regularize(model)
    assert torch.allclose(model[0].weight.grad, 0.1 * model[0].weight.detach())  # back at reg


def test_sparse_training_with_growing_reg_shrinks_the_weak_channels() -> None:
    model, x = _mlp()
    pruner = _pruner(model, x, reg=0.05, delta_reg=0.2, pruning_ratio=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    start = model[0].weight.detach().norm()
    for _ in range(10):
        opt.zero_grad()
        pruner.regularize(model)
        opt.step()
        pruner.update_reg()
    assert model[0].weight.detach().norm() < 0.8 * start
    pruner.step()
    assert model[0].out_features == 2 and model(x).shape == (2, 2)


def test_bad_coefficients_are_refused() -> None:
    model, x = _mlp()
    with pytest.raises(ValueError, match="delta_reg=-1"):
        _pruner(model, x, delta_reg=-1)
    with pytest.raises(ValueError, match="reg=-0.5"):
        _pruner(model, x, reg=-0.5)
    assert tp.GrowingRegPruner is tp.pruner.GrowingRegPruner
