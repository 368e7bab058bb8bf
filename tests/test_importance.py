"""Importance criteria score the right numbers, on the right root indices, and are found by name through plugins.

Every expected score below is worked out by hand from small integer weights
(or, for gradient criteria, from gradients computed separately), so a wrong
weight dimension, a wrong mapping onto root indices or a wrong reduction
changes a number and fails.
"""
from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from torch import nn

import pruneframe
import pruneframe as tp
from pruneframe import PluginLoadWarning
from pruneframe.importance import (
    ActivationImportance,
    BNScaleImportance,
    FPGMImportance,
    GroupHessianImportance,
    GroupMagnitudeImportance,
    GroupNormImportance,
    GroupTaylorImportance,
    HessianImportance,
    Importance,
    LAMPImportance,
    MagnitudeImportance,
    PerLayerImportance,
    RandomImportance,
    TaylorImportance,
    UnscorableGroupError,
    from_name,
)
from pruneframe.registry import ENTRY_POINT_GROUP, UnknownImportanceError, build_registry

from conftest import subprocess_env

if sys.version_info >= (3, 12):
    from importlib.metadata import entry_points
else:
    from importlib_metadata import entry_points

BUILTIN_NAMES = {
    "activation": ActivationImportance,
    "magnitude": MagnitudeImportance,
    "group_magnitude": MagnitudeImportance,
    "group_norm": MagnitudeImportance,
    "l1": MagnitudeImportance,
    "l2": MagnitudeImportance,
    "bn_scale": BNScaleImportance,
    "lamp": LAMPImportance,
    "fpgm": FPGMImportance,
    "taylor": TaylorImportance,
    "group_taylor": TaylorImportance,
    "hessian": HessianImportance,
    "group_hessian": HessianImportance,
    "obd": HessianImportance,
    "random": RandomImportance,
}


@pytest.fixture(autouse=True)
def _no_plugin_selection(no_plugin_selection: None) -> None:
    """Every test here starts from "load everything, leniently"."""


def _set(param: torch.Tensor, values: Sequence[Any]) -> None:
    with torch.no_grad():
        param.copy_(torch.tensor(values, dtype=param.dtype).reshape(param.shape))


def _close(actual: torch.Tensor, expected: Sequence[float]) -> None:
    expected_t = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == expected_t.shape, (actual, expected)
    assert torch.allclose(actual.double(), expected_t, rtol=1e-9, atol=1e-12), (actual.tolist(), list(expected))


# --- small models with hand-picked weights --------------------------------------------------


class MLP(nn.Module):
    """fc1: Linear(3, 4) -> ReLU -> fc2: Linear(4, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)
        _set(self.fc1.weight, [[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1]])  # |row|_1: 1 2 3 3, |row|^2: 1 4 9 3
        _set(self.fc1.bias, [0.5, -1, 0, 2])
        _set(self.fc2.weight, [[1, -2, 3, 4], [0, 1, 0, -1]])  # |column|_1: 1 3 3 5, |column|^2: 1 5 9 17
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _mlp_group(model: MLP | None = None, idxs: Sequence[int] = (0, 1, 2, 3)) -> tuple[MLP, Any, Any]:
    model = model or MLP()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, dtype=torch.float64))
    return model, DG, DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=list(idxs))


class ConvBN(nn.Module):
    """conv1: Conv2d(2, 3, 1) -> bn -> ReLU -> conv2: Conv2d(3, 2, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)
        _set(self.conv1.weight, [[1, 2], [0, -1], [3, 0]])  # |row|_1: 3 1 3
        _set(self.bn.weight, [0.5, -2, 1])
        _set(self.conv2.weight, [[1, 0, 2], [1, 1, -1]])  # |column|_1: 2 1 3
        self.double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def _conv_bn_group() -> Any:
    model = ConvBN()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 2, 3, 3, dtype=torch.float64))
    return DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 1, 2])


class Concat(nn.Module):
    """fc(cat([bn(fa(x)), fb(x)])): fb's channels are fc's input channels 2, 3, 4."""

    def __init__(self) -> None:
        super().__init__()
        self.fa, self.bn, self.fb, self.fc = nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(3, 3), nn.Linear(5, 1)
        _set(self.fa.weight, [[1, 1, 0], [0, 0, 2]])  # |row|_1: 2 2
        _set(self.bn.weight, [3, -4])
        _set(self.fb.weight, [[1, 0, 0], [0, 1, 1], [2, 2, 2]])  # |row|_1: 1 2 6
        _set(self.fc.weight, [[10, 20, 30, 40, 50]])
        self.double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.bn(self.fa(x)), self.fb(x)], 1))


def _concat() -> tuple[Concat, Any]:
    model = Concat()
    return model, tp.DependencyGraph().build_dependency(model, torch.randn(2, 3, dtype=torch.float64))


class Flatten(nn.Module):
    """conv: Conv2d(1, 3, 1) on 2x2 inputs -> flatten -> fc: Linear(12, 1); channel c is fc's inputs 4c..4c+3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 3, 1, bias=False), nn.Linear(12, 1)
        _set(self.conv.weight, [1, 2, -3])
        _set(self.fc.weight, [list(range(1, 13))])  # column blocks sum to 10, 26, 42
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class Twice(nn.Module):
    """fc2(cat([h, h])) with h = fc1(x): root channel i is fc2's inputs i and i + 2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(1, 2), nn.Linear(4, 1)
        _set(self.fc1.weight, [[1], [2]])
        _set(self.fc2.weight, [[1, 2, 3, 4]])
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.cat([h, h], 1))


class Grouped(nn.Module):
    """c1: Conv2d(2, 8) -> c2: Conv2d(8, 4, groups=2) -> c3: Conv2d(4, 2); the groups tie positions together."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 1, bias=False)
        self.c2 = nn.Conv2d(8, 4, 1, groups=2, bias=False)
        self.c3 = nn.Conv2d(4, 2, 1, bias=False)
        for k, conv in enumerate((self.c1, self.c2, self.c3)):
            n = conv.weight.numel()
            _set(conv.weight, [((7 * i + 3 * k) % 11) - 5 for i in range(n)])
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(self.c2(self.c1(x)))


class Transposed(nn.Module):
    """c0: Conv2d(1, 4) -> gt: ConvTranspose2d(4, 4, groups=2) -> c3: Conv2d(4, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(1, 4, 1, bias=False)
        self.gt = nn.ConvTranspose2d(4, 4, 1, groups=2, bias=False)
        self.c3 = nn.Conv2d(4, 1, 1, bias=False)
        for k, conv in enumerate((self.c0, self.gt, self.c3)):
            _set(conv.weight, [((5 * i + k) % 7) - 3 for i in range(conv.weight.numel())])
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(self.gt(self.c0(x)))


def _l1(t: torch.Tensor) -> float:
    return float(t.detach().abs().sum())


# --- magnitude: every reduction and normaliser -------------------------------------------------


@pytest.mark.parametrize(
    "reduction, expected",
    [
        ("mean", [1, 2.5, 3, 4]),  # (|fc1 row| + |fc2 column|) / 2
        ("sum", [2, 5, 6, 8]),
        ("max", [1, 3, 3, 5]),
        ("prod", [1, 6, 9, 15]),
        ("first", [1, 2, 3, 3]),  # the root layer fc1
    ],
)
def test_l1_magnitude_with_each_group_reduction(reduction: str, expected: list[float]) -> None:
    _, _, group = _mlp_group()
    _close(MagnitudeImportance(p=1, group_reduction=reduction, normalizer=None)(group), expected)


def test_l2_magnitude_sums_squares_and_the_defaults_normalise_by_the_mean() -> None:
    _, _, group = _mlp_group()
    _close(MagnitudeImportance(p=2, normalizer=None)(group), [1, 4.5, 9, 10])  # ([1 4 9 3] + [1 5 9 17]) / 2
    _close(MagnitudeImportance()(group), [1 / 6.125, 4.5 / 6.125, 9 / 6.125, 10 / 6.125])


@pytest.mark.parametrize(
    "normalizer, expected",
    [
        (None, [1, 2.5, 3, 4]),
        ("mean", [1 / 2.625, 2.5 / 2.625, 3 / 2.625, 4 / 2.625]),
        ("max", [0.25, 0.625, 0.75, 1]),
        ("sum", [1 / 10.5, 2.5 / 10.5, 3 / 10.5, 4 / 10.5]),
        ("standarization", [0, 0.5, 2 / 3, 1]),  # min-max scaling, Torch-Pruning's spelling
        ("standardization", [0, 0.5, 2 / 3, 1]),
        ("gaussian", [-1.3, -0.1, 0.3, 1.1]),  # mean 2.625, unbiased std 1.25
        ("lamp", [1 / 10.5, 2.5 / 9.5, 3 / 7, 1]),  # divided by the sum of all scores at least as large
        (lambda s: 2 * s, [2, 5, 6, 8]),
    ],
)
def test_each_normalizer(normalizer: Any, expected: list[float]) -> None:
    _, _, group = _mlp_group()
    _close(MagnitudeImportance(p=1, normalizer=normalizer)(group), expected)


def test_lamp_importance_is_squared_magnitude_with_the_lamp_normaliser() -> None:
    _, _, group = _mlp_group()
    # mean-reduced squared magnitude [1, 4.5, 9, 10]; sums of the scores at least as large: 24.5, 23.5, 19, 10
    _close(LAMPImportance()(group), [1 / 24.5, 4.5 / 23.5, 9 / 19, 1])
    with pytest.raises(ValueError, match="LAMPImportance normalises with 'lamp'"):
        LAMPImportance(normalizer="mean")


def test_lamp_gives_equal_scores_equal_values() -> None:
    model = MLP()
    _set(model.fc1.weight, [[1, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]])
    _set(model.fc2.weight, [[1, 1, 2, 0], [0, 0, 0, 0]])
    _, _, group = _mlp_group(model)
    # summed L1 scores 2, 2, 4, 0: both 2s are divided by 2 + 2 + 4, the zero stays zero
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer="lamp")(group), [0.25, 0.25, 1, 0])


def test_all_zero_scores_stay_zero_under_dividing_normalisers() -> None:
    model = MLP()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc2.weight.zero_()
    _, _, group = _mlp_group(model)
    for normalizer in ("mean", "max", "sum", "standarization", "gaussian", "lamp"):
        _close(MagnitudeImportance(normalizer=normalizer)(group), [0, 0, 0, 0])


def test_bias_adds_each_channels_bias_term() -> None:
    _, _, group = _mlp_group()
    # fc1 rows 1 2 3 3 plus |bias| 0.5 1 0 2; fc2's input channels have no bias
    _close(MagnitudeImportance(p=1, bias=True, group_reduction="first", normalizer=None)(group), [1.5, 3, 3, 5])
    _close(MagnitudeImportance(p=1, bias=True, group_reduction="sum", normalizer=None)(group), [2.5, 6, 6, 10])


def test_unknown_options_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="group_reduction 'median'.*mean, sum, max, prod, first"):
        MagnitudeImportance(group_reduction="median")
    with pytest.raises(ValueError, match="normalizer 'zscore'.*standarization"):
        MagnitudeImportance(normalizer="zscore")
    with pytest.raises(ValueError, match="must be a positive number"):
        MagnitudeImportance(p=0)


def test_torch_pruning_names_are_the_same_classes() -> None:
    assert tp.importance.MagnitudeImportance is MagnitudeImportance
    assert GroupMagnitudeImportance is MagnitudeImportance and GroupNormImportance is MagnitudeImportance
    assert GroupTaylorImportance is TaylorImportance and GroupHessianImportance is HessianImportance
    assert "importance" in tp.__all__
    for cls in (MagnitudeImportance, BNScaleImportance, LAMPImportance, FPGMImportance, TaylorImportance,
                HessianImportance, RandomImportance):
        assert issubclass(cls, Importance)


# --- conv, batch norm, layer norm, raw parameters ---------------------------------------------


def test_bn_scale_reads_gamma_of_the_batch_norm_only() -> None:
    group = _conv_bn_group()
    _close(BNScaleImportance(normalizer=None)(group), [0.5, 2, 1])
    _close(BNScaleImportance()(group), [0.5 / (3.5 / 3), 2 / (3.5 / 3), 1 / (3.5 / 3)])


def test_magnitude_over_conv_rows_bn_scale_and_conv_columns() -> None:
    group = _conv_bn_group()
    # conv1 rows 3 1 3, bn 0.5 2 1, conv2 columns 2 1 3
    _close(MagnitudeImportance(p=1, normalizer=None)(group), [5.5 / 3, 4 / 3, 7 / 3])
    _close(MagnitudeImportance(p=1, group_reduction="max", normalizer=None)(group), [3, 2, 3])
    only_bn = MagnitudeImportance(p=1, group_reduction="first", normalizer=None, target_types=[nn.BatchNorm2d])
    _close(only_bn(group), [0.5, 2, 1])  # "first" is the first member the criterion reads


def test_layer_norm_and_raw_parameters_read_their_weight_vector() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.ln, self.fc2 = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)
            self.scale = nn.Parameter(torch.tensor([1.0, -2, 3, -4]))
            _set(self.ln.weight, [2, -1, 0.5, 3])
            _set(self.ln.bias, [1, 1, -2, 0])
            self.double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.ln(self.fc1(x)) * self.scale)

    model = Scaled()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 3, dtype=torch.float64))
    group = DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, [0, 1, 2, 3])
    ln_only = MagnitudeImportance(p=2, normalizer=None, target_types=[nn.LayerNorm])
    _close(ln_only(group), [4, 1, 0.25, 9])
    _close(MagnitudeImportance(p=2, bias=True, normalizer=None, target_types=[nn.LayerNorm])(group), [5, 2, 4.25, 9])
    _close(MagnitudeImportance(p=1, normalizer=None, target_types=[nn.Parameter])(group), [1, 2, 3, 4])


# --- mapping member channels onto root indices ----------------------------------------------------


def test_concat_member_channels_map_to_their_own_root_indices() -> None:
    model, DG = _concat()
    group = DG.get_pruning_group(model.fb, tp.prune_linear_out_channels, [0, 1, 2])
    assert [list(idxs) for _, idxs in group] == [[0, 1, 2], [2, 3, 4]]
    # fb rows 1 2 6 plus fc columns 2, 3, 4 (30 40 50) -- not fc columns 0, 1, 2
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), [31, 42, 56])


def test_members_covering_part_of_the_root_indices_are_averaged_over_those_only() -> None:
    model, DG = _concat()
    group = DG.get_pruning_group(model.fc, tp.prune_linear_in_channels, [0, 1, 2, 3, 4])
    # root 0: fc column 10, fa row 2, bn 3; root 2: fc column 30, fb row 1; ...
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), [15, 26, 31, 42, 56])
    _close(MagnitudeImportance(p=1, normalizer=None)(group), [5, 26 / 3, 15.5, 21, 28])
    _close(MagnitudeImportance(p=1, group_reduction="prod", normalizer=None)(group), [60, 160, 30, 80, 300])
    _close(MagnitudeImportance(p=1, group_reduction="max", normalizer=None)(group), [10, 20, 30, 40, 50])
    _close(MagnitudeImportance(p=1, group_reduction="first", normalizer=None)(group), [10, 20, 30, 40, 50])


def test_first_takes_each_root_index_from_the_first_member_that_holds_it() -> None:
    model, DG = _concat()

    class L1WithoutFc(PerLayerImportance):
        def layer_scores(self, channels):
            return None if channels.layer is model.fc else channels.rows().abs().sum(1)

    group = DG.get_pruning_group(model.fc, tp.prune_linear_in_channels, [0, 1, 2, 3, 4])
    assert [dep.target.name for dep, _ in group] == ["fc", "fa", "bn", "fb"]
    # fc is skipped: roots 0 and 1 take fa's rows (2 2, not bn's 3 4), roots 2..4 fb's rows (1 2 6)
    _close(L1WithoutFc(group_reduction="first", normalizer=None)(group), [2, 2, 1, 2, 6])
    _close(L1WithoutFc(group_reduction="sum", normalizer=None)(group), [5, 6, 1, 2, 6])


def test_scores_follow_root_idxs_of_a_partial_group() -> None:
    model, DG = _concat()
    group = DG.get_pruning_group(model.fc, tp.prune_linear_in_channels, [1, 3])
    assert group.root_idxs == [1, 3]
    # root 1: fc column 20 + fa row 1 (2) + bn 4; root 3: fc column 40 + fb row 1 (2)
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), [26, 42])


def test_one_root_index_removing_several_channels_of_a_layer_sums_them() -> None:
    model = Flatten()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 1, 2, 2, dtype=torch.float64))
    group = DG.get_pruning_group(model.conv, tp.prune_conv_out_channels, [0, 1, 2])
    # conv rows 1 2 3 plus fc columns 4c..4c+3: 10, 26, 42
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), [11, 28, 45])
    _close(MagnitudeImportance(p=1, normalizer=None)(group), [5.5, 14, 22.5])

    model = Twice()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 1, dtype=torch.float64))
    group = DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, [0, 1])
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), [1 + 1 + 3, 2 + 2 + 4])


def test_grouped_conv_reads_each_input_channel_inside_its_group_and_ties_positions() -> None:
    model = Grouped()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 2, 2, 2, dtype=torch.float64))
    w1, w2, w3 = model.c1.weight, model.c2.weight, model.c3.weight  # w2: 4 outputs (2 per group), 4 inputs per group

    def c2_input(i: int) -> float:  # input channel i of c2 feeds only the 2 outputs of its group
        block = i // 4
        return _l1(w2[2 * block:2 * block + 2, i % 4])

    group = DG.get_pruning_group(model.c1, tp.prune_conv_out_channels, list(range(8)))
    # c2's groups tie input position j of both groups: c1 channels i and i +- 4 go together
    expected = [sum(_l1(w1[j]) + c2_input(j) for j in (i % 4, i % 4 + 4)) for i in range(8)]
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), expected)

    group = DG.get_pruning_group(model.c2, tp.prune_conv_out_channels, [0, 1, 2, 3])
    expected = [sum(_l1(w2[o]) + _l1(w3[:, o]) for o in (r % 2, r % 2 + 2)) for r in range(4)]
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), expected)

    group = DG.get_pruning_group(model.c2, tp.prune_conv_out_channels, [1])
    assert group.root_idxs == [1] and group[0].idxs == [1, 3]
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), [expected[1]])


def test_transposed_conv_reads_columns_for_outputs_and_rows_for_inputs() -> None:
    model = Transposed()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 1, 2, 2, dtype=torch.float64))
    w0, wt, w3 = model.c0.weight, model.gt.weight, model.c3.weight  # wt: (4 inputs, 2 outputs per group, 1, 1)

    def gt_output(o: int) -> float:  # output o of a grouped transposed conv: column o % 2 of its group's input rows
        block = o // 2
        return _l1(wt[2 * block:2 * block + 2, o % 2])

    group = DG.get_pruning_group(model.gt, tp.prune_conv_out_channels, [0, 1, 2, 3])
    expected = [sum(gt_output(o) + _l1(w3[:, o]) for o in (r % 2, r % 2 + 2)) for r in range(4)]
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), expected)

    group = DG.get_pruning_group(model.c0, tp.prune_conv_out_channels, [0, 1, 2, 3])
    expected = [sum(_l1(w0[i]) + _l1(wt[i]) for i in (r % 2, r % 2 + 2)) for r in range(4)]
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(group), expected)


def _check_mapping(group: Any) -> None:
    """The vectorised mapping agrees with the public IndexMapping, one root index at a time."""
    members = group.members()
    assert len(members) == len(group)
    for member, (dep, idxs) in zip(members, group):
        assert member.idxs.tolist() == list(idxs)
        for r, root in enumerate(group.root_idxs):
            mine = sorted(member.idxs[member.member_pos[member.root_pos == r]].tolist())
            assert mine == sorted(dep.index_mapping([root])), (dep, root)


def test_vectorised_mapping_agrees_with_index_mapping_on_every_small_model() -> None:
    model, DG = _concat()
    for module, fn, idxs in [(model.fc, tp.prune_linear_in_channels, [0, 1, 2, 3, 4]),
                             (model.fc, tp.prune_linear_in_channels, [4, 0]),
                             (model.fb, tp.prune_linear_out_channels, [2])]:
        _check_mapping(DG.get_pruning_group(module, fn, idxs))
    for cls, shape in [(Grouped, (1, 2, 2, 2)), (Transposed, (1, 1, 2, 2)), (Flatten, (1, 1, 2, 2)), (Twice, (1, 1))]:
        DG = tp.DependencyGraph().build_dependency(cls(), torch.randn(*shape, dtype=torch.float64))
        groups = list(DG.get_all_groups())
        assert groups
        for group in groups:
            _check_mapping(group)


def test_resnet18_groups_score_one_value_per_root_index() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.normal_()  # not all ones, so a wrong mapping changes the numbers
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    groups = list(DG.get_all_groups())
    assert len(groups) > 5
    for group in groups:
        assert group.root_idxs == list(group[0].idxs)  # what the module docstring promises for these groups
        _check_mapping(group)
    residual = max(groups, key=len)  # the widest coupling: a residual stage, many layers
    bn_items = [(dep.target.module, idxs) for dep, idxs in residual if isinstance(dep.target.module, nn.BatchNorm2d)]
    assert len(bn_items) > 2
    assert all(list(idxs) == residual.root_idxs for _, idxs in bn_items)  # a residual add aligns channel i with i
    expected = torch.stack([bn.weight.detach().abs() for bn, _ in bn_items]).mean(0)
    _close(BNScaleImportance(normalizer=None)(residual), expected.tolist())


# --- FPGM, Taylor, Hessian, random --------------------------------------------------------------


def _distance_sums(vectors: list[list[float]]) -> list[float]:
    return [sum(math.dist(v, u) for u in vectors) for v in vectors]


def test_fpgm_sums_distances_to_every_channel_of_each_layer() -> None:
    model, _, group = _mlp_group()
    rows = _distance_sums(model.fc1.weight.tolist())
    columns = _distance_sums(model.fc2.weight.t().tolist())
    expected = [(r + c) / 2 for r, c in zip(rows, columns)]
    _close(FPGMImportance(normalizer=None)(group), expected)
    _, _, part = _mlp_group(model, idxs=[1, 3])
    _close(FPGMImportance(normalizer=None)(part), [expected[1], expected[3]])  # distances to all 4 channels still
    manhattan = [(sum(_l1(torch.tensor(v) - torch.tensor(u)) for u in model.fc1.weight.tolist()))
                 for v in model.fc1.weight.tolist()]
    _close(FPGMImportance(p=1, group_reduction="first", normalizer=None)(group), manhattan)


def _backward(model: MLP) -> None:
    x = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]], dtype=torch.float64)
    model.zero_grad()
    model(x).pow(2).sum().backward()


def test_taylor_scores_weight_times_gradient() -> None:
    model, _, group = _mlp_group()
    _backward(model)
    p1 = (model.fc1.weight * model.fc1.weight.grad).detach()
    p2 = (model.fc2.weight * model.fc2.weight.grad).detach()
    assert p1.abs().sum() > 0 and p2.abs().sum() > 0
    expected = [(_l1(p1[i]) + _l1(p2[:, i])) / 2 for i in range(4)]
    _close(TaylorImportance(normalizer=None)(group), expected)
    multi = [(abs(float(p1[i].sum())) + abs(float(p2[:, i].sum()))) / 2 for i in range(4)]
    _close(TaylorImportance(normalizer=None, multivariable=True)(group), multi)
    bias = (model.fc1.bias * model.fc1.bias.grad).detach().abs()
    _close(TaylorImportance(normalizer=None, bias=True, group_reduction="first")(group),
           [_l1(p1[i]) + float(bias[i]) for i in range(4)])


def test_taylor_without_gradients_names_the_layer() -> None:
    _, _, group = _mlp_group()
    with pytest.raises(ValueError, match=r"weight of fc1 \(Linear\) has no \.grad.*loss\.backward\(\)"):
        TaylorImportance()(group)


def test_hessian_accumulates_squared_per_sample_gradients() -> None:
    model, DG, group = _mlp_group()
    xs = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1], [2.0, 0.1, 0.4]], dtype=torch.float64)
    weights = [model.fc1.weight, model.fc2.weight]
    squares = [torch.zeros_like(w) for w in weights]
    for x in xs:  # the per-sample gradients, computed separately
        grads = torch.autograd.grad(model(x[None]).pow(2).sum(), weights)
        squares = [s + g.pow(2) for s, g in zip(squares, grads)]
    h1, h2 = (s / len(xs) for s in squares)
    w1, w2 = (w.detach() for w in weights)
    expected = [(0.5 * float((w1[i] ** 2 * h1[i]).sum()) + 0.5 * float((w2[:, i] ** 2 * h2[:, i]).sum())) / 2
                for i in range(4)]
    assert min(expected) > 0

    imp = HessianImportance(normalizer=None)
    imp.zero_grad()
    for x in xs:
        model.zero_grad()
        model(x[None]).pow(2).sum().backward()
        imp.accumulate_grad(model)
    _close(imp(group), expected)
    _close(imp(group), expected)  # scoring leaves the accumulated values as they were

    imp.zero_grad()
    with pytest.raises(ValueError, match=r"no accumulated gradients for the weight of fc1 \(Linear\).*accumulate_grad"):
        imp(group)

    imp.accumulate_grad(model)
    DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, [0]).prune()
    fresh = DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, [0, 1, 2])
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*\(3, 3\).*zero_grad\(\)"):
        imp(fresh)


def test_random_gives_one_reproducible_value_per_root_index() -> None:
    model, DG = _concat()
    group = DG.get_pruning_group(model.fc, tp.prune_linear_in_channels, [1, 3, 4])
    a = RandomImportance(torch.Generator().manual_seed(7))(group)
    b = RandomImportance(torch.Generator().manual_seed(7))(group)
    assert a.shape == (3,) and torch.equal(a, b)
    assert bool(((a >= 0) & (a < 1)).all())


# --- errors ---------------------------------------------------------------------------------------


def test_non_finite_weights_name_the_layer() -> None:
    model = MLP()
    with torch.no_grad():
        model.fc2.weight[0, 1] = float("nan")
    _, _, group = _mlp_group(model)
    with pytest.raises(UnscorableGroupError, match=r"NaN or infinite scores from fc2 \(Linear\)"):
        MagnitudeImportance()(group)
    with torch.no_grad():
        model.fc2.weight[0, 1] = float("inf")
    with pytest.raises(UnscorableGroupError, match=r"fc2 \(Linear\)"):
        MagnitudeImportance()(group)


def test_a_normaliser_that_returns_non_finite_scores_is_an_error() -> None:
    _, _, group = _mlp_group()
    with pytest.raises(UnscorableGroupError, match=r"group of fc1 \(Linear\).*normalizer"):
        MagnitudeImportance(normalizer=lambda s: s / 0)(group)


def test_a_group_without_a_layer_the_criterion_reads_is_an_error() -> None:
    _, _, group = _mlp_group()
    with pytest.raises(UnscorableGroupError, match=r"reads none of the layers in the group of fc1 \(Linear\)"):
        BNScaleImportance()(group)
    assert issubclass(UnscorableGroupError, ValueError)


def test_root_indices_no_read_layer_holds_are_an_error() -> None:
    model, DG = _concat()
    group = DG.get_pruning_group(model.fc, tp.prune_linear_in_channels, [0, 1, 2, 3, 4])
    with pytest.raises(UnscorableGroupError, match=r"root indices \[2, 3, 4\] of the group of fc \(Linear\)"):
        BNScaleImportance()(group)
    _close(BNScaleImportance(normalizer=None)(DG.get_pruning_group(model.fa, tp.prune_linear_out_channels, [0, 1])),
           [3, 4])


def test_a_group_older_than_a_prune_is_an_error() -> None:
    model, DG, group = _mlp_group()
    DG.get_pruning_group(model.fc1, tp.prune_linear_out_channels, [0]).prune()
    with pytest.raises(ValueError, match="older than a prune"):
        MagnitudeImportance()(group)

    # indices still in range, but shifted: fb's channels are now fc's inputs 1..3, not 2..4
    model, DG = _concat()
    group = DG.get_pruning_group(model.fb, tp.prune_linear_out_channels, [0, 1])
    DG.get_pruning_group(model.fa, tp.prune_linear_out_channels, [0]).prune()
    with pytest.raises(ValueError, match=r"fc: the group is older than a prune"):
        MagnitudeImportance()(group)
    fresh = DG.get_pruning_group(model.fb, tp.prune_linear_out_channels, [0, 1])
    _close(MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)(fresh), [31, 42])


def test_layer_scores_of_the_wrong_shape_are_an_error() -> None:
    class Wrong(PerLayerImportance):
        def layer_scores(self, channels):
            return torch.ones(len(channels.idxs) + 1)

    _, _, group = _mlp_group()
    with pytest.raises(ValueError, match=r"Wrong.layer_scores gave shape \(5,\) for fc1 \(Linear\); expected \(4,\)"):
        Wrong()(group)


# --- the plugin hook ------------------------------------------------------------------------------


def test_builtin_criteria_come_from_their_entry_point() -> None:
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert found.get("importance_criteria") == "pruneframe.plugins.importance_criteria"
    registry = pruneframe.get_registry()
    info = next(p for p in registry.describe() if p["name"] == "importance_criteria")
    assert info["builtin"] and info["distribution"] == "pruneframe"
    assert info["hooks"] == ["pruneframe_importances"]
    assert info["importances"] == sorted(BUILTIN_NAMES)
    for name, cls in BUILTIN_NAMES.items():
        assert isinstance(from_name(name), cls), name
        assert registry.importance_entry(name).plugin == "importance_criteria"
    assert from_name("l1").p == 1 and from_name("l2").p == 2 and from_name("magnitude").p == 2


def test_criteria_by_name_score_like_the_classes() -> None:
    _, _, group = _mlp_group()
    _close(from_name("l1", group_reduction="sum", normalizer=None)(group), [2, 5, 6, 8])
    _close(from_name("l2", normalizer=None)(group), [1, 4.5, 9, 10])
    _close(from_name("lamp")(group), [1 / 24.5, 4.5 / 23.5, 9 / 19, 1])


def test_disabling_the_builtin_plugin_removes_the_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEFRAME_DISABLE_PLUGINS", "importance_criteria")
    registry = build_registry()
    assert registry.importance_names() == []
    with pytest.raises(UnknownImportanceError, match="'l1'.*Known: none"):
        registry.importance("l1")


class _ThirdParty:
    """An in-process plugin: one new criterion, and its own "l1" that must beat the built-in."""

    class Count(PerLayerImportance):
        def layer_scores(self, channels):
            return (channels.rows() != 0).sum(1).double()

    @pruneframe.hookimpl
    def pruneframe_importances(register):  # noqa: N805 - a namespace of hook functions, not a method
        register("nonzero", _ThirdParty.Count, aliases=["count"])
        register("l1", _ThirdParty.Count)


def test_a_third_party_importance_is_found_by_name_and_beats_a_builtin() -> None:
    registry = build_registry(extra_plugins=[("third", _ThirdParty)])
    assert registry.importance("nonzero") is _ThirdParty.Count
    assert registry.importance("count") is _ThirdParty.Count
    assert registry.importance("l1") is _ThirdParty.Count  # third-party over built-in
    assert registry.importance_entry("l1").plugin == "third"
    assert registry.importance("l2")().p == 2  # the other built-ins stay
    info = next(p for p in registry.describe() if p["name"] == "third")
    assert info["importances"] == ["count", "l1", "nonzero"] and info["hooks"] == ["pruneframe_importances"]
    _, _, group = _mlp_group()
    # nonzero weights: fc1 rows 1 1 1 3, fc2 columns 1 2 1 2
    _close(registry.importance("nonzero")(group_reduction="sum", normalizer=None)(group), [2, 3, 2, 5])
    assert isinstance(from_name("l1"), MagnitudeImportance)  # the process-wide registry never saw the plugin


def test_an_unknown_name_lists_the_known_ones() -> None:
    registry = pruneframe.get_registry()
    with pytest.raises(UnknownImportanceError) as info:
        registry.importance("l3")
    message = str(info.value)
    assert message.startswith("no importance criterion is registered as 'l3'. Known: ")
    for name in BUILTIN_NAMES:
        assert name in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownImportanceError, match="'l3'"):
        from_name("l3")


@pytest.mark.parametrize(
    "body, complaint",
    [
        ('register("broken", 42)', "must be callable"),
        ('register("broken", object, aliases="b")', "must be a list of names"),
        ('register("", object)', "non-empty strings"),
    ],
)
def test_a_bad_registration_is_reported_by_plugin_name(body: str, complaint: str) -> None:
    namespace: dict[str, Any] = {"pruneframe": pruneframe}
    exec(textwrap.dedent(f"""
        class Bad:
            @pruneframe.hookimpl
            def pruneframe_importances(register):
                {body}
    """), namespace)
    with pytest.warns(PluginLoadWarning, match=f'"bad-importance".*{complaint}'):
        registry = build_registry(extra_plugins=[("bad-importance", namespace["Bad"])])
    assert "bad-importance" not in {p.name for p in registry.plugins}
    assert "broken" not in registry.importance_names() and "l1" in registry.importance_names()


def test_an_installed_distribution_registers_an_importance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pruneframe.get_registry()  # the process-wide registry is loaded before the fake distribution exists
    info = tmp_path / "pruneframe_imp_demo-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pruneframe-imp-demo\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nimp_demo = imp_demo_mod\n")
    (tmp_path / "imp_demo_mod.py").write_text(textwrap.dedent("""
        import pruneframe
        from pruneframe.importance import MagnitudeImportance


        class Cubic(MagnitudeImportance):
            def __init__(self, **kwargs):
                super().__init__(p=3, **kwargs)


        @pruneframe.hookimpl
        def pruneframe_importances(register):
            register("cubic", Cubic)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        registry = build_registry()
        entry = registry.importance_entry("cubic")
        assert (entry.plugin, entry.builtin) == ("imp_demo", False)
        plugin = next(p for p in registry.describe() if p["name"] == "imp_demo")
        assert (plugin["distribution"], plugin["version"], plugin["importances"]) == ("pruneframe-imp-demo", "1.2", ["cubic"])
        _, _, group = _mlp_group()
        # |row|^3: 1 8 27 3, |column|^3: 1 9 27 65
        _close(registry.importance("cubic")(group_reduction="sum", normalizer=None)(group), [2, 17, 54, 68])
    finally:
        sys.modules.pop("imp_demo_mod", None)
    assert "cubic" not in pruneframe.get_registry().importance_names()


def test_cli_lists_the_importance_names() -> None:
    env = subprocess_env()
    out = subprocess.run([sys.executable, "-m", "pruneframe", "plugins"], capture_output=True, text=True,
                         env=env, check=True, timeout=300)
    by_name = {p["name"]: p for p in json.loads(out.stdout)}
    assert by_name["importance_criteria"]["importances"] == sorted(BUILTIN_NAMES)
    assert by_name["linear"]["importances"] == []


# --- Torch-Pruning's other spellings: "gate", no reduction, "sentinel_<q>" ------------------------------------------


def test_gate_takes_each_root_index_from_the_last_member_that_holds_it() -> None:
    _, _, group = _mlp_group()
    _close(MagnitudeImportance(p=1, group_reduction="gate", normalizer=None)(group), [1, 3, 3, 5])  # fc2's columns


def test_no_reduction_keeps_one_row_per_member_and_a_pruner_refuses_it() -> None:
    model, _, group = _mlp_group()
    scores = MagnitudeImportance(p=1, group_reduction=None, normalizer=None)(group)
    assert scores.shape == (2, 4)
    _close(scores[0], [1, 2, 3, 3])
    _close(scores[1], [1, 3, 3, 5])
    _close(MagnitudeImportance(p=1, group_reduction=None, normalizer="sum")(group)[1], [1 / 21, 3 / 21, 3 / 21, 5 / 21])
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, dtype=torch.float64),
                                  MagnitudeImportance(group_reduction=None), pruning_ratio=0.5, ignored_layers=[model.fc2])
    with pytest.raises(tp.PruningError, match="gave 8 scores for a group whose root fc1 has 4"):
        pruner.step()
    assert model.fc1.out_features == 4


@pytest.mark.parametrize("q, divisor", [("0", 1), ("0.25", 2.5), ("0.5", 3), ("0.74", 3), ("1", 4), ("1.0", 4)])
def test_sentinel_divides_by_the_score_at_quantile_q(q: str, divisor: float) -> None:
    _, _, group = _mlp_group()  # mean-reduced scores [1, 2.5, 3, 4]: divided by the int(q * 4)-th smallest
    _close(MagnitudeImportance(p=1, normalizer=f"sentinel_{q}")(group), [v / divisor for v in (1, 2.5, 3, 4)])


def test_bad_sentinel_spellings_are_refused() -> None:
    for bad in ("sentinel_", "sentinel_half", "sentinel_1.5", "sentinel_-0.1"):
        with pytest.raises(ValueError, match=r"sentinel_<q>.*between 0 and 1"):
            MagnitudeImportance(normalizer=bad)
