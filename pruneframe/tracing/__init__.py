"""Tracing: one forward pass records which channels are coupled.

- ``labels``: channel labels, the int64 tensors that say which channel each element of a traced tensor belongs to;
- ``context``: ``OpContext``, what an op handler (a plugin) may read and write;
- ``recorder``: the dispatch mode and leaf hooks that build a ``TraceResult``;
- ``trace``: leaf discovery and the traced pass itself.
"""
from ..runtime import tensors_in
from . import labels
from .context import OpContext
from .recorder import NeedsRealValues, Recorder, TraceResult
from .trace import ENV_TRACE, find_leaves, raw_parameters, trace

__all__ = ["ENV_TRACE", "NeedsRealValues", "OpContext", "Recorder", "TraceResult", "find_leaves", "labels", "raw_parameters",
           "tensors_in", "trace"]
