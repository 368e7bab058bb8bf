"""How one layer type loses channels: the base class of every layer pruner.

``BasePruningFunc`` (alias ``LayerPruner``) is the Torch-Pruning-compatible
base: subclasses implement ``prune_out_channels``, ``prune_in_channels``,
``get_out_channels`` and ``get_in_channels``. The tracer asks a pruner a few
more things (where the channels sit in the layer's inputs and outputs, which of
its channels are tied together); the defaults below suit most user layers.

``DeclarativeLayerPruner`` serves layers whose pruning a table can say: per
tensor, which dimension is the output and which the input channel, and which
attributes hold the sizes. The same table drives pruning, the equivalence
checker's masking and channel counting.

Example::

    class ScaleLayerPruner(DeclarativeLayerPruner):
        tensors = (TensorDims("scale", out=0),)
        out_attrs = ("features",)
        coupled = True
"""
from __future__ import annotations

import copy
from typing import Any, ClassVar, Sequence

import attrs
import torch
from torch import nn


@attrs.frozen
class ChannelDim:
    """Where a layer's channels sit in one of its input or output tensors.

    ``dim`` is the tensor dimension; along it the layer's channels appear
    ``repeat`` times in a row (a bidirectional RNN's output holds its hidden
    units twice). ``space`` says whose channels: an input normally carries the
    layer's input channels ("in"), but some carry its output channels ("out"),
    like an RNN's initial hidden state.
    """

    dim: int
    repeat: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    space: str = attrs.field(default="in", validator=attrs.validators.in_(("in", "out")))


@attrs.frozen
class Coupling:
    """Channels of one layer that must be pruned together.

    Channel ``a_idxs[k]`` of the layer's ``a_space`` ("in" or "out") is tied to
    channel ``b_idxs[k]`` of its ``b_space``.
    """

    a_space: str
    a_idxs: torch.Tensor
    b_space: str
    b_idxs: torch.Tensor


@attrs.frozen
class TensorDims:
    """One tensor of a layer and the dimensions that hold its channels."""

    name: str
    out: int | None = None
    in_: int | None = None


def _as_index(idxs: Sequence[int] | torch.Tensor) -> torch.Tensor:
    given = torch.as_tensor(list(idxs) if not isinstance(idxs, torch.Tensor) else idxs)
    if given.dtype == torch.bool or given.is_floating_point() or given.is_complex():
        raise TypeError(f"channel indices must be whole numbers (ints), not {given.flatten().tolist()[:5]} ({given.dtype}); "
                        "pass e.g. [0, 3, 7]")
    return given.to(torch.long).flatten()


def validate_idxs(layer: Any, idxs: Sequence[int], n: int, what: str) -> torch.Tensor:
    """Return ``idxs`` as a sorted index tensor, or raise naming what is wrong."""
    index = _as_index(idxs)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        bad = [int(i) for i in index if i < 0 or i >= n]
        raise IndexError(f"{what} indices {bad} are out of range for {type(layer).__name__} with {n} channels; use 0..{n - 1}")
    if torch.unique(index).numel() != index.numel():
        dup = sorted({int(i) for i in index if int((index == i).sum()) > 1})
        raise ValueError(f"{what} indices {dup} are given more than once for {type(layer).__name__}; pass each index once")
    return torch.sort(index).values


def keep_index(n: int, idxs: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """The positions in ``range(n)`` not listed in ``idxs``."""
    mask = torch.ones(n, dtype=torch.bool)
    mask[idxs] = False
    return mask.nonzero().flatten().to(device) if device is not None else mask.nonzero().flatten()


def select_(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Keep only ``keep`` along ``dim`` of ``module.<name>``, in place.

    Parameters keep their identity (optimizers and hooks still point at them);
    their ``.data`` and ``.grad`` shrink. Buffers are replaced.
    """
    tensor = getattr(module, name)
    if tensor is None:
        return
    keep = keep.to(tensor.device)
    if isinstance(tensor, nn.Parameter):
        tensor.data = tensor.data.index_select(dim, keep).contiguous()
        if tensor.grad is not None:
            tensor.grad = tensor.grad.index_select(dim, keep).contiguous()
    else:
        module._buffers[name] = tensor.index_select(dim, keep).contiguous()


def zero_(module: nn.Module, name: str, dim: int, idxs: torch.Tensor) -> None:
    """Zero the positions ``idxs`` along ``dim`` of ``module.<name>`` (the checker's masking)."""
    tensor = getattr(module, name)
    if tensor is None:
        return
    with torch.no_grad():
        tensor.index_fill_(dim, idxs.to(tensor.device), 0)


def counts_as(layer: Any, pruner: Any, types: tuple[type, ...]) -> bool:
    """Whether ``layer`` is one of ``types``, by its class or by what its pruner declares it ``acts_like``."""
    return isinstance(layer, types) or any(issubclass(t, types) for t in getattr(pruner, "acts_like", ()))


class BasePruningFunc:
    """Base class for pruning one layer type; subclass it for your own layers.

    Subclasses implement the four Torch-Pruning methods. The remaining methods
    have defaults that treat dimension 1 of the layer's first input and output
    as its channels, and tie input to output channels when
    ``prune_in_channels`` is the very same function as ``prune_out_channels``
    (a layer whose input and output width are one attribute).

    ``acts_like`` names the torch layer types this layer stands in for where
    pruneframe takes a list of layer types: MetaPruner's
    ``root_module_types`` and the importance criteria's ``target_types``. A
    plugin's linear layer with a transposed weight (GPT-2's ``Conv1D``) sets
    ``acts_like = (nn.Linear,)`` and is ranked and pruned wherever an
    ``nn.Linear`` would be, with no option to change.
    """

    acts_like: ClassVar[tuple[type, ...]] = ()
    pruning_dim: int = 1  # Torch-Pruning's constructor argument; kept for pruners that read it

    def __init__(self, pruning_dim: int = 1) -> None:
        self.pruning_dim = pruning_dim

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not implement prune_out_channels")

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not implement prune_in_channels")

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return None

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return None

    # --- Torch-Pruning's helpers, for pruners written against its API -------------
    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return int(getattr(layer, "groups", 1) or 1) if isinstance(layer, nn.modules.conv._ConvNd) else 1

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return self.get_out_channel_groups(layer)

    def check(self, layer: nn.Module, idxs: Sequence[int], to_output: bool) -> None:
        """Raise if ``idxs`` are not distinct channel indices of ``layer`` (outputs if ``to_output``, else inputs)."""
        n = self.get_out_channels(layer) if to_output else self.get_in_channels(layer)
        if isinstance(n, int):
            validate_idxs(layer, idxs, n, "output channel" if to_output else "input channel")

    def __call__(self, layer: nn.Module, idxs: Sequence[int], to_output: bool = True, inplace: bool = True,
                 dry_run: bool = False) -> nn.Module:
        """Prune ``layer`` alone (no coupled layer follows): its output channels ``idxs``, or with ``to_output=False`` its inputs.

        With ``inplace=False`` a deep copy is pruned and returned, ``layer`` stays as it is.
        """
        if dry_run:
            raise NotImplementedError("dry_run is not supported; use DependencyGraph.check_pruning_group to test a prune")
        idxs = sorted(int(i) for i in idxs)
        self.check(layer, idxs, to_output)
        if not inplace:
            layer = copy.deepcopy(layer)
        prune = self.prune_out_channels if to_output else self.prune_in_channels
        return prune(layer, idxs)

    def _prune_parameter_and_grad(self, weight: nn.Parameter, keep_idxs: Sequence[int], pruning_dim: int) -> nn.Parameter:
        """A new parameter holding only ``keep_idxs`` of ``weight`` along ``pruning_dim`` (its ``.grad`` likewise)."""
        keep = _as_index(keep_idxs).to(weight.device)
        pruned = nn.Parameter(weight.detach().index_select(pruning_dim, keep).contiguous(), requires_grad=weight.requires_grad)
        if weight.grad is not None:
            pruned.grad = weight.grad.index_select(pruning_dim, keep).contiguous()
        return pruned

    # --- what the tracer asks -------------------------------------------------
    def output_channel_dims(self, layer: nn.Module, outputs: Sequence[torch.Tensor]) -> list[ChannelDim | None]:
        """Where the output channels sit in each of the layer's output tensors (None: not there)."""
        dims: list[ChannelDim | None] = [None] * len(outputs)
        if outputs:
            dims[0] = ChannelDim(1 if outputs[0].dim() > 1 else 0)
        return dims

    def input_channel_dims(self, layer: nn.Module, inputs: Sequence[torch.Tensor]) -> list[ChannelDim | None]:
        """Where the input channels sit in each input tensor (None: an input that carries no channels).

        An input marked None whose values come from prunable channels blocks
        those channels: the layer cannot follow them.
        """
        dims: list[ChannelDim | None] = [None] * len(inputs)
        if inputs:
            dims[0] = ChannelDim(1 if inputs[0].dim() > 1 else 0)
        return dims

    def in_out_coupled(self, layer: nn.Module) -> bool:
        """True when pruning output channels also prunes the same input channels.

        The graph then executes only ``prune_out_channels`` for this layer.
        """
        cls = type(self)
        return getattr(cls, "prune_in_channels", None) is getattr(cls, "prune_out_channels", None)

    def couplings(self, layer: nn.Module, n_out: int, n_in: int) -> list[Coupling]:
        """Channels of this layer that must go together; by default input i with output i if coupled."""
        if self.in_out_coupled(layer) and n_out == n_in:
            r = torch.arange(n_out)
            return [Coupling("in", r, "out", r)]
        return []

    def check_prune(self, layer: nn.Module, kind: str, idxs: Sequence[int]) -> str | None:
        """Why removing ``kind`` ("out"/"in") channels ``idxs`` would be refused, or None if it would not.

        Called by ``DependencyGraph.check_pruning_group`` before anything
        changes, for constraints only the layer knows (equal group widths,
        whole attention heads).
        """
        return None

    # --- what the equivalence checker asks -------------------------------------
    def mask_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        """Zero, in an unpruned layer, the connections from input channels ``idxs``."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot mask input channels; implement mask_in_channels to check it with pruneframe.testing"
        )

    def mask_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        """Silence output channels ``idxs`` of an unpruned layer, and cut what it loses inside itself (e.g. recurrence).

        Consumers that are layers have their inputs masked too; this covers
        consumers that are ops (a contraction such as ``q @ k^T``, a sum).
        """


LayerPruner = BasePruningFunc


class DeclarativeLayerPruner(BasePruningFunc):
    """A layer pruner described by a table instead of code.

    Class attributes:
      tensors     -- TensorDims per parameter/buffer: its output- and input-channel dims
      out_attrs   -- attributes holding the number of output channels (reduced on pruning)
      in_attrs    -- attributes holding the number of input channels
      coupled     -- input and output channels are one (BatchNorm, LayerNorm, PReLU)
      output_dim  -- dimension of the channels in the layer's output (negative counts from the end)
      input_dim   -- dimension of the channels in the layer's first input
    """

    tensors: ClassVar[tuple[TensorDims, ...]] = ()
    out_attrs: ClassVar[tuple[str, ...]] = ()
    in_attrs: ClassVar[tuple[str, ...]] = ()
    coupled: ClassVar[bool] = False
    output_dim: ClassVar[int] = 1
    input_dim: ClassVar[int] = 1

    def _count(self, layer: nn.Module, attrs_: tuple[str, ...], dim_of: str) -> int | None:
        for attr in attrs_:
            value = getattr(layer, attr, None)
            if isinstance(value, int):
                return value
            if isinstance(value, (tuple, list)) and value and isinstance(value[0], int):
                return value[0]
        for spec in self.tensors:
            dim = getattr(spec, dim_of)
            tensor = getattr(layer, spec.name, None)
            if dim is not None and isinstance(tensor, torch.Tensor):
                return tensor.shape[dim]
        return None

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return self._count(layer, self.out_attrs, "out")

    def get_in_channels(self, layer: nn.Module) -> int | None:
        if self.coupled:
            return self.get_out_channels(layer)
        return self._count(layer, self.in_attrs, "in_")

    def _set_count(self, layer: nn.Module, attrs_: tuple[str, ...], new: int) -> None:
        for attr in attrs_:
            value = getattr(layer, attr, None)
            if isinstance(value, int):
                setattr(layer, attr, new)
            elif isinstance(value, (tuple, list)) and value:
                setattr(layer, attr, type(value)((new, *value[1:])))

    def _prune(self, layer: nn.Module, idxs: Sequence[int], kind: str) -> nn.Module:
        n = self.get_out_channels(layer) if kind == "out" else self.get_in_channels(layer)
        if n is None:
            raise ValueError(f"cannot tell how many {kind}put channels {type(layer).__name__} has")
        index = validate_idxs(layer, idxs, n, f"{kind}put channel")
        keep = keep_index(n, index)
        for spec in self.tensors:
            dims = [spec.out, spec.in_] if self.coupled else [spec.out if kind == "out" else spec.in_]
            for dim in dims:
                if dim is not None:
                    select_(layer, spec.name, dim, keep)
        if kind == "out" or self.coupled:
            self._set_count(layer, self.out_attrs, n - len(index))
        if kind == "in" or self.coupled:
            self._set_count(layer, self.in_attrs, n - len(index))
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return self._prune(layer, idxs, "out")

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return self._prune(layer, idxs, "out" if self.coupled else "in")

    def in_out_coupled(self, layer: nn.Module) -> bool:
        return self.coupled

    def output_channel_dims(self, layer: nn.Module, outputs: Sequence[torch.Tensor]) -> list[ChannelDim | None]:
        dims: list[ChannelDim | None] = [None] * len(outputs)
        if outputs:
            dims[0] = ChannelDim(self.output_dim if outputs[0].dim() > 1 or self.output_dim < 0 else 0)
        return dims

    def input_channel_dims(self, layer: nn.Module, inputs: Sequence[torch.Tensor]) -> list[ChannelDim | None]:
        dims: list[ChannelDim | None] = [None] * len(inputs)
        if inputs:
            dims[0] = ChannelDim(self.input_dim if inputs[0].dim() > 1 or self.input_dim < 0 else 0)
        return dims

    def mask_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        if self.coupled:
            return  # its output channels go too; their consumers are masked instead
        index = _as_index(idxs)
        for spec in self.tensors:
            if spec.in_ is not None:
                zero_(layer, spec.name, spec.in_, index)

    def mask_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        index = _as_index(idxs)
        for spec in self.tensors:
            if spec.out is not None and isinstance(getattr(layer, spec.name, None), nn.Parameter):
                zero_(layer, spec.name, spec.out, index)
