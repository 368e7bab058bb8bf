"""Speed and memory of a model: ``measure_latency``, ``measure_fps``, ``measure_throughput``, ``measure_memory``.

Torch-Pruning's ``tp.utils.benchmark``, on any device: the device is the one
the model's parameters are on. Each run is ``run_fn(model, example_inputs)``
if given (e.g. a forward and backward pass), else the model called on the
inputs the way every pruneframe function calls it (a tuple or list as
positional inputs, a dict as keyword inputs). The model runs in eval mode and
gets its training flags back afterwards; the caller's grad mode applies
(wrap the call in ``torch.no_grad()`` to time inference).

Example::

    mean_ms, std_ms = tp.utils.benchmark.measure_latency(model, torch.randn(8, 3, 224, 224), repeat=50, warmup=5)
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..runtime import default_forward, tensors_in

RunFn = Callable[[nn.Module, Any], Any]
_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _device_of(model: nn.Module, example_inputs: Any) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers(), *tensors_in(example_inputs)]:
        return tensor.device
    return torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``: timings must cover the work, not only its launch."""
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    if backend is not None and hasattr(backend, "synchronize") and device.type in ("cuda", "xpu"):
        backend.synchronize(device)
    elif backend is not None and hasattr(backend, "synchronize"):
        backend.synchronize()  # mps and others: one device, no argument
    elif hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


def _check(model: Any, repeat: int, warmup: int, run_fn: RunFn | None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"benchmarks take a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise ValueError(f"repeat={repeat!r}: it must be an int >= 1 (the number of timed runs)")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup={warmup!r}: it must be an int >= 0 (the number of untimed runs first)")
    if run_fn is not None and not callable(run_fn):
        raise TypeError(f"run_fn must be a callable run_fn(model, example_inputs), got {type(run_fn).__name__}")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside, its own training flag back afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _runner(model: nn.Module, example_inputs: Any, run_fn: RunFn | None) -> Callable[[], Any]:
    if run_fn is not None:
        return lambda: run_fn(model, example_inputs)
    return lambda: default_forward(model, example_inputs)


def measure_latency(model: nn.Module, example_inputs: Any, repeat: int = 300, warmup: int = 50,
                    run_fn: RunFn | None = None) -> tuple[float, float]:
    """``(mean, std)`` of the time of one run in milliseconds, over ``repeat`` runs after ``warmup`` untimed ones.

    The std is 0.0 for a single run.
    """
    _check(model, repeat, warmup, run_fn)
    device = _device_of(model, example_inputs)
    if device.type == "meta":
        raise ValueError("the model is on the meta device, which computes nothing: there is no time to measure")
    run = _runner(model, example_inputs, run_fn)
    times = []
    with _eval_mode(model):
        for _ in range(warmup):
            run()
        for _ in range(repeat):
            _synchronize(device)
            start = time.perf_counter()
            run()
            _synchronize(device)
            times.append((time.perf_counter() - start) * 1000.0)
    mean = sum(times) / len(times)
    std = math.sqrt(sum((t - mean) ** 2 for t in times) / (len(times) - 1)) if len(times) > 1 else 0.0
    return mean, std


def measure_fps(model: nn.Module, example_inputs: Any, repeat: int = 300, warmup: int = 50,
                run_fn: RunFn | None = None) -> float:
    """Runs per second: ``1000 / mean latency in ms`` (frames per second when the inputs are one frame)."""
    mean_ms, _ = measure_latency(model, example_inputs, repeat=repeat, warmup=warmup, run_fn=run_fn)
    return 1000.0 / mean_ms


def measure_throughput(model: nn.Module, example_inputs: Any, repeat: int = 300, warmup: int = 50,
                       run_fn: RunFn | None = None) -> float:
    """Samples per second: the batch size (dim 0 of the first input tensor) divided by the mean latency in seconds."""
    tensors = [t for t in tensors_in(example_inputs) if t.dim() > 0]
    if not tensors:
        raise ValueError("measure_throughput reads the batch size from dim 0 of the first input tensor, but example_inputs "
                         "holds no tensor with a dim 0; use measure_fps for runs per second")
    mean_ms, _ = measure_latency(model, example_inputs, repeat=repeat, warmup=warmup, run_fn=run_fn)
    return tensors[0].shape[0] / (mean_ms / 1000.0)


def measure_memory(model: nn.Module, example_inputs: Any, device: Any = None, run_fn: RunFn | None = None) -> int:
    """The peak memory of one run, in bytes.

    On a CUDA (or other accelerator) device: the allocator's peak of allocated memory during the run, as
    ``torch.cuda.max_memory_allocated`` counts it (the model's weights and everything else allocated on the device
    included). On the CPU, where torch keeps no such statistic: the process's peak resident memory during the
    run (Linux only), which also includes the interpreter, the libraries and the model.
    """
    _check(model, 1, 0, run_fn)
    device = torch.device(device) if device is not None else _device_of(model, example_inputs)
    run = _runner(model, example_inputs, run_fn)
    if device.type == "meta":
        raise ValueError("the model is on the meta device, which allocates nothing: there is no memory to measure")
    with _eval_mode(model):
        if device.type == "cpu":
            return _peak_resident_bytes(run)
        backend = getattr(torch, device.type, None)
        if backend is not None and hasattr(backend, "reset_peak_memory_stats") and hasattr(backend, "max_memory_allocated"):
            backend.reset_peak_memory_stats(device)
            run()
            _synchronize(device)
            return int(backend.max_memory_allocated(device))
        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None and hasattr(accelerator, "max_memory_allocated"):
            accelerator.reset_peak_memory_stats(device)
            run()
            _synchronize(device)
            return int(accelerator.max_memory_allocated(device))
    raise RuntimeError(f"torch keeps no peak-memory statistic for {device.type} devices; measure on a CUDA device or the CPU")


def _peak_resident_bytes(run: Callable[[], Any]) -> int:
    """Run once and return the process's peak resident set size during the run (Linux: reset, then read VmHWM)."""
    if not (os.path.exists(_CLEAR_REFS) and os.path.exists(_STATUS)):
        raise RuntimeError("measure_memory on the CPU reads the process's peak resident memory from /proc, which this "
                           "system does not have; measure on a CUDA device instead")
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")  # resets the peak resident set size to the current one
    except OSError as exc:
        raise RuntimeError(f"measure_memory on the CPU could not reset the peak resident memory ({exc}); "
                           "measure on a CUDA device instead") from exc
    run()
    with open(_STATUS) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("measure_memory found no VmHWM line in /proc/self/status; measure on a CUDA device instead")


__all__ = ["measure_fps", "measure_latency", "measure_memory", "measure_throughput"]
