"""Running a model once and leaving it exactly as it was: the one place pruneframe runs a user's model.

``model_run(model, example_inputs, shapes_only=...)`` is a context manager:
inside it the model is ready to run on the inputs it yields, either on fake
tensors (shapes only: no arithmetic, no memory for activations) or on the real
ones; on leaving, every module's attributes (training flags, whatever a
forward stored on itself), the buffers (a forward writes into copies, never
into the model's own), the CPU and CUDA random number generators and the
grad mode are as they were. Inside, gradients are off, cyclic garbage
collection is paused, a shapes-only run uses one thread, and inference mode
is off (under it torch dispatches some composite ops undecomposed, so a trace
would see other ops).

Example::

    with model_run(model, torch.randn(1, 3, 224, 224), shapes_only=True) as run:
        out = default_forward(model, run.inputs)   # fake tensors: out.shape is real, its values are not
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from typing import Any, Callable, Iterator

import attrs
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import tree_flatten

Forward = Callable[[nn.Module, Any], Any]
_SCALARS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


def default_forward(model: nn.Module, example_inputs: Any) -> Any:
    """Torch-Pruning's convention: a dict is keyword inputs, a tuple or list positional ones."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """The tensors in a nested structure of tuples, lists and dicts (or other pytrees), in order."""
    found: list[torch.Tensor] = []
    _collect_tensors(obj, found)
    return found


def _collect_tensors(obj: Any, found: list[torch.Tensor]) -> None:
    # the common containers by hand: this runs for every traced op, and tree_flatten is several times slower
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            if isinstance(x, torch.Tensor):
                found.append(x)
            elif not isinstance(x, _SCALARS):
                _collect_tensors(x, found)
    elif isinstance(obj, dict) and type(obj) is dict:
        for x in obj.values():
            _collect_tensors(x, found)
    elif not isinstance(obj, _SCALARS):
        leaves, _ = tree_flatten(obj)  # other registered pytrees (e.g. a model's output dataclass)
        if not (len(leaves) == 1 and leaves[0] is obj):
            for x in leaves:
                _collect_tensors(x, found)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in its tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(x, fn) for x in obj)
    if isinstance(obj, dict):
        return type(obj)((k, map_tensors(v, fn)) for k, v in obj.items())
    return obj


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread: label arithmetic and fake tensors are thousands of tiny ops, and waking a thread
    pool for each costs more than the op (badly so on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: a trace allocates many short-lived objects, and in a process that
    holds a large model the full collections they trigger cost more than the trace (about 0.2 s of a 0.65 s first
    ResNet-50 build). Reference counting still frees everything acyclic; the collector's state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_frozen_depth = 0


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """Garbage collections triggered meanwhile skip every object that existed before (the libraries, the model).

    A graph build or a prune step allocates enough to trigger a full
    collection, which in a process holding torch, a model zoo and a model scans
    hundreds of thousands of objects none of which is garbage (0.17 s of a
    ResNet-50 prune). ``gc.freeze`` moves them out of the collector's view
    until the block ends; nothing is left uncollected, and nested blocks
    unfreeze once, at the outermost.
    """
    global _frozen_depth
    if _frozen_depth == 0:
        gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()


def return_freed_memory() -> None:
    """Hand the memory freed so far back to the system, where the C library keeps it otherwise (glibc's heap).

    A trace frees many mid-sized tensors (labels, edge pieces) that glibc keeps
    for reuse rather than returning; on a 70B-shaped graph that is some 600 MB
    the next stage then adds to. Elsewhere (other C libraries, other systems)
    this does nothing.
    """
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to call
            _trim = False
    if _trim:
        _trim(0)


_trim: Any = None


@contextlib.contextmanager
def left_as_it_was(model: nn.Module) -> Iterator[None]:
    """Put back every module's attributes (training flags, anything its forward stored), the RNG states and grad mode."""
    saved = []
    for module in model.modules():
        inner = {key: dict(value) for key, value in vars(module).items() if key in ("_parameters", "_buffers", "_modules")}
        saved.append((module, dict(vars(module)), inner))
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    grad = torch.is_grad_enabled()
    try:
        yield
    finally:
        for module, attributes, inner in saved:
            state = vars(module)
            state.clear()
            state.update(attributes)
            for key, entries in inner.items():  # the same dict objects, with their old entries
                state[key].clear()
                state[key].update(entries)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        torch.set_grad_enabled(grad)


class _DropFakeFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("failed while attempting to run meta")


@contextlib.contextmanager
def _fake_failures_unlogged() -> Iterator[None]:
    """FakeTensorMode logs a traceback when an op fails on fake tensors; a caller that falls back to real tensors
    handles that failure, so the log would only alarm."""
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    quiet = _DropFakeFailures()
    fake_log.addFilter(quiet)
    try:
        yield
    finally:
        fake_log.removeFilter(quiet)


@attrs.define
class Run:
    """What a run inside ``model_run`` uses: the inputs to pass, and for fake tensors the real tensor each stands for."""

    inputs: Any
    shapes_only: bool
    fake_of_name: dict[str, torch.Tensor] = attrs.Factory(dict)  # parameter/buffer name -> its fake tensor
    real_of: dict[int, torch.Tensor] = attrs.Factory(dict)  # id of a fake tensor -> the real tensor it stands for


def named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of ``model`` under every name it has (a tied weight appears once per name)."""
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


@contextlib.contextmanager
def model_run(model: nn.Module, example_inputs: Any, shapes_only: bool, eval_mode: bool = False) -> Iterator[Run]:
    """Inside: ``model`` ready to run on ``run.inputs``; afterwards, the model exactly as it was (see the module doc).

    ``eval_mode`` sets every module's training flag to False for the run (directly: a module's own ``train()``
    may do more than flip the flag).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(left_as_it_was(model))
        stack.enter_context(gc_paused())
        # the same ops whatever mode the caller is in: inference mode dispatches composites (flatten) undecomposed
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.no_grad())
        if eval_mode:
            for module in model.modules():
                module.training = False
        if shapes_only:
            stack.enter_context(single_threaded())
            fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
            run = Run(None, True)
            for name, t in named_tensors(model):
                fake = fake_mode.from_tensor(t)  # memoised: a weight tied under two names stays one fake tensor
                run.fake_of_name[name] = fake
                run.real_of[id(fake)] = t
            run.inputs = map_tensors(example_inputs, fake_mode.from_tensor)
            for t_real, t_fake in zip(tensors_in(example_inputs), tensors_in(run.inputs)):
                run.real_of[id(t_fake)] = t_real
            stack.enter_context(_reparametrize_module(model, run.fake_of_name, tie_weights=True, strict=False))
            stack.enter_context(_fake_failures_unlogged())
            stack.enter_context(fake_mode)
        else:
            # the forward pass writes (if at all) into copies of the buffers, never into the model's own
            clones: dict[int, torch.Tensor] = {}  # one copy per buffer, however many names it has
            copies = {}
            for name, buffer in model.named_buffers(remove_duplicate=False):
                if id(buffer) not in clones:
                    clones[id(buffer)] = buffer.detach().clone()
                copies[name] = clones[id(buffer)]
            stack.enter_context(_reparametrize_module(model, copies, tie_weights=True, strict=False))
            run = Run(example_inputs, False)
        yield run


def runs(model: nn.Module, example_inputs: Any, forward_fn: Forward | None, shapes_only: bool,
         eval_mode: bool = False) -> str | None:
    """Whether ``model`` still runs on ``example_inputs``: None if it does, else what went wrong. The model is left as it was."""
    forward = forward_fn or default_forward
    try:
        with model_run(model, example_inputs, shapes_only, eval_mode=eval_mode) as run:
            forward(model, run.inputs)
    except Exception as exc:  # whatever the model's own code raises is the answer, reported to the caller
        return f"{type(exc).__name__}: {exc}"
    return None


def describe_inputs(inputs: Any) -> str:
    """A short account of example_inputs for an error message: types and shapes, never values."""
    if isinstance(inputs, torch.Tensor):
        return f"Tensor{tuple(inputs.shape)}"
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{key!r}: {describe_inputs(value)}" for key, value in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        inner = ", ".join(describe_inputs(x) for x in inputs)
        return f"[{inner}]" if isinstance(inputs, list) else f"({inner}{',' if len(inputs) == 1 else ''})"
    if isinstance(inputs, (int, float, bool, str, type(None))):
        return repr(inputs)
    return type(inputs).__name__


def inputs_hint(inputs: Any) -> str:
    """What to pass instead, for an error about example_inputs."""
    if isinstance(inputs, (tuple, list, torch.Size)) and inputs and all(isinstance(x, int) for x in inputs):
        return f"example_inputs looks like a shape: pass a tensor of that shape instead, e.g. torch.randn{tuple(inputs)}."
    return ("Pass inputs the model accepts: a tensor, a tuple or list of positional inputs, or a dict of keyword "
            "inputs — or a forward_fn(model, example_inputs) that calls the model.")


__all__ = ["Forward", "Run", "default_forward", "describe_inputs", "gc_paused", "heap_frozen", "inputs_hint", "left_as_it_was", "map_tensors", "model_run", "named_tensors",
           "runs", "single_threaded", "tensors_in"]
