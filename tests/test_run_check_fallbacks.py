"""Two ways a prune used to end in a broken model or a confusing error, found by benchmarks/model_families.py.

- A layer whose declarative pruner does not list one of its tensors sized like its channels (timm's
  ScaledStdConv2d keeps a per-output ``gain``) is not shrunk whole by that pruner: every prune of it is checked by
  running the model, so MetaPruner leaves it whole instead of returning a model that cannot run.
- When the run check undid the first group ever pruned of a model whose root module a fix-up touches, the plan
  bookkeeping raised ``KeyError: '_pruneframe_plan'`` and hid the real reason.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

import pruneframe as tp
from pruneframe.registry import build_registry


class GainConv(nn.Conv2d):
    """A Conv2d subclass with one more per-output parameter, which the Conv2d pruner knows nothing of."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


def test_a_layer_with_an_undescribed_channel_tensor_is_left_whole_not_broken() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(a=GainConv(3, 8, 3, padding=1), act=nn.ReLU(), b=nn.Conv2d(8, 8, 3, padding=1),
                                      c=nn.Conv2d(8, 2, 1))).eval()
    x = torch.randn(1, 3, 8, 8)
    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=[model.c])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner.step()
    assert model(x).shape == (1, 2, 8, 8)  # it runs
    assert model.a.out_channels == 8 and model.a.gain.shape == (8, 1, 1, 1)  # left whole, not half pruned
    assert model.b.out_channels == 4  # the rest of the step went ahead
    assert any("left whole" in str(w.message) and "a" in str(w.message) for w in caught)
    reasons = [reason for group, reason in pruner.left_whole if group.root.name == "a"]
    assert reasons and "no longer runs" in reasons[0]


class FixedHeads(nn.Module):
    """``a``'s 8 channels are viewed with a literal 4: any prune of them stops the model running."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.c(y.view(y.shape[0], 2, 4, *y.shape[2:]).mean(1))


def test_undoing_the_first_prune_of_a_model_a_fixup_touches_names_the_real_reason() -> None:
    seen: list[str] = []

    @tp.hookimpl
    def pruneframe_fixups(register):
        register([FixedHeads], lambda model: seen.append(type(model).__name__), name="touches_the_root")

    registry = build_registry(extra_plugins=[("root_fixup", SimpleNamespace(pruneframe_fixups=pruneframe_fixups))])
    model = FixedHeads().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dg = tp.DependencyGraph(registry).build_dependency(model, example_inputs=torch.randn(1, 3, 4, 4))
    group = dg.get_pruning_group(model.a, tp.prune_conv_out_channels, [0, 1])
    try:
        with dg.one_run_check():  # as MetaPruner prunes a step: the check, and the undo, come at the end
            group.prune()
    except tp.ModelStopsRunningError as exc:
        assert "no longer runs" in str(exc) or "invalid" in str(exc)
    else:
        raise AssertionError("the prune should have been undone")
    assert seen, "the fix-up on the root module ran"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert tp.plan.get_plan(model)["steps"] == []
