"""Models named on the command line: ``torchvision:NAME``, ``timm:NAME``, ``hf:CONFIG-or-path``, ``FILE.py:factory``.

Nothing is downloaded: torchvision builders get ``None`` for every weights argument they take
(``weights``, ``weights_backbone``), timm ``pretrained=False``, Hugging Face local files only (a directory's
own weights are loaded when it has them, else the model is built from its config). Each model comes with
example inputs that fit it and a *source record*: what rebuilds its architecture without the place it came
from (the Hugging Face config itself; a model file's absolute path, sha256 and source text). A pruned model
is saved with that record, so ``load_pruned(file)`` rebuilds the original architecture from any working
directory, replays the pruning plan on it and loads the weights.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import struct
import sys
import tempfile
import types
import warnings
from typing import Any, Callable

import attrs
import torch
from torch import nn

from .. import plan
from ..files import umask

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
MODEL_CODE_CHOICES = ("auto", "saved", "file")


class ModelSourceError(ValueError):
    """A model spec that cannot be built: the message says which part and what to write instead."""


class ModelCodeChangedWarning(UserWarning):
    """The model file a pruned model was made from changed since; the copy saved with it is used."""


@attrs.frozen
class BuiltModel:
    """A model ready to prune: inputs that fit it, how to call it, what its weights are, and what rebuilds it."""

    model: nn.Module
    inputs: Any
    forward_fn: Callable[[nn.Module, Any], Any] | None
    source: dict[str, Any]  # plain data saved with the pruned model; see rebuild()
    weights: str  # where the weights came from, for people


def build(spec: str, input_shape: tuple[int, ...] | None = None, own_weights: bool = True) -> BuiltModel:
    """The model ``spec`` names, in eval mode, with example inputs and the forward function to call it with.

    ``own_weights=False``: a Hugging Face directory's weights are not loaded (the caller brings its own).
    """
    if ".py:" in spec:  # a path may itself hold ':' (a Windows drive): the factory is after the last one
        path, _, factory = spec.rpartition(":")
        if not factory:
            raise ModelSourceError(f"model {spec!r}: name the factory function after the colon, e.g. {path}:build")
        return _from_file(path, factory, input_shape)
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise ModelSourceError(f"model {spec!r}: write torchvision:NAME, timm:NAME, hf:CONFIG-or-path or FILE.py:factory")
    if kind == "torchvision":
        return _torchvision(name, input_shape)
    if kind == "timm":
        return _timm(name, input_shape)
    if kind == "hf":
        return _huggingface(name, input_shape, own_weights)
    raise ModelSourceError(f"model {spec!r}: unknown source {kind!r}; use one of ['hf', 'timm', 'torchvision'] or FILE.py:factory")


def _random_inputs(shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(*shape)


RANDOM_INIT = "random initialisation (nothing downloaded); pass --weights FILE to prune trained weights"


def _torchvision(name: str, input_shape: tuple[int, ...] | None) -> BuiltModel:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as exc:
        raise ModelSourceError(f"torchvision has no model {name!r} ({exc}); see torchvision.models.list_models()") from exc
    # every weights argument the builder takes (weights, weights_backbone, ...) is None: nothing is downloaded
    no_weights = {p: None for p in inspect.signature(builder).parameters if p == "weights" or p.startswith("weights_")}
    model = builder(**no_weights).eval()
    family = builder.__module__.split(".")[2] if builder.__module__.count(".") >= 2 else ""
    return BuiltModel(model, _torchvision_inputs(name, family, input_shape), None, {"kind": "torchvision", "name": name},
                      RANDOM_INIT)


def _torchvision_inputs(name: str, family: str, shape: tuple[int, ...] | None) -> Any:
    """Inputs each torchvision family takes: an image batch, a clip, two frames, or a list of images (detection)."""
    if family == "detection":
        shape = shape or (1, 3, 320, 320)
        if len(shape) != 4:
            raise ModelSourceError(f"torchvision:{name} is a detection model: it takes a list of images, so --input-shape "
                                   f"is BATCH,3,HEIGHT,WIDTH (e.g. 1,3,320,320), not {','.join(map(str, shape))}")
        images = _random_inputs(shape)
        return (list(images.unbind(0)),)  # one positional argument: the list of (3, H, W) images
    if family == "optical_flow":
        shape = shape or (1, 3, 128, 128)
        return (_random_inputs(shape), _random_inputs(shape))  # two frames
    if family == "video":
        return _random_inputs(shape or (1, 3, 16, 112, 112))
    return _random_inputs(shape or ((1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224)))


def _timm(name: str, input_shape: tuple[int, ...] | None) -> BuiltModel:
    try:
        import timm
    except ImportError as exc:
        raise ModelSourceError("timm: models need the timm package (pip install timm)") from exc
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise ModelSourceError(f"timm has no model {name!r} ({exc}); see timm.list_models()") from exc
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    return BuiltModel(model.eval(), _random_inputs(input_shape or (1, *size)), None, {"kind": "timm", "name": name}, RANDOM_INIT)


def _hf_forward(m: nn.Module, x: dict[str, torch.Tensor]) -> Any:
    out = m(**x)
    return out[0] if isinstance(out, tuple) or hasattr(out, "to_tuple") else out


def _hf_inputs(config: Any, input_shape: tuple[int, ...] | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    batch, length = (input_shape or (1, 32))[:2]
    return {"input_ids": torch.randint(0, min(getattr(config, "vocab_size", 1000), 1000), (batch, length))}


def hf_weight_file(directory: str) -> str | None:
    """The weights file (or shard index) a Hugging Face directory holds, if any."""
    if not os.path.isdir(directory):
        return None
    return next((f for f in HF_WEIGHT_FILES if os.path.isfile(os.path.join(directory, f))), None)


def _huggingface(name: str, input_shape: tuple[int, ...] | None, own_weights: bool) -> BuiltModel:
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
    source = {"kind": "hf", "config": config.to_json_string(), "path": os.path.abspath(name)}
    found = hf_weight_file(name)
    if found and own_weights:
        try:
            model, info = AutoModel.from_pretrained(name, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelSourceError(f"hf:{name}: its weights ({found}) do not load: {type(exc).__name__}: {exc}") from exc
        weights = f"{os.path.join(name, found)} (from_pretrained, local files only) into {type(model).__name__}"
        missing, unused = info.get("missing_keys") or [], info.get("unexpected_keys") or []
        if missing:
            weights += f"; NOT in the checkpoint, so randomly initialised: {_first(sorted(missing))}"
        if unused:
            weights += f"; in the checkpoint but not part of {type(model).__name__}: {_first(sorted(unused))}"
    else:
        model = AutoModel.from_config(config)
        weights = ("random initialisation from config.json (the directory has no model.safetensors / pytorch_model.bin)"
                   if not found else f"built from config.json; the directory's own weights ({found}) are not loaded, --weights replaces them")
    return BuiltModel(model.eval(), _hf_inputs(config, input_shape), _hf_forward, source, weights)


def _first(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _from_file(path: str, factory_name: str, input_shape: tuple[int, ...] | None) -> BuiltModel:
    if not os.path.exists(path):
        raise ModelSourceError(f"model file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    source = {"kind": "file", "path": os.path.abspath(path), "factory": factory_name, "sha256": _sha256(text), "text": text}
    model, inputs = _call_factory(_module_from_text(text, os.path.abspath(path)), path, factory_name, input_shape)
    return BuiltModel(model, inputs, None, source, RANDOM_INIT + " (or whatever the factory loads)")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _module_from_text(text: str, path: str) -> types.ModuleType:
    """Run a model file's source as a module named after its hash; its folder is importable meanwhile (sibling modules)."""
    name = f"pruneframe_user_{_sha256(path + chr(0) + text)[:16]}"
    module = types.ModuleType(name)
    module.__file__ = path
    folder = os.path.dirname(path)
    added = os.path.isdir(folder) and folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[name] = module  # classes defined there look their module up (dataclasses, typing, pickling)
    try:
        exec(compile(text, path, "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            sys.path.remove(folder)
    return module


def _call_factory(module: types.ModuleType, path: str, factory_name: str, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, Any]:
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
        model, inputs = made, _random_inputs(input_shape)
    else:
        raise ModelSourceError(f"{path}:{factory_name} must return a model or (model, example_inputs), "
                               f"not {type(made).__name__}")
    return model.eval(), inputs


def rebuild(source: dict[str, Any], input_shape: tuple[int, ...] | None = None, model_code: str = "auto",
            saved_in: str = "the saved file") -> BuiltModel:
    """The original (unpruned) model a source record describes, built from the record alone where it can be.

    For a model file, ``model_code`` picks the code: ``"auto"`` the file if it is still there unchanged, else
    (moved, or changed: a ``ModelCodeChangedWarning``) the copy saved in the record; ``"saved"`` always the
    copy; ``"file"`` the file as it is now (it must exist).
    """
    kind = source.get("kind")
    if kind == "torchvision":
        return _torchvision(source["name"], input_shape)
    if kind == "timm":
        return _timm(source["name"], input_shape)
    if kind == "hf":
        return _hf_from_config(source, input_shape)
    if kind == "file":
        return _file_from_record(source, input_shape, model_code, saved_in)
    raise ModelSourceError(f"{saved_in}: unknown model source kind {kind!r}; was it written by a newer pruneframe?")


def _hf_from_config(source: dict[str, Any], input_shape: tuple[int, ...] | None) -> BuiltModel:
    try:
        from transformers import CONFIG_MAPPING, AutoModel
    except ImportError as exc:
        raise ModelSourceError("this model was made from a Hugging Face config: it needs transformers (pip install transformers)") from exc
    values = json.loads(source["config"])
    config = CONFIG_MAPPING[values["model_type"]].from_dict(values)
    model = AutoModel.from_config(config)
    return BuiltModel(model.eval(), _hf_inputs(config, input_shape), _hf_forward, source, "the saved file's")


def _file_from_record(source: dict[str, Any], input_shape: tuple[int, ...] | None, model_code: str, saved_in: str) -> BuiltModel:
    if model_code not in MODEL_CODE_CHOICES:
        raise ValueError(f"model_code={model_code!r}: use one of {', '.join(MODEL_CODE_CHOICES)}")
    path, saved_text, saved_hash = source["path"], source["text"], source["sha256"]
    current = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            current = f.read()
    if model_code == "file":
        if current is None:
            raise ModelSourceError(f"{saved_in} was made from {path}, which no longer exists; load it with "
                                   "model_code='saved' (or 'auto') to use the copy of the code saved in it")
        text = current
    elif model_code == "auto" and current is not None and _sha256(current) != saved_hash:
        warnings.warn(f"{path} changed since {saved_in} was made from it (sha256 {_sha256(current)[:12]}..., was "
                      f"{saved_hash[:12]}...): the copy of its code saved in {saved_in} is used; pass "
                      "model_code='file' to use the file as it is now", ModelCodeChangedWarning, stacklevel=3)
        text = saved_text
    else:
        text = saved_text if current is None or model_code == "saved" else current
    model, inputs = _call_factory(_module_from_text(text, path), path, source["factory"], input_shape)
    return BuiltModel(model, inputs, None, source, "the saved file's")


def save_pruned(model: nn.Module, path: str, spec: str, input_shape: tuple[int, ...] | None = None,
                source: dict[str, Any] | None = None) -> None:
    """Weights, pruning plan, the spec and its source record, written atomically; loads with ``torch.load(weights_only=True)``."""
    saved = {**plan.state_dict(model), "source": spec, "input_shape": list(input_shape) if input_shape else None}
    if source is not None:
        saved["model_source"] = source
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".pruneframe-", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(saved, temporary)
        os.chmod(temporary, 0o666 & ~umask())  # mkstemp makes it private; the file gets the mode any new file gets
        os.replace(temporary, path)  # a crash or Ctrl-C midway leaves no half-written file under the real name
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def load_pruned(path: str, model_code: str = "auto") -> nn.Module:
    """Rebuild the model saved by ``save_pruned`` (or ``pruneframe prune``), from any working directory.

    The original architecture is rebuilt from the record saved with it (a torchvision or timm name, the
    Hugging Face config, or a model file's code: see ``rebuild`` for ``model_code``), the pruning plan is
    replayed and the weights loaded. Loading a model made from a file runs that file's code (the copy
    saved in ``path`` if the file moved): load only files you trust. Files from before the record existed
    are rebuilt from their spec, relative to the working directory.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; `pruneframe prune MODEL --out FILE` writes one "
                                "(or save_pruned(model, FILE, spec))")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, struct.error) as exc:
        raise ModelSourceError(f"{path} is not a file saved by pruneframe prune: torch.load(weights_only=True) cannot "
                               f"read it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(saved, dict) or ("source" not in saved and "model_source" not in saved):
        raise ModelSourceError(f"{path} was not saved by pruneframe prune (no model source in it)")
    shape = tuple(saved["input_shape"]) if saved.get("input_shape") else None
    if "model_source" in saved:
        built = rebuild(saved["model_source"], shape, model_code, saved_in=path)
    else:
        built = build(saved["source"], shape, own_weights=False)
    plan.load_state_dict(built.model, saved)
    return built.model.eval()


__all__ = ["BuiltModel", "ModelCodeChangedWarning", "ModelSourceError", "build", "hf_weight_file", "load_pruned", "rebuild",
           "save_pruned"]
