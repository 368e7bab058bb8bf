"""Mixture-of-experts layers of Hugging Face models: remove whole experts, or narrow every expert, with the config in step.

transformers 5 keeps a layer's experts fused in one module (``@use_experts_implementation``):
3-D parameters with the experts along dim 0 (``gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``, or ``[E, H, 2I]`` / ``[E, I, H]`` when ``is_transposed``),
next to a router whose ``weight`` is ``[E, H]``. ``moe_layers(model)`` finds
every such pair by its shapes, whatever the family (Mixtral, Qwen2-MoE with
its shared expert, Qwen3-MoE, OLMoE, ...):

- ``prune_experts(model, ratio=... | remove={layer: [experts]}, importance=...)``
  removes whole experts: the router's rows (and any per-expert router tensor
  such as a score-correction bias), the experts' slices of every fused
  tensor, and the stored expert counts;
- ``prune_expert_widths(model, ratio=...)`` removes the same number of hidden
  units from every expert (each expert its own least important ones).

Both check everything first (a top-k router keeps at least ``top_k``
experts; indices in range), then change the model in one transaction (an
error restores it), then let ``sync_config`` infer ``model.config``
(``num_local_experts`` / ``num_experts``, ``intermediate_size`` /
``moe_intermediate_size``) and accept it only if a meta-device rebuild
reproduces the model. ``importance`` is ``"magnitude"`` (the p=2 norm of each
expert's weights, the default), a ``RouterMassImportance`` that has seen
calibration batches through ``router_modules(model)``, or a callable
``layer -> scores``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import attrs
import torch
from torch import nn

from pruneframe import DeclarativeLayerPruner, TensorDims
from pruneframe.importance.experts import ExpertRouter, RouterMassImportance, expert_magnitude
from pruneframe.layer_pruner import Coupling, keep_index, select_, validate_idxs

from .config_sync import ConfigStatus, sync_config

@attrs.frozen
class MoeLayer:
    """One mixture-of-experts layer: the module holding it, its router and its fused experts."""

    name: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module

    @property
    def num_experts(self) -> int:
        return int(self.router.weight.shape[0])

    @property
    def top_k(self) -> int | None:
        for module in (self.router, self.block):
            for key in ("top_k", "num_experts_per_tok"):
                value = getattr(module, key, None)
                if isinstance(value, int):
                    return value
        return None

    @property
    def width(self) -> int:
        """The hidden units of each expert."""
        return int(self.experts.down_proj.shape[self.width_dims["down_proj"]])

    @property
    def width_dims(self) -> dict[str, int]:
        """Per fused tensor of the experts, the dimension that holds each expert's hidden units."""
        transposed = bool(getattr(self.experts, "is_transposed", False))
        dims = {}
        for name in ("gate_up_proj", "up_proj"):
            if _param(self.experts, name) is not None:
                dims[name] = 2 if transposed else 1
                if _param(self.experts, name + "_bias") is not None:
                    dims[name + "_bias"] = 1
        dims["down_proj"] = 1 if transposed else 2
        return dims


def _param(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _fused_experts(module: nn.Module) -> bool:
    down = _param(module, "down_proj")
    up = _param(module, "gate_up_proj") if _param(module, "gate_up_proj") is not None else _param(module, "up_proj")
    return down is not None and up is not None and down.dim() == 3 and up.dim() == 3 and down.shape[0] == up.shape[0]


def moe_layers(model: nn.Module) -> list[MoeLayer]:
    """Every module of ``model`` holding fused experts (3-D ``down_proj`` and ``gate_up_proj``/``up_proj``) and their router.

    The router is the sibling whose ``weight`` has one row per expert and one column per hidden unit of the input.
    """
    found = []
    for name, block in model.named_modules():
        children = dict(block.named_children())
        experts = [m for m in children.values() if _fused_experts(m)]
        if len(experts) != 1:
            continue
        fused = experts[0]
        n = fused.down_proj.shape[0]
        hidden = fused.down_proj.shape[1 if not getattr(fused, "is_transposed", False) else 2]
        routers = [m for m in children.values() if m is not fused and isinstance(_param(m, "weight"), torch.Tensor)
                   and m.weight.dim() == 2 and tuple(m.weight.shape) == (n, hidden)]
        if len(routers) == 1:
            found.append(MoeLayer(name, block, routers[0], fused))
    return found


def router_modules(model: nn.Module) -> list[nn.Module]:
    """The routers of ``model``'s MoE layers, for ``RouterMassImportance.collect``."""
    return [layer.router for layer in moe_layers(model)]


def expert_scores(layer: MoeLayer, importance: Any = "magnitude") -> torch.Tensor:
    """One score per expert of ``layer`` (higher: more important) by ``importance`` (see the module docstring)."""
    if isinstance(importance, str):
        if importance != "magnitude":
            raise ValueError(f"importance={importance!r}: use 'magnitude', a calibrated RouterMassImportance, "
                             "or a callable layer -> scores")
        tensors = [layer.router.weight, *[t for _, t in _expert_tensors(layer)]]
        scores = expert_magnitude(tensors, p=2)
    elif isinstance(importance, RouterMassImportance):
        scores = importance.scores(layer.router)
    elif callable(importance):
        scores = torch.as_tensor(importance(layer), dtype=torch.float32)
    else:
        raise TypeError(f"importance={importance!r}: use 'magnitude', a RouterMassImportance or a callable layer -> scores")
    if scores.shape != (layer.num_experts,):
        raise ValueError(f"{layer.name}: the importance gave {tuple(scores.shape)} scores for {layer.num_experts} experts; "
                         "it must return one score per expert")
    return scores


def _expert_tensors(layer: MoeLayer) -> list[tuple[str, torch.Tensor]]:
    """The experts' own tensors with the experts along dim 0."""
    n = layer.num_experts
    tensors = [*layer.experts.named_parameters(recurse=False), *layer.experts.named_buffers(recurse=False)]
    return [(name, t) for name, t in tensors if t is not None and t.dim() and t.shape[0] == n]


def _router_tensors(layer: MoeLayer) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Every tensor of the router (and its submodules) with one entry per expert along dim 0."""
    n = layer.num_experts
    found = []
    for module in layer.router.modules():
        for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t is not None and t.dim() and t.shape[0] == n:
                found.append((module, name, t))
    return found


def prune_experts(model: nn.Module, ratio: float | None = None, *, remove: Mapping[str, Sequence[int]] | None = None,
                  importance: Any = "magnitude") -> ConfigStatus:
    """Remove whole experts from every MoE layer (``ratio`` of each, lowest ``importance`` first) or those in ``remove``.

    ``remove`` maps a layer's module name (``model.layers.0.mlp``) to the experts it loses. Returns what ``sync_config``
    found. Raises before anything changes when a layer would keep fewer experts than its router's top-k.
    """
    layers = _layers_or_error(model)
    if (ratio is None) == (remove is None):
        raise ValueError("prune_experts takes either ratio=... (a fraction of each layer's experts) or remove={layer: [experts]}")
    plan: dict[str, torch.Tensor] = {}
    if remove is not None:
        by_name = {layer.name: layer for layer in layers}
        unknown = sorted(set(remove) - set(by_name))
        if unknown:
            raise KeyError(f"prune_experts: {unknown} are not MoE layers of {type(model).__name__}; they are: {sorted(by_name)}")
        for name, idxs in remove.items():
            plan[name] = _checked_indices(by_name[name], idxs)
    else:
        _check_ratio(ratio)
        for layer in layers:
            cut = int(layer.num_experts * ratio)
            if cut:
                plan[layer.name] = torch.sort(torch.argsort(expert_scores(layer, importance))[:cut]).values
    for layer in layers:
        if layer.name in plan:
            _check_top_k(layer, len(plan[layer.name]))
    with _transaction(layers):
        for layer in layers:
            if layer.name in plan:
                _remove_experts(layer, plan[layer.name])
    return sync_config(model)


def prune_expert_widths(model: nn.Module, ratio: float, *, p: float = 2, round_to: int | None = None) -> ConfigStatus:
    """Remove ``ratio`` of every expert's hidden units, each expert its own lowest by weight p-norm; returns ``sync_config``'s answer.

    The width left is a multiple of ``round_to`` (fewer units go). By default that is what the fused grouped-mm
    kernel needs: rows of 16 bytes (4 float32 or 8 bfloat16 units); other widths make it fail at run time.
    """
    layers = _layers_or_error(model)
    _check_ratio(ratio)
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to={round_to!r}: use a positive whole number of units, or None for the kernel's 16 bytes")
    plan = {}
    for layer in layers:
        step = round_to or max(1, 16 // layer.experts.down_proj.element_size())
        kept = -(-(layer.width - int(layer.width * ratio)) // step) * step  # rounded up: never more than ratio goes
        cut = max(0, layer.width - kept)
        if cut:
            plan[layer.name] = torch.sort(torch.argsort(_unit_scores(layer, p), dim=1)[:, cut:], dim=1).values
    with _transaction(layers):
        for layer in layers:
            if layer.name in plan:
                _keep_units(layer, plan[layer.name])
    return sync_config(model)


def _layers_or_error(model: nn.Module) -> list[MoeLayer]:
    layers = moe_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no mixture-of-experts layer with fused experts (3-D down_proj and "
                         "gate_up_proj/up_proj next to a router weight [experts, hidden])")
    return layers


def _check_ratio(ratio: Any) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio={ratio!r}: use a fraction in [0, 1), e.g. 0.25")


def _checked_indices(layer: MoeLayer, idxs: Sequence[int]) -> torch.Tensor:
    index = torch.as_tensor(list(idxs), dtype=torch.long)
    n = layer.num_experts
    bad = [int(i) for i in index if not 0 <= i < n]
    if bad:
        raise IndexError(f"{layer.name}: experts {bad} are out of range; it has {n} experts (0..{n - 1})")
    if torch.unique(index).numel() != index.numel():
        raise ValueError(f"{layer.name}: experts {index.tolist()} list one expert twice; pass each once")
    return torch.sort(index).values


def _check_top_k(layer: MoeLayer, cut: int) -> None:
    left = layer.num_experts - cut
    top_k = layer.top_k
    if left < 1 or (top_k is not None and left < top_k):
        raise ValueError(f"{layer.name}: removing {cut} of {layer.num_experts} experts leaves {left}, fewer than the router's "
                         f"top-k (num_experts_per_tok={top_k}); remove at most {layer.num_experts - max(top_k or 1, 1)}, "
                         "or lower num_experts_per_tok first")


def _remove_experts(layer: MoeLayer, idxs: torch.Tensor) -> None:
    n = layer.num_experts
    keep = torch.ones(n, dtype=torch.bool)
    keep[idxs] = False
    kept = keep.nonzero().flatten()
    owned = [(module, name) for module, name, _ in _router_tensors(layer)] + [(layer.experts, n) for n, _ in _expert_tensors(layer)]
    for module, name in owned:  # listed before any changes: the count of experts is read from the router
        select_(module, name, 0, kept)
    for module in (layer.block, layer.router, layer.experts):
        _set_counts(module, n, len(kept), "expert")


def _unit_scores(layer: MoeLayer, p: float) -> torch.Tensor:
    """Per expert and hidden unit ([E, I]), the p-norm of the weights that unit owns (its gate, up and down entries)."""
    width = layer.width
    total = torch.zeros(layer.num_experts, width, dtype=torch.float64)
    for name, dim in layer.width_dims.items():
        t = getattr(layer.experts, name).detach().double().abs().pow(p)
        per_row = t.movedim(dim, 1).reshape(t.shape[0], t.shape[dim], -1).sum(-1)  # [E, rows of that dim]
        total += _per_unit(layer, name, per_row, width)
    return total.pow(1.0 / p)


def _per_unit(layer: MoeLayer, name: str, rows: torch.Tensor, width: int) -> torch.Tensor:
    """Fold the rows of a fused tensor onto the hidden units they belong to (a fused gate/up has two rows per unit)."""
    if rows.shape[1] == width:
        return rows
    if getattr(layer.experts, "is_concatenated", True):
        return rows[:, :width] + rows[:, width:]
    return rows[:, 0::2] + rows[:, 1::2]


def _unit_rows(layer: MoeLayer, name: str, keep: torch.Tensor, size: int) -> torch.Tensor:
    """The rows (along the width dim) of tensor ``name`` that ``keep`` (kept units per expert, [E, k]) retain."""
    width = layer.width
    if size == width:
        return keep
    if getattr(layer.experts, "is_concatenated", True):
        return torch.cat([keep, keep + width], dim=1)
    return torch.stack([2 * keep, 2 * keep + 1], dim=2).reshape(keep.shape[0], -1)


def _keep_units(layer: MoeLayer, keep: torch.Tensor) -> None:
    old = layer.width
    for name, dim in layer.width_dims.items():
        tensor = getattr(layer.experts, name)
        rows = _unit_rows(layer, name, keep, tensor.shape[dim]).to(tensor.device)
        shape = [1] * tensor.dim()
        shape[0], shape[dim] = rows.shape
        index = rows.view(shape).expand(*[rows.shape[1] if d == dim else s for d, s in enumerate(tensor.shape)])
        tensor.data = torch.gather(tensor.data, dim, index).contiguous()
        if tensor.grad is not None:
            tensor.grad = torch.gather(tensor.grad, dim, index).contiguous()
    _set_counts(layer.experts, old, keep.shape[1], "intermediate")


def _set_counts(module: nn.Module, old: int, new: int, word: str) -> None:
    """Integer attributes of ``module`` named for ``word`` (``num_experts``, ``intermediate_dim``) that held ``old`` now hold ``new``."""
    for key, value in list(vars(module).items()):
        if type(value) is int and value == old and word in key and not key.startswith("_"):
            setattr(module, key, new)


class _transaction:
    """Restore every tensor (data and grad) and stored count of the layers' modules if the block raises."""

    def __init__(self, layers: Iterable[MoeLayer]):
        self.modules = [m for layer in layers for top in (layer.block, layer.router, layer.experts) for m in top.modules()]

    def __enter__(self) -> None:
        self.saved = [(m, dict(m._buffers), [(p, p.data, p.grad) for p in m._parameters.values() if p is not None],
                       {k: v for k, v in vars(m).items() if type(v) is int}) for m in self.modules]

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if kind is None:
            return False
        for module, buffers, params, counts in self.saved:
            module._buffers.update(buffers)
            for param, data, grad in params:
                param.data, param.grad = data, grad
            for key, value in counts.items():
                setattr(module, key, value)
        return False


# --- through the dependency graph ------------------------------------------------------------------------------
# The router is a layer whose output channels are the experts (its weight rows) and whose input channels the hidden
# size. The fused experts are a layer whose output channels are the hidden units of every expert (unit u goes from
# every expert at once, as the fused layout needs) and whose inputs and outputs both carry the hidden size; their
# expert dimension is a raw-parameter space per fused tensor, which a module hint couples with the router's rows.


def _count(module: nn.Module) -> int | None:
    for key in ("top_k", "num_experts_per_tok"):
        value = getattr(module, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class ExpertRouterPruner(DeclarativeLayerPruner):
    """A router ``weight [experts, hidden]``: output channels are experts (its rows and any per-expert tensor), inputs the hidden size.

    Its first output is the logits (experts along the last dim); the scores and indices it also returns hold no
    channels: they follow the experts only through the module hint that couples the router with its experts.
    """

    tensors = (TensorDims("weight", out=0, in_=1),)
    out_attrs = ("num_experts",)
    in_attrs = ("hidden_dim",)
    output_dim = -1
    input_dim = -1
    acts_like = (ExpertRouter,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        n = int(layer.weight.shape[0])
        index = validate_idxs(layer, idxs, n, "expert")
        keep = keep_index(n, index)
        extra = [name for name, t in [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]
                 if name != "weight" and t is not None and t.dim() and t.shape[0] == n]
        super().prune_out_channels(layer, index.tolist())
        for name in extra:  # a bias or score correction per expert
            select_(layer, name, 0, keep)
        return layer

    def check_prune(self, layer: nn.Module, kind: str, idxs: Sequence[int]) -> str | None:
        if kind != "out":
            return None
        left, top_k = int(layer.weight.shape[0]) - len(idxs), _count(layer)
        if top_k is not None and left < top_k:
            return (f"removing {len(idxs)} of {layer.weight.shape[0]} experts leaves {left}, fewer than the router's top-k "
                    f"({top_k}); remove at most {int(layer.weight.shape[0]) - top_k}, or lower num_experts_per_tok first")
        return None


class FusedExpertsPruner(DeclarativeLayerPruner):
    """Fused experts (``gate_up_proj [E, 2I, H]``/``up_proj [E, I, H]``, ``down_proj [E, H, I]``): output channels are the I
    hidden units of each expert, unit u going from every expert at once; input channels the hidden size H, which the
    output carries too. The expert dimension is left to raw-parameter spaces (``parameter_spaces``) that a module hint
    couples with the router. Layers with ``is_transposed`` use ``TransposedExpertsPruner``.
    """

    transposed = False
    tensors = (TensorDims("down_proj", out=2, in_=1), TensorDims("gate_up_proj", in_=2), TensorDims("up_proj", in_=2),
               TensorDims("down_proj_bias", in_=1))
    out_attrs = ("intermediate_dim",)
    in_attrs = ("hidden_dim",)
    output_dim = -1
    input_dim = -1
    acts_like = (nn.Linear,)  # ranked and pruned wherever a Linear's width would be

    def _dims(self, layer: nn.Module) -> tuple[dict[str, int], dict[str, int]]:
        """Per fused tensor, the dim of each expert's hidden units, and the dim of the hidden size."""
        up, down = (2, 1) if self.transposed else (1, 2)
        width, hidden = {}, {}
        for name in ("gate_up_proj", "up_proj"):
            if _param(layer, name) is not None:
                width[name], hidden[name] = up, 3 - up
                if _param(layer, name + "_bias") is not None:
                    width[name + "_bias"] = 1
        width["down_proj"], hidden["down_proj"] = down, 3 - down
        if _param(layer, "down_proj_bias") is not None:
            hidden["down_proj_bias"] = 1
        return width, hidden

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.down_proj.shape[2 if not self.transposed else 1])

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.down_proj.shape[1 if not self.transposed else 2])

    def inner_channels(self, layer: nn.Module) -> int:
        return self.get_out_channels(layer)

    def parameter_spaces(self, layer: nn.Module) -> list[tuple[str, int]]:
        """Every own tensor with the experts along dim 0: the router's hint couples them with its rows."""
        n = int(layer.down_proj.shape[0])
        return [(name, 0) for name, t in layer.named_parameters(recurse=False) if t.dim() and t.shape[0] == n]

    def couplings(self, layer: nn.Module, n_out: int, n_in: int) -> list[Coupling]:
        """The hidden units go in runs of 16 bytes under the grouped-mm kernel, which fails on other row strides."""
        step = _kernel_step(layer)
        if step <= 1 or n_out % step:
            return []
        units = torch.arange(n_out).view(-1, step)
        a, b = units[:, :1].expand(-1, step - 1).reshape(-1), units[:, 1:].reshape(-1)
        return [Coupling("out", a, "out", b)]

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        width = self.get_out_channels(layer)
        index = validate_idxs(layer, idxs, width, "expert hidden unit")
        keep = keep_index(width, index)
        concatenated = bool(getattr(layer, "is_concatenated", True))
        for name, dim in self._dims(layer)[0].items():
            size = getattr(layer, name).shape[dim]
            rows = keep if size == width else torch.cat([keep, keep + width]) if concatenated else \
                torch.stack([2 * keep, 2 * keep + 1], 1).flatten()
            select_(layer, name, dim, rows)
        self._set_count(layer, self.out_attrs, len(keep))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        hidden = self.get_in_channels(layer)
        index = validate_idxs(layer, idxs, hidden, "hidden channel")
        keep = keep_index(hidden, index)
        for name, dim in self._dims(layer)[1].items():
            select_(layer, name, dim, keep)
        self._set_count(layer, self.in_attrs, len(keep))
        return layer


class TransposedExpertsPruner(FusedExpertsPruner):
    """``FusedExpertsPruner`` for ``is_transposed`` experts: ``gate_up_proj [E, H, 2I]``, ``down_proj [E, I, H]``."""

    transposed = True
    tensors = (TensorDims("down_proj", out=1, in_=2), TensorDims("gate_up_proj", in_=1), TensorDims("up_proj", in_=1),
               TensorDims("down_proj_bias", in_=1))


def _kernel_step(layer: nn.Module) -> int:
    """Units per 16 bytes when the layer runs the grouped-mm kernel (rows of other strides fail there), else 1."""
    config = getattr(layer, "config", None)
    if getattr(config, "_experts_implementation", None) != "grouped_mm":
        return 1
    return max(1, 16 // layer.down_proj.element_size())


def fused_experts(model: nn.Module, transposed: bool = False) -> list[nn.Module]:
    """The fused experts modules of ``model``'s MoE layers (only those with ``is_transposed`` when ``transposed``)."""
    return [layer.experts for layer in moe_layers(model) if bool(getattr(layer.experts, "is_transposed", False)) == transposed]


def moe_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules holding a router and its fused experts."""
    return [layer.block for layer in moe_layers(model)]


def couple_router_and_experts(block: nn.Module, hints: Any) -> None:
    """Module hint: the router's rows (its output channels) and the expert dimension of every fused tensor go together."""
    for layer in moe_layers(block):
        if layer.block is not block:
            continue
        reason = f"the router of {type(block).__name__} picks its experts by index"
        for name, _ in _expert_tensors(layer):
            tensor = getattr(layer.experts, name)
            if isinstance(tensor, nn.Parameter):
                hints.couple(layer.router, "out", tensor, "out", reason)


_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "n_experts")


def follow_expert_counts(model: nn.Module) -> None:
    """Fix-up: the expert counts the experts and their block store follow the router's rows (the experts' slices are
    pruned as raw parameters, which know no counts)."""
    for layer in moe_layers(model):
        n = layer.num_experts
        for module in (layer.block, layer.experts):
            for key in _EXPERT_COUNTS:
                value = vars(module).get(key)
                if type(value) is int and value != n:
                    setattr(module, key, n)
