"""Sparse-training pruners: the gradients regularize() adds, checked against hand-computed ones."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pruneframe as tp


class Residual(nn.Module):
    """Two batch norms whose channels are added: one group holds both."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            for bn in (self.b1, self.b2):
                bn.weight.copy_(torch.randn(4))

    def forward(self, x):
        return self.head(torch.relu(self.b1(self.c1(x)) + self.b2(self.c2(x))))


X = torch.randn(1, 3, 4, 4)


def grads(model):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def test_bn_scale_l1_adds_reg_times_sign() -> None:
    torch.manual_seed(0)
    model = Residual()
    pruner = tp.pruner.BNScalePruner(model, X, tp.importance.BNScaleImportance(), reg=0.01, ignored_layers=[model.head])
    pruner.regularize(model)
    for bn in (model.b1, model.b2):
        assert torch.allclose(bn.weight.grad, 0.01 * torch.sign(bn.weight.detach()))
    assert model.c1.weight.grad is None  # only the scales are pushed


def test_bn_scale_group_lasso_shares_one_norm_per_channel() -> None:
    torch.manual_seed(0)
    model = Residual()
    pruner = tp.pruner.BNScalePruner(model, X, tp.importance.BNScaleImportance(), reg=0.01, group_lasso=True,
                                     ignored_layers=[model.head])
    pruner.regularize(model)
    g1, g2 = model.b1.weight.detach(), model.b2.weight.detach()
    norm = (g1 ** 2 + g2 ** 2).sqrt()
    assert torch.allclose(model.b1.weight.grad, 0.01 * g1 / norm, atol=1e-7)
    assert torch.allclose(model.b2.weight.grad, 0.01 * g2 / norm, atol=1e-7)


def test_group_norm_pushes_every_weight_of_a_channel_weakest_hardest() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    pruner = tp.pruner.GroupNormPruner(model, torch.randn(1, 3), tp.importance.MagnitudeImportance(), reg=0.1, alpha=4,
                                       ignored_layers=[model[2]])
    existing = torch.ones_like(model[0].weight)
    model[0].weight.grad = existing.clone()  # regularize adds to what backward left
    pruner.regularize(model)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    norms = (w1.pow(2).sum(1) + w2.pow(2).sum(0)).sqrt()
    scale = 4 ** ((norms.max() - norms) / (norms.max() - norms.min()))
    assert torch.allclose(model[0].weight.grad - existing, 0.1 * (scale / norms)[:, None] * w1, atol=1e-6)
    assert torch.allclose(model[2].weight.grad, 0.1 * (scale / norms)[None, :] * w2, atol=1e-6)
    assert model[0].bias.grad is None


def test_sparse_training_then_pruning() -> None:
    torch.manual_seed(0)
    model = Residual()
    pruner = tp.pruner.BNScalePruner(model, X, tp.importance.BNScaleImportance(), reg=0.05, pruning_ratio=0.5,
                                     ignored_layers=[model.head])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    start = model.b1.weight.detach().abs().sum()
    for _ in range(20):
        opt.zero_grad()
        model(X).pow(2).mean().mul(0).backward()  # no task loss: only the penalty moves the scales
        pruner.regularize(model)
        opt.step()
    assert model.b1.weight.detach().abs().sum() < start
    pruner.step()
    pruner.update_regularizer()
    assert model.b1.num_features == 2 and model(X).shape == (1, 2, 4, 4)
    pruner.regularize(model)  # follows the pruned model
    assert model.b1.weight.grad.shape == (2,)


def test_bad_regularizer_settings() -> None:
    model = Residual()
    with pytest.raises(ValueError, match="reg=-1"):
        tp.pruner.BNScalePruner(model, X, tp.importance.BNScaleImportance(), reg=-1)
    with pytest.raises(ValueError, match="alpha=0.5"):
        tp.pruner.GroupNormPruner(model, X, tp.importance.MagnitudeImportance(), alpha=0.5)
