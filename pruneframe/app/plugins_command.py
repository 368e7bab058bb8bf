"""``pruneframe plugins``: every installed plugin as JSON, framework plugins listed from their metadata unless ``--load``.

A plugin for a framework (torchvision, timm, transformers) is imported only once that framework is in use, and
importing it imports the framework (seconds). By default such plugins are listed from their entry points, with
``"loaded": false``, the frameworks they wait for and a note; ``--load`` imports them and lists what they serve.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def listing(load: bool) -> list[dict[str, Any]]:
    """What ``pruneframe plugins`` prints: one dict per plugin, each saying whether it was loaded."""
    from ..registry import PluginSet, build_registry

    if load:
        described = build_registry().describe(failures=True)
        deferred = []
    else:
        plugins = PluginSet(lazy=True)
        described = plugins.registry().describe(failures=True)
        deferred = plugins.deferred
    for plugin in deferred:
        frameworks = ", ".join(plugin.frameworks)
        described.append({
            "name": plugin.name, "distribution": plugin.distribution, "version": plugin.version, "module": plugin.source,
            "builtin": plugin.builtin, "loaded": False, "frameworks": list(plugin.frameworks),
            "note": f"not loaded: it is imported once {frameworks} is in use; `pruneframe plugins --load` lists what it serves",
        })
    return described


def run(args: argparse.Namespace) -> int:
    json.dump(listing(args.load), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


__all__ = ["listing", "run"]
