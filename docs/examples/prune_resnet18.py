"""Prune 30% of every prunable channel group of a ResNet-18 by L2 magnitude, print the savings, save it.

Run: python docs/examples/prune_resnet18.py [OUTPUT.pth]
"""
import sys

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import pruneframe as tp


def macs_and_params(model, x):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def l2_of_root(group):
    """Score each root channel by the L2 norm of its weights (the smallest go first)."""
    layer = group[0].dep.target.module
    return layer.weight.detach().flatten(1).norm(dim=1)


model = torchvision.models.resnet18(weights=None).eval()
x = torch.randn(1, 3, 224, 224)
macs0, params0 = macs_and_params(model, x)

DG = tp.DependencyGraph().build_dependency(model, example_inputs=x)
for group in list(DG.get_all_groups(ignored_layers=[model.fc])):
    scores = l2_of_root(group)[group.root_idxs]
    order = torch.argsort(scores).tolist()
    chosen = [group.root_idxs[i] for i in order[: int(0.3 * len(order))]]
    if chosen:
        root = group[0].dep
        pruned = DG.get_pruning_group(root.target.module, root.handler, chosen)
        if DG.check_pruning_group(pruned):
            pruned.prune()

macs1, params1 = macs_and_params(model, x)
assert model(x).shape == (1, 1000)
print(f"MACs:   {macs0 / 1e9:.3f} G -> {macs1 / 1e9:.3f} G ({macs1 / macs0:.1%})")
print(f"Params: {params0 / 1e6:.3f} M -> {params1 / 1e6:.3f} M ({params1 / params0:.1%})")
out = sys.argv[1] if len(sys.argv) > 1 else "resnet18_pruned.pth"
torch.save(model, out)
print(f"saved the pruned model to {out} (load it with torch.load({out!r}, weights_only=False))")
