"""Exceptions and warnings pruneframe raises, each naming the bad value and the way out."""
from __future__ import annotations


class PruningError(RuntimeError):
    """A prune was refused or failed; the model was left exactly as it was."""


class ModelStopsRunningError(PruningError):
    """A prune was undone because the model no longer ran on the example inputs afterwards.

    The model's code fixes a size the prune would change (a literal in a ``view`` or ``split``,
    a stored head width); no trace can see such literals, so the graph checks by running the model.
    """


class UnloadableError(PruningError):
    """A prune was undone because the model's own save format could not state it, and loadable output was asked for.

    A fix-up (e.g. pruneframe-transformers' config sync) said why: BERT's config derives the head width from
    ``hidden_size / num_attention_heads``, so narrower heads cannot be written and ``from_pretrained`` would fail.
    """


class PluginLoadError(ImportError):
    """A plugin listed under the ``pruneframe.plugins`` entry-point group failed to load."""


class PluginLoadWarning(UserWarning):
    """A plugin failed to load and was skipped (set PRUNEFRAME_STRICT_PLUGINS=1 to make it an error)."""


class UnsupportedOpWarning(UserWarning):
    """The tracer met an op no handler understands; channels through it are not pruned."""


class MissingPluginWarning(UserWarning):
    """The model comes from a framework whose pruneframe plugin is not installed; the warning names what to install."""
