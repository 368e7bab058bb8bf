"""The dependency model: nodes and their channel spaces, couplings, dependencies, groups, and the prune transaction."""
from .dependency import Dependency, GroupItem, IndexMapping, Member, PruneRecord, function_name
from .dependency_graph import ChannelTie, DependencyGraph, KeptWhole, ModuleHints, channel_kind
from .group import Group
from .node import Node, Space
from .transaction import Transaction

__all__ = ["ChannelTie", "Dependency", "DependencyGraph", "KeptWhole", "Group", "GroupItem", "IndexMapping", "Member", "ModuleHints", "Node",
           "PruneRecord", "Space", "Transaction", "channel_kind", "function_name"]
