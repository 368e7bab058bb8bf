"""Torch-Pruning's public API used the way its README, examples and tests use it, with only the import changed.

Swapping the import below for ``import torch_pruning as tp`` is the only change needed to run this module against
Torch-Pruning 1.6. Where Torch-Pruning is wrong and pruneframe is stricter, the test says so in a comment starting
"Torch-Pruning:" -- those tests fail against it, on purpose.
"""
from __future__ import annotations

import io
from typing import Sequence

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import pruneframe as tp

# --- models ----------------------------------------------------------------------------------------------------


class CustomizedLayer(nn.Module):
    """Torch-Pruning's own test layer: per-feature scale and bias, then a square Linear."""

    def __init__(self, in_dim):
        super().__init__()
        self.in_dim = in_dim
        self.scale = nn.Parameter(torch.randn(in_dim))
        self.bias = nn.Parameter(torch.randn(in_dim))
        self.fc = nn.Linear(in_dim, in_dim)

    def forward(self, x):
        return self.fc(x * self.scale + self.bias)


class FullyConnectedNet(nn.Module):
    def __init__(self, input_size=16, num_classes=3, hidden=12):
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden)
        self.customized_layer = CustomizedLayer(hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(self.customized_layer(F.relu(self.fc1(x))))


class MyPruner(tp.pruner.BasePruningFunc):
    """Written as Torch-Pruning's README has users write it: _prune_parameter_and_grad and the functional names."""

    def prune_out_channels(self, layer: CustomizedLayer, idxs: Sequence[int]) -> nn.Module:
        keep_idxs = sorted(set(range(layer.in_dim)) - set(idxs))
        layer.in_dim = layer.in_dim - len(idxs)
        layer.scale = self._prune_parameter_and_grad(layer.scale, keep_idxs, pruning_dim=0)
        layer.bias = self._prune_parameter_and_grad(layer.bias, keep_idxs, pruning_dim=0)
        tp.prune_linear_in_channels(layer.fc, idxs)
        tp.prune_linear_out_channels(layer.fc, idxs)
        return layer

    def get_out_channels(self, layer):
        return layer.in_dim

    prune_in_channels = prune_out_channels
    get_in_channels = get_out_channels


class MyLinearPruner(tp.function.LinearPruner):
    """Subclasses the built-in Linear pruner and records every call before handing over to it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def prune_out_channels(self, layer: nn.Linear, idxs: Sequence[int]) -> nn.Linear:
        self.calls.append(("out", layer.out_features, sorted(idxs)))
        return super().prune_out_channels(layer, idxs)

    def prune_in_channels(self, layer: nn.Linear, idxs: Sequence[int]) -> nn.Linear:
        self.calls.append(("in", layer.in_features, sorted(idxs)))
        return super().prune_in_channels(layer, idxs)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)) + x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _randomize_bn(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            with torch.no_grad():
                m.weight.normal_()
    return model


# --- pruners for users' layers ------------------------------------------------------------------------------------


def test_customized_layer_and_a_subclassed_linear_pruner():
    torch.manual_seed(0)
    model = FullyConnectedNet()
    DG = tp.DependencyGraph()
    DG.register_customized_layer(CustomizedLayer, MyPruner())
    my_linear_pruner = MyLinearPruner()
    DG.register_customized_layer(nn.Linear, my_linear_pruner)
    DG.build_dependency(model, example_inputs=torch.randn(1, 16))

    group = DG.get_pruning_group(model.fc1, my_linear_pruner.prune_out_channels, idxs=[0, 1, 6])
    assert "customized_layer" in str(group) and "fc2" in str(group)
    group.prune()

    assert model.fc1.out_features == 9 and model.customized_layer.in_dim == 9 and model.fc2.in_features == 9
    assert model.customized_layer.scale.shape == (9,) and model.customized_layer.fc.weight.shape == (9, 9)
    assert ("out", 12, [0, 1, 6]) in my_linear_pruner.calls  # fc1 by the subclass...
    assert ("in", 12, [0, 1, 6]) in my_linear_pruner.calls  # ...and fc2's inputs too
    assert model(torch.randn(2, 16)).shape == (2, 3)


def test_a_pruned_group_computes_what_the_original_computes_with_those_inputs_zeroed():
    torch.manual_seed(0)
    model = _randomize_bn(SmallCNN()).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    reference = _randomize_bn(SmallCNN()).double().eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.conv2.weight[:, [2, 6, 9]] = 0  # the connections conv2 loses when conv1 loses channels 2, 6, 9
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[2, 6, 9])
    assert DG.check_pruning_group(group)
    group.prune()
    assert model.conv1.out_channels == model.bn1.num_features == model.conv2.in_channels == 13
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=0, atol=1e-12)


def test_the_layer_pruner_classes_prune_a_layer_alone():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    before = conv.weight.detach().clone()
    tp.function.ConvPruner().prune_out_channels(conv, [1, 4])
    assert conv.out_channels == 4 and torch.equal(conv.weight, before[[0, 2, 3, 5]])
    tp.function.ConvPruner().prune_in_channels(conv, [0])
    assert conv.in_channels == 3 and conv.weight.shape == (4, 3, 3, 3)

    bn = nn.BatchNorm2d(6)
    tp.function.BatchnormPruner().prune_out_channels(bn, [0, 5])
    assert bn.num_features == 4 and bn.running_mean.shape == (4,)
    ln = nn.LayerNorm(6)
    tp.function.LayernormPruner().prune_out_channels(ln, [2])
    assert ln.normalized_shape == (5,) and ln.weight.shape == (5,)
    gn = nn.GroupNorm(2, 8)
    tp.function.GroupNormPruner().prune_out_channels(gn, [0, 4])
    assert gn.num_channels == 6 and gn.weight.shape == (6,)
    inorm = nn.InstanceNorm2d(6, affine=True)
    tp.function.InstanceNormPruner().prune_out_channels(inorm, [3])
    assert inorm.num_features == 5 and inorm.weight.shape == (5,)
    prelu = nn.PReLU(6)
    tp.function.PReLUPruner().prune_out_channels(prelu, [1])
    assert prelu.weight.shape == (5,)
    emb = nn.Embedding(10, 6)
    tp.function.EmbeddingPruner().prune_out_channels(emb, [0, 1])
    assert emb.embedding_dim == 4 and emb.weight.shape == (10, 4)
    lin = nn.Linear(5, 7)
    tp.function.LinearPruner().prune_in_channels(lin, [4])
    assert lin.in_features == 4 and lin(torch.randn(2, 4)).shape == (2, 7)
    param = nn.Parameter(torch.randn(1, 3, 8))
    pruned = tp.function.ParameterPruner(pruning_dim=-1).prune_out_channels(param, [0, 7])
    assert pruned.shape == (1, 3, 6)
    mha = nn.MultiheadAttention(8, 2)
    tp.function.MultiheadAttentionPruner().prune_out_channels(mha, [0, 4])  # position 0 of both heads
    assert mha.embed_dim == 6 and mha(torch.randn(3, 1, 6), torch.randn(3, 1, 6), torch.randn(3, 1, 6))[0].shape == (3, 1, 6)


def test_the_lstm_pruner_removes_hidden_units():
    # Torch-Pruning: its LSTMPruner prunes weight_ih along the wrong dimension; this test fails against it.
    lstm = nn.LSTM(5, 6)
    tp.function.LSTMPruner().prune_out_channels(lstm, [0, 3])
    assert lstm.hidden_size == 4 and lstm.weight_ih_l0.shape == (16, 5) and lstm.weight_hh_l0.shape == (16, 4)
    assert lstm(torch.randn(2, 1, 5))[0].shape == (2, 1, 4)


def test_functional_names_are_the_same_functions_everywhere():
    assert tp.function.prune_conv_out_channels is tp.prune_conv_out_channels
    assert tp.pruner.prune_linear_in_channels is tp.prune_linear_in_channels
    conv = nn.Conv2d(3, 8, 1)
    tp.prune_conv_out_channels(conv, idxs=[2, 6])
    assert conv.out_channels == 6


def test_a_pruner_called_directly_checks_its_indices():
    conv = nn.Conv2d(3, 8, 1)
    copy = tp.function.ConvPruner()(conv, [0, 1], to_output=True, inplace=False)
    assert copy.out_channels == 6 and conv.out_channels == 8  # inplace=False prunes a copy
    # Torch-Pruning raises AssertionError here; pruneframe an IndexError naming the indices.
    with pytest.raises((IndexError, AssertionError), match="8"):
        tp.function.ConvPruner()(conv, [8])
    assert conv.out_channels == 8


# --- utils -------------------------------------------------------------------------------------------------------


def test_print_tool_shows_what_changed(capsys):
    model = SmallCNN()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 8, 8))
    tp.utils.print_tool.before_pruning(model)
    DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 1, 2, 3]).prune()
    text = tp.utils.print_tool.after_pruning(model)
    assert "Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)) => (conv1): Conv2d(3, 12," in text
    assert "BatchNorm2d(16, eps=1e-05" in text and "=> (bn1): BatchNorm2d(12" in text
    assert "(fc): Linear(in_features=32, out_features=10, bias=True)\n" in text  # unchanged lines as they were
    assert text in capsys.readouterr().out
    with pytest.raises(ValueError):  # the record is used up
        tp.utils.print_tool.after_pruning(model)


def test_count_params_and_flatten_as_list():
    model = SmallCNN()
    # convs 448 + 4640 + 9248, batch norms 32 + 64 + 64, fc 330
    assert tp.utils.count_params(model) == 14826
    a, b = torch.zeros(1), torch.ones(2)
    assert [t.shape for t in tp.utils.flatten_as_list({"x": (a, [b]), "y": [a]})] == [(1,), (2,), (1,)]
    macs, params = tp.utils.count_ops_and_params(model, torch.randn(1, 3, 8, 8))
    # Torch-Pruning: its counter adds batch norms, biases and pooling (928074 here); pruneframe counts the products only
    assert params == 14826 and macs == 64 * (3 * 9 * 16 + 16 * 9 * 32 + 32 * 9 * 32) + 32 * 10


# --- serialization ------------------------------------------------------------------------------------------------


def test_state_dict_keeps_user_attributes_and_replays_the_prune():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    model = torchvision.models.resnet18(weights=None).eval()
    model.customized_value = 8
    model.layer1.tag = "stage-1"
    model.layer2[0].sizes = [1, 2, (3, "four")]
    pruner = tp.pruner.MagnitudePruner(model, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
                                       iterative_steps=1, pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    expected = model(x)

    buffer = io.BytesIO()
    tp.save(tp.state_dict(model), buffer)
    buffer.seek(0)
    # Torch-Pruning: its state_dict pickles every module's __dict__, so it needs weights_only=False
    loaded = torch.load(buffer, map_location="cpu", weights_only=True)
    fresh = torchvision.models.resnet18(weights=None).eval()
    tp.load_state_dict(fresh, state_dict=loaded)

    assert fresh.customized_value == 8 and fresh.layer1.tag == "stage-1" and fresh.layer2[0].sizes == [1, 2, (3, "four")]
    assert fresh.conv1.out_channels == model.conv1.out_channels == 32
    assert torch.equal(fresh(x), expected)
    fresh(x).sum().backward()


# --- tracing ------------------------------------------------------------------------------------------------------


def test_a_model_in_training_mode_whose_batchnorm_sees_one_value_per_channel():
    # Torch-Pruning: tracing runs the model as it is, and BatchNorm refuses one value per channel in training mode.
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.proj, self.bn2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1)  # 1x1 map, batch 1
            return self.fc(self.bn2(self.proj(x)).flatten(1))

    model = Head().train()
    model.bn2.eval()  # a mix of modes, kept as it is
    modes = [m.training for m in model.modules()]
    stats = [b.clone() for b in model.buffers()]
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 6, 6), tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[model.fc])
    assert [m.training for m in model.modules()] == modes  # traced, and every mode put back
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))  # the trace updated no running statistics
    pruner.step()
    assert [m.training for m in model.modules()] == modes
    assert model.conv.out_channels == 4 and model.proj.out_channels == 4
    model.eval()
    assert model(torch.randn(1, 3, 6, 6)).shape == (1, 2)


# --- importance: every reduction and normaliser spelling --------------------------------------------------------


def _mlp_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, dtype=torch.float64))
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(5)))
    rows = model[0].weight.detach().abs().sum(1)  # L1 of each output row of the first Linear
    cols = model[2].weight.detach().abs().sum(0)  # L1 of each input column of the second
    return group, rows, cols


@pytest.mark.parametrize("reduction", ["mean", "sum", "max", "prod", "first", "gate", None])
def test_every_group_reduction(reduction):
    group, rows, cols = _mlp_group()
    expected = {
        "mean": (rows + cols) / 2, "sum": rows + cols, "max": torch.maximum(rows, cols), "prod": rows * cols,
        "first": rows, "gate": cols, None: torch.stack([rows, cols]),
    }[reduction]
    scores = tp.importance.GroupMagnitudeImportance(p=1, group_reduction=reduction, normalizer=None)(group)
    assert torch.allclose(scores.double(), expected, rtol=1e-6)


@pytest.mark.parametrize("normalizer", ["mean", "max", "sum", "standarization", "gaussian", "lamp", "sentinel_0.5", None])
def test_every_normalizer(normalizer):
    group, rows, cols = _mlp_group()
    s = (rows + cols) / 2
    ordered = torch.sort(s).values
    expected = {
        "mean": s / s.mean(), "max": s / s.max(), "sum": s / s.sum(),
        "standarization": (s - s.min()) / (s.max() - s.min()), "gaussian": (s - s.mean()) / s.std(),
        "lamp": s / torch.stack([s[s >= v].sum() for v in s]), "sentinel_0.5": s / ordered[int(0.5 * len(s))], None: s,
    }[normalizer]
    scores = tp.importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=normalizer)(group)
    assert torch.allclose(scores.double(), expected, rtol=1e-5, atol=1e-7)


def test_no_reduction_rows_are_normalised_together():
    group, rows, cols = _mlp_group()
    both = torch.stack([rows, cols])
    scores = tp.importance.MagnitudeImportance(p=1, group_reduction=None, normalizer="max")(group)
    assert torch.allclose(scores.double(), both / both.max())


# --- high-level pruners ------------------------------------------------------------------------------------------


def test_base_pruner_with_ratio_dict_ignored_layers_and_round_to():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    layer2_convs = (model.layer2[0].conv1, model.layer2[1].conv1)
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                                  pruning_ratio_dict={conv: 0.25 for conv in layer2_convs}, ignored_layers=[model.fc],
                                  round_to=8)
    base_macs, base_params = tp.utils.count_ops_and_params(model, x)
    pruner.step()
    macs, params = tp.utils.count_ops_and_params(model, x)
    assert model.layer1[0].conv1.out_channels == 32  # 64 * 0.5
    assert model.layer2[0].conv1.out_channels == model.layer2[1].conv1.out_channels == 96  # 128 * 0.75: the dict's
    assert model.layer3[0].conv1.out_channels == 128
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.fc.out_features == 1000 and model(x).shape == (1, 1000)
    assert macs < base_macs and params < base_params


def test_interactive_steps_yield_groups_to_prune():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(1, 3, 8, 8)
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.RandomImportance(), pruning_ratio=0.5, iterative_steps=2,
                                  ignored_layers=[model.fc])
    widths = []
    for _ in range(2):
        for group in pruner.step(interactive=True):
            dep, idxs = group[0]
            assert dep.target.module in (model.conv1, model.conv2) and len(idxs) > 0
            group.prune()
        widths.append((model.conv1.out_channels, model.conv2.out_channels))
    assert widths == [(12, 24), (8, 16)]  # 25% then 50% of the original widths


def test_isomorphic_global_pruning_and_root_module_types():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(1, 3, 8, 8)
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, global_pruning=True,
                                  isomorphic=True, root_module_types=[nn.Conv2d], ignored_layers=[model.fc])
    pruner.step()
    # one group per root conv: conv1 (16), and conv2+conv3 tied by the residual add (32); isomorphic ranks each alone
    assert model.conv1.out_channels == 8 and model.conv2.out_channels == model.conv3.out_channels == 16
    assert model.fc.out_features == 10


class Tokens(nn.Module):
    """A tiny ViT-like model: patch embedding, a class token and position embedding (raw parameters), one attention."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.head_dim = dim // heads
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 5, dim))
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos
        B, N, C = x.shape
        q, k, v = (f(x).reshape(B, N, -1, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))
        return {"logits": self.head(x[:, 0])}


def test_attention_heads_unwrapped_parameters_forward_fn_and_output_transform():
    # Torch-Pruning: 1.6 removes no head of this model (the widths stay 16); this test fails against it.
    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.randn(2, 3, 8, 8)
    pruner = tp.pruner.MetaPruner(
        model, {"x": x}, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.0,
        num_heads={model.q: 4, model.k: 4, model.v: 4}, prune_num_heads=True, head_pruning_ratio=0.5,
        unwrapped_parameters=[(model.cls_token, 2), (model.pos, 2)], ignored_layers=[model.head],
        forward_fn=lambda m, inputs: m(inputs["x"]), output_transform=lambda out: out["logits"],
    )
    pruner.step()
    # two of four heads gone from q, k and v alike, each head keeping its width of 4
    assert (model.q.out_features, model.k.out_features, model.v.out_features, model.proj.in_features) == (8, 8, 8, 8)
    assert model.embed.out_channels == 16 and model.cls_token.shape == (1, 1, 16)
    assert model(x)["logits"].shape == (2, 2)
    # as Torch-Pruning's examples read it back: the heads each layer has left
    assert pruner.num_heads == {model.q: 2, model.k: 2, model.v: 2}


def test_customized_pruners_argument():
    torch.manual_seed(0)
    model = FullyConnectedNet()
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 16), tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.25,
                                  customized_pruners={CustomizedLayer: MyPruner()}, ignored_layers=[model.fc2],
                                  root_module_types=[nn.Linear])
    pruner.step()
    assert model.fc1.out_features == model.customized_layer.in_dim == model.fc2.in_features == 9
    assert model(torch.randn(2, 16)).shape == (2, 3)


def test_sparse_training_pruners_regularize_then_prune():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    for imp, pruner_cls in [(tp.importance.GroupMagnitudeImportance(), tp.pruner.GroupNormPruner),
                            (tp.importance.BNScaleImportance(), tp.pruner.BNScalePruner),
                            (tp.importance.GroupMagnitudeImportance(), tp.pruner.GrowingRegPruner)]:
        model = _randomize_bn(SmallCNN())
        pruner = pruner_cls(model, x, importance=imp, global_pruning=True, pruning_ratio=0.5, ignored_layers=[model.fc])
        model(x).sum().backward()
        before = {n: p.grad.clone() for n, p in model.named_parameters()}
        pruner.update_regularizer()
        pruner.regularize(model)
        changed = [n for n, p in model.named_parameters() if not torch.equal(p.grad, before[n])]
        assert changed, pruner_cls.__name__
        for group in pruner.step(interactive=True):
            group.prune()
        assert model.conv1.out_channels < 16 and model(x).shape == (2, 10)


def test_a_pruning_ratio_dict_entry_for_a_block_covers_its_layers():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                         pruning_ratio_dict={model.layer2: 0.25}, ignored_layers=[model.fc]).step()
    assert model.layer2[0].conv1.out_channels == model.layer2[1].conv1.out_channels == 96
    assert model.layer3[0].conv1.out_channels == 128

