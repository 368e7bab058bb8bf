"""The plugin manager's old import path: everything lives in ``pruneframe.registry`` now."""
from .registry import *  # noqa: F401,F403 - re-exported
from .registry import __all__  # noqa: F401
