"""tp.function: Torch-Pruning's layer pruner classes and functional names, resolved from the registered plugins."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.registry import build_registry


@pytest.mark.parametrize("name, layer_type", [
    ("ConvPruner", nn.Conv2d), ("DepthwiseConvPruner", nn.Conv2d), ("LinearPruner", nn.Linear),
    ("BatchnormPruner", nn.BatchNorm2d), ("LayernormPruner", nn.LayerNorm), ("GroupNormPruner", nn.GroupNorm),
    ("InstanceNormPruner", nn.InstanceNorm2d), ("PReLUPruner", nn.PReLU), ("EmbeddingPruner", nn.Embedding),
    ("LSTMPruner", nn.LSTM), ("ParameterPruner", nn.Parameter), ("MultiheadAttentionPruner", nn.MultiheadAttention),
])
def test_each_class_is_the_class_of_the_registered_pruner(name, layer_type) -> None:
    cls = getattr(tp.function, name)
    assert cls is type(tp.get_registry().layer_pruner(layer_type))
    assert issubclass(cls, tp.BasePruningFunc) and name in dir(tp.function)


def test_plugin_class_names_resolve_too_and_unknown_names_are_refused() -> None:
    assert tp.function.BatchNormPruner is tp.function.BatchnormPruner  # the plugin's own spelling
    with pytest.raises(AttributeError, match="no attribute 'NoSuchPruner'"):
        tp.function.NoSuchPruner
    with pytest.raises(AttributeError, match="prune_nosuch_out_channels.*Known: .*prune_conv_out_channels"):
        tp.function.prune_nosuch_out_channels


def test_pruner_box_maps_names_and_layer_types_to_the_registered_instances() -> None:
    assert tp.PrunerBox["linear"] is tp.prune_linear_out_channels.__self__
    assert tp.PrunerBox[nn.Conv2d] is tp.prune_conv_out_channels.__self__
    assert {"conv", "linear", "batchnorm", "lstm"} <= set(tp.PrunerBox) and len(tp.PrunerBox) == len(list(tp.PrunerBox))
    with pytest.raises(KeyError, match="no installed plugin prunes Identity"):
        tp.PrunerBox[nn.Identity]
    with pytest.raises(KeyError, match="named 'nosuch'.*Known: .*linear"):
        tp.PrunerBox["nosuch"]


def test_a_third_party_pruner_for_a_name_is_the_class_users_get(monkeypatch) -> None:
    class LoudLinearPruner(tp.function.LinearPruner):
        pass

    class Plugin:
        @tp.hookimpl
        def pruneframe_layer_pruners(self, register):
            register(LoudLinearPruner(), [nn.Linear], name="linear")

    registry = build_registry(extra_plugins=[("loud", Plugin())])
    with monkeypatch.context() as patch:
        patch.setattr("pruneframe.function._registry", lambda: registry)
        assert tp.function.LinearPruner is LoudLinearPruner and isinstance(tp.PrunerBox["linear"], LoudLinearPruner)
    assert tp.function.LinearPruner is not LoudLinearPruner  # the process-wide registry has only the built-in


def test_subclasses_inherit_torch_pruning_helpers() -> None:
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.arange(5.0))

    class ScalePruner(tp.function.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.w.numel())) - set(idxs))
            layer.w = self._prune_parameter_and_grad(layer.w, keep, 0)
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return layer.w.numel()

        get_in_channels = get_out_channels

    layer = Scale()
    layer.w.grad = torch.ones(5)
    ScalePruner()(layer, [4, 0])
    assert torch.equal(layer.w.detach(), torch.tensor([1.0, 2.0, 3.0])) and layer.w.grad.shape == (3,)
    assert ScalePruner().get_out_channel_groups(layer) == 1
    assert tp.function.ConvPruner().get_in_channel_groups(nn.Conv2d(4, 4, 1, groups=2)) == 2
    with pytest.raises(IndexError, match=r"\[7\] are out of range"):
        ScalePruner()(layer, [7])
    with pytest.raises(NotImplementedError, match="dry_run"):
        ScalePruner()(layer, [0], dry_run=True)


def test_import_pruneframe_does_not_load_tp_function() -> None:
    code = "import sys, pruneframe; print('pruneframe.function' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
