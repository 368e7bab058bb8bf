"""``--weights``: a state dict or checkpoint loaded into the built model, checked name by name and shape by shape first."""
from __future__ import annotations

import pickle
from typing import Any, Mapping

import torch
from torch import nn

CHECKPOINT_KEYS = ("state_dict", "model")  # where training scripts usually keep the weights inside a checkpoint


class WeightsError(ValueError):
    """Weights that do not fit the model: the message names the file, the first bad keys and what to do."""


def load_weights(model: nn.Module, path: str) -> str:
    """Load ``path`` into ``model`` (strictly) and say what was loaded; raise ``WeightsError`` before changing anything."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsError(
            f"--weights {path}: torch.load(weights_only=True) cannot read it ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "Save the weights as plain tensors: torch.save(model.state_dict(), path)") from exc
    state, where = _state_dict_in(saved, path)
    expected = model.state_dict()
    note = ""
    if not set(state) & set(expected) and state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DataParallel / DDP wrapper
        note = ", without the 'module.' prefix of a DataParallel/DDP wrapper"
    problem = misfit(expected, state)
    if problem:
        raise WeightsError(f"--weights {path}{where} does not fit the model ({problem}). Nothing was pruned or written; "
                           "pass the weights of this architecture (and configuration), or a different model")
    model.load_state_dict(state, strict=True)
    return f"{path}{where}: {len(state)} tensors{note}"


def _state_dict_in(saved: Any, path: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside what ``torch.load`` returned, and where in it it was (for messages)."""
    if not isinstance(saved, dict):
        raise WeightsError(f"--weights {path} holds a {type(saved).__name__}, not a state dict: save model.state_dict()")
    pruning_plan = saved.get("pruning_plan")
    if isinstance(pruning_plan, dict) and pruning_plan.get("steps"):
        raise WeightsError(f"--weights {path} is a pruned model saved by pruneframe: load it with "
                           f"pruneframe.load_pruned({path!r}), not as the weights of the unpruned model")
    if saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        return saved, ""
    for key in CHECKPOINT_KEYS:
        inner = saved.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, f"[{key!r}]"
    shown = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(saved.items())[:6])
    raise WeightsError(f"--weights {path} is not a state dict (a dict of tensors) nor a checkpoint holding one under "
                       f"{' or '.join(repr(k) for k in CHECKPOINT_KEYS)}; its keys: {shown or 'none'}")


def misfit(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], n: int = 5) -> str | None:
    """The first missing, unexpected and mis-shaped keys of ``given`` against ``expected`` (None if they fit)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k}: {tuple(given[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in expected.items()
              if k in given and tuple(given[k].shape) != tuple(v.shape)]
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if names:
            more = f" and {len(names) - n} more" if len(names) > n else ""
            parts.append(f"{len(names)} {what}: {', '.join(names[:n])}{more}")
    return "; ".join(parts) or None


__all__ = ["WeightsError", "load_weights", "misfit"]
