"""A Torch-Pruning script, run unchanged on pruneframe: only the import differs.

Prunes ResNet-18 by 50% (L2 magnitude, global ranking, 3 iterative steps, channels
rounded to multiples of 8), prints MACs and parameters, saves the weights with the
pruning plan and reloads them into a freshly built ResNet-18.

Run: python docs/examples/prune_resnet18.py [OUTPUT.pth]
"""
import sys

import torch
import torchvision

import pruneframe as tp  # was: import torch_pruning as tp

model = torchvision.models.resnet18(weights=None).eval()
example_inputs = torch.randn(1, 3, 224, 224)

imp = tp.importance.MagnitudeImportance(p=2, group_reduction="mean")
ignored_layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]

base_macs, base_nparams = tp.utils.count_ops_and_params(model, example_inputs)
pruner = tp.pruner.MetaPruner(
    model,
    example_inputs,
    importance=imp,
    pruning_ratio=0.5,
    global_pruning=True,
    iterative_steps=3,
    round_to=8,
    ignored_layers=ignored_layers,
)
for i in range(3):
    pruner.step()
    macs, nparams = tp.utils.count_ops_and_params(model, example_inputs)
    print(f"step {i + 1}: MACs {macs / 1e9:.3f} G, params {nparams / 1e6:.3f} M")

print(f"MACs:   {base_macs / 1e9:.3f} G -> {macs / 1e9:.3f} G ({macs / base_macs:.1%})")
print(f"Params: {base_nparams / 1e6:.3f} M -> {nparams / 1e6:.3f} M ({nparams / base_nparams:.1%})")

out = sys.argv[1] if len(sys.argv) > 1 else "resnet18_pruned.pth"
torch.save(tp.state_dict(model), out)  # weights and pruning plan; no class is pickled

fresh = torchvision.models.resnet18(weights=None).eval()
tp.load_state_dict(fresh, state_dict=torch.load(out, weights_only=True))
with torch.no_grad():
    assert torch.equal(fresh(example_inputs), model(example_inputs))
print(f"saved to {out}; reloaded into a fresh ResNet-18 with identical outputs")
