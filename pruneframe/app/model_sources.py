"""Models named on the command line: ``torchvision:NAME``, ``timm:NAME``, ``hf:CONFIG-or-path``, ``FILE.py:factory``.

Every model is built without downloading weights (``weights=None``,
``pretrained=False``, ``from_config``), with example inputs that fit it. A
pruned model is saved with its source spec, so ``load_pruned(file)`` rebuilds
the original architecture from the spec and replays the pruning plan on it.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import torch
from torch import nn

from .. import plan


class ModelSourceError(ValueError):
    """A model spec that cannot be built: the message says which part and what to write instead."""


def build(spec: str, input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, Any, Callable[[nn.Module, Any], Any] | None]:
    """The model ``spec`` names, in eval mode, with example inputs and the forward function to call it with."""
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise ModelSourceError(f"model {spec!r}: write torchvision:NAME, timm:NAME, hf:CONFIG-or-path or FILE.py:factory")
    if kind.endswith(".py"):
        return _from_file(kind, name, input_shape)
    builders = {"torchvision": _torchvision, "timm": _timm, "hf": _huggingface}
    if kind not in builders:
        raise ModelSourceError(f"model {spec!r}: unknown source {kind!r}; use one of {sorted(builders)} or FILE.py:factory")
    return builders[kind](name, input_shape)


def _image_input(shape: tuple[int, ...] | None, default: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(*(shape or default))


def _torchvision(name: str, input_shape):
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise ModelSourceError(f"torchvision has no model {name!r} ({exc}); see torchvision.models.list_models()") from exc
    default = (1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224)
    return model.eval(), _image_input(input_shape, default), None


def _timm(name: str, input_shape):
    try:
        import timm
    except ImportError as exc:
        raise ModelSourceError("timm: models need the timm package (pip install timm)") from exc
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise ModelSourceError(f"timm has no model {name!r} ({exc}); see timm.list_models()") from exc
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    return model.eval(), _image_input(input_shape, (1, *size)), None


def _huggingface(name: str, input_shape):
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError as exc:
        raise ModelSourceError("hf: models need the transformers package (pip install transformers)") from exc
    if not os.path.exists(name):
        raise ModelSourceError(f"hf:{name}: no such local directory or config file; pruneframe never downloads, so pass "
                               "a directory holding config.json (e.g. one written by save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True)  # never the Hub
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"hf:{name}: not a Hugging Face config ({type(exc).__name__}: {exc})") from exc
    model = AutoModel.from_config(config).eval()
    torch.manual_seed(0)
    batch, length = (input_shape or (1, 32))[:2]
    inputs = {"input_ids": torch.randint(0, min(getattr(config, "vocab_size", 1000), 1000), (batch, length))}

    def forward(m: nn.Module, x: dict[str, torch.Tensor]) -> Any:
        out = m(**x)
        return out[0] if isinstance(out, tuple) or hasattr(out, "to_tuple") else out

    return model, inputs, forward


def _from_file(path: str, factory_name: str, input_shape):
    if not os.path.exists(path):
        raise ModelSourceError(f"model file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"pruneframe_user_{abs(hash(os.path.abspath(path)))}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelSourceError(f"{path} has no function {factory_name!r} that builds the model")
    made = factory()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        model, inputs = made
    elif isinstance(made, nn.Module):
        if input_shape is None:
            raise ModelSourceError(f"{path}:{factory_name} returns only a model: pass --input-shape, "
                                   "or return (model, example_inputs)")
        model, inputs = made, _image_input(input_shape, input_shape)
    else:
        raise ModelSourceError(f"{path}:{factory_name} must return a model or (model, example_inputs), "
                               f"not {type(made).__name__}")
    return model.eval(), inputs, None


def save_pruned(model: nn.Module, path: str, spec: str, input_shape: tuple[int, ...] | None = None) -> None:
    """Weights, pruning plan and the source spec; loads with ``torch.load(weights_only=True)``."""
    torch.save({**plan.state_dict(model), "source": spec, "input_shape": list(input_shape) if input_shape else None}, path)


def load_pruned(path: str) -> nn.Module:
    """Rebuild the model saved by ``save_pruned`` (or ``pruneframe prune``): its architecture from the spec, then the plan and weights."""
    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or "source" not in saved:
        raise ModelSourceError(f"{path} was not saved by pruneframe prune (no model source in it)")
    shape = tuple(saved["input_shape"]) if saved.get("input_shape") else None
    model, _, _ = build(saved["source"], shape)
    plan.load_state_dict(model, saved)
    return model.eval()
