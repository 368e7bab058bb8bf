"""Prune every torchvision model 30% per group and check it: forward, backward, output shapes, exactness.

Usage:
    python benchmarks/torchvision_sweep.py [--models NAME ...] [--kind classification|detection|segmentation|all]
                                          [--markdown docs/torchvision-sweep.md]

For each model (built with weights=None): every group from get_all_groups
(classifier heads ignored) loses 30% of its channels, chosen at random; the
pruned model must run forward and backward with the same output shapes. Where
no normalisation crosses the pruned channels, the pruned float64 model is
compared with the masked original (pruneframe.testing): the relative error is
printed, else "n/a". One row per model: groups pruned, parameters before and
after, error, seconds.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import time
import traceback
import warnings

import torch
import torchvision
from torch import nn

import pruneframe as tp
from pruneframe.testing import check_prune_equivalence, prune_random

# Families whose pruned channels never cross a normalisation: exactness is checkable.
EXACT_FAMILIES = (
    "resnet", "resnext", "wide_resnet", "vgg", "alexnet", "densenet", "googlenet", "inception", "mobilenet",
    "mnasnet", "efficientnet", "regnet", "shufflenet", "squeezenet",
)
SPECIAL_INPUT = {"inception_v3": 299, "vit": 224, "swin": 224, "maxvit": 224}


def input_size(name: str) -> int:
    for prefix, size in SPECIAL_INPUT.items():
        if name.startswith(prefix):
            return size
    return 64 if not name.startswith(("alexnet",)) else 128


def build(name: str) -> nn.Module:
    kwargs = {}
    if name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": False}
    if name.startswith("vit") and name.endswith("_14"):
        kwargs["image_size"] = 224
    return torchvision.models.get_model(name, weights=None, **kwargs)


def heads(model: nn.Module) -> list[nn.Module]:
    """The classifier's last linear layer(s): ignored, as is customary."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:] if linears else []


def outputs_of(out) -> list[torch.Tensor]:
    from pruneframe.runtime import tensors_in

    return [t for t in tensors_in(out) if t.is_floating_point()]


def check_classification(name: str) -> dict:
    model = build(name).eval()
    size = input_size(name)
    x = torch.randn(2, 3, size, size)
    params_before = sum(p.numel() for p in model.parameters())
    exact = name.startswith(EXACT_FAMILIES)
    step = prune_random(ratio=0.3, seed=0, ignored_layers=heads)
    if exact:
        error, pruned, graph = check_prune_equivalence(model, x, step)
    else:
        pruned = copy.deepcopy(model)
        graph = tp.DependencyGraph().build_dependency(pruned, x)
        step(graph, pruned)
        error = None
    pruned = pruned.float().train()
    out = pruned(x)
    outs = outputs_of(out)
    sum(o.sum() for o in outs).backward()
    with torch.no_grad():
        ref = outputs_of(model(x))
    assert [o.shape for o in outs] == [r.shape for r in ref], "output shapes changed"
    return {
        "groups": len(graph.pruning_history()),
        "before": params_before,
        "after": sum(p.numel() for p in pruned.parameters()),
        "error": error,
    }


def check_detection_or_segmentation(name: str, kind: str) -> dict:
    kwargs = {"weights_backbone": None} if kind == "detection" else {"weights_backbone": None, "aux_loss": False}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    x = [torch.rand(3, 128, 160)] if kind == "detection" else torch.rand(1, 3, 128, 128)
    params_before = sum(p.numel() for p in model.parameters())
    ignored = []
    if kind == "detection":
        ignored = [m for n, m in model.named_modules() if any(k in n for k in ("cls_logits", "bbox_pred", "bbox_reg", "cls_score", "mask_fcn_logits", "kps_score", "conf", "loc"))]
    else:
        ignored = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1:]
    graph = tp.DependencyGraph().build_dependency(model, (x,) if kind == "detection" else x)
    done = prune_random(ratio=0.3, seed=0, ignored_layers=lambda m: ignored)(graph, model)
    with torch.no_grad():
        out = model(x)
    assert outputs_of(out), "no output"
    return {"groups": done, "before": params_before, "after": sum(p.numel() for p in model.parameters()), "error": None}


DETECTION = ["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn",
             "retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large"]
SEGMENTATION = ["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--kind", default="classification", choices=["classification", "detection", "segmentation", "all"])
    parser.add_argument("--markdown", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    jobs: list[tuple[str, str]] = []
    if args.kind in ("classification", "all"):
        jobs += [(n, "classification") for n in torchvision.models.list_models(module=torchvision.models)]
    if args.kind in ("detection", "all"):
        jobs += [(n, "detection") for n in DETECTION]
    if args.kind in ("segmentation", "all"):
        jobs += [(n, "segmentation") for n in SEGMENTATION]
    if args.models:
        jobs = [(n, k) for n, k in jobs if n in args.models] or [(n, "classification") for n in args.models]
    warnings.simplefilter("ignore")
    rows, failures = [], 0
    header = "| model | kind | groups | params before | params after | equivalence error | seconds |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, kind in jobs:
        start = time.perf_counter()
        try:
            r = check_classification(name) if kind == "classification" else check_detection_or_segmentation(name, kind)
            err = "n/a" if r["error"] is None else f"{r['error']:.1e}"
            row = f"| {name} | {kind} | {r['groups']} | {r['before']:,} | {r['after']:,} | {err} | {time.perf_counter() - start:.1f} |"
            if r["error"] is not None and not r["error"] < 1e-9:
                failures += 1
                row += " NOT EXACT"
        except Exception as exc:  # a sweep reports every model; the failure is printed, not hidden
            failures += 1
            row = f"| {name} | {kind} | FAILED | | | {type(exc).__name__}: {str(exc)[:160]} | {time.perf_counter() - start:.1f} |"
            traceback.print_exc(file=sys.stderr)
        print(row, flush=True)
        rows.append(row)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"# torchvision sweep\n\nProduced {datetime.date.today()} with pruneframe {tp.__version__}, "
                    f"torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()} "
                    f"by `python benchmarks/torchvision_sweep.py --kind all --markdown docs/torchvision-sweep.md`.\n\n"
                    "Every group from `get_all_groups` (classifier heads ignored) loses 30% of its channels at random; "
                    "the pruned model runs forward and backward with unchanged output shapes. The error is the relative "
                    "difference, in float64, from the original with the lost connections zeroed (n/a where normalisation "
                    "crosses the pruned channels or for detection/segmentation).\n\n")
            f.write(header + "\n|---|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    print(f"{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
