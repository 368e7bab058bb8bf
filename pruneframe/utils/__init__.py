"""Utilities, as Torch-Pruning's ``tp.utils`` has them, one job per module.

- ``op_counter``: ``count_ops_and_params`` (MACs and parameters), ``count_params``
- ``benchmark``: ``measure_latency``, ``measure_fps``, ``measure_throughput``, ``measure_memory``
- ``printing``: ``print_tool`` (a model's printout before and after pruning)
- ``nested``: ``flatten_as_list`` (the leaves of a nested output)
- ``drawing``: ``draw_computational_graph``, ``draw_dependency_graph``, ``draw_groups`` (need matplotlib)
"""
from __future__ import annotations

from . import benchmark, op_counter
from .drawing import draw_computational_graph, draw_dependency_graph, draw_groups
from .nested import flatten_as_list
from .op_counter import count_ops_and_params, count_params
from .printing import print_tool

__all__ = ["benchmark", "count_ops_and_params", "count_params", "draw_computational_graph", "draw_dependency_graph",
           "draw_groups", "flatten_as_list", "op_counter", "print_tool"]
