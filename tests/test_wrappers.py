"""torch.compile, DataParallel and DistributedDataParallel models prune through the module they hold."""
from __future__ import annotations

import gc
import io

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.wrappers import unwrap


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


X = torch.randn(3, 4)


@pytest.mark.parametrize("wrap", [torch.compile, nn.DataParallel, lambda m: torch.compile(nn.DataParallel(m))],
                         ids=["compile", "DataParallel", "compiled-DataParallel"])
def test_meta_pruner_prunes_the_held_module_and_the_wrapper_keeps_working(wrap) -> None:
    model = _mlp()
    wrapped = wrap(model)
    assert unwrap(wrapped) is model
    macs_before = tp.utils.count_ops_and_params(wrapped, X)[0]
    pruner = tp.pruner.MetaPruner(wrapped, X, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model[4]])
    pruner.step()
    assert (model[0].out_features, model[2].out_features) == (8, 8)
    with torch.no_grad():
        assert torch.equal(wrapped(X), model(X))  # a compiled model recompiles on its next call
    assert tp.utils.count_ops_and_params(wrapped, X)[0] < macs_before
    buffer = io.BytesIO()
    torch.save(tp.state_dict(wrapped), buffer)  # the plan and weights of the held module, without prefixes
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in saved["state_dict"])
    fresh = wrap(_mlp())
    tp.load_state_dict(fresh, state_dict=saved)
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))


def test_a_graph_of_a_wrapper_is_the_graph_of_what_it_holds() -> None:
    model = _mlp()
    DG = tp.DependencyGraph().build_dependency(torch.compile(model), X)
    assert DG.model is model and model[0] in DG.module2node


def test_a_sharded_wrapper_is_refused_with_what_to_pass_instead() -> None:
    class FullyShardedDataParallel(nn.Module):  # stands in for torch's (which needs a process group): same module
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    FullyShardedDataParallel.__module__ = "torch.distributed.fsdp.fully_sharded_data_parallel"

    with pytest.raises(tp.PruningError, match="shards the model's parameters.*prune the model before wrapping it with FSDP"):
        tp.DependencyGraph().build_dependency(FullyShardedDataParallel(_mlp()), X)


def test_distributed_data_parallel_prunes_the_held_module(tmp_path) -> None:
    """One gloo process on the CPU: DistributedDataParallel holds the module; the prune goes to it."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = _mlp()
        wrapped = nn.parallel.DistributedDataParallel(model)
        with pytest.warns(UserWarning, match=r"DDP keeps gradient buckets of the old sizes.*DistributedDataParallel\(ddp.module\)"):
            pruner = tp.pruner.MetaPruner(wrapped, X, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                          ignored_layers=[model[4]])
        pruner.step()
        assert unwrap(wrapped) is model and model[0].out_features == 8
        assert all(not k.startswith("module.") for k in tp.state_dict(wrapped)["state_dict"])
        module = wrapped.module
        del wrapped  # the old wrapper holds the parameters' gradient accumulators, sized as before
        gc.collect()
        rewrapped = nn.parallel.DistributedDataParallel(module)  # what the warning says: then it trains
        rewrapped(X).sum().backward()
        assert model[0].weight.grad.shape == model[0].weight.shape
    finally:
        dist.destroy_process_group()
