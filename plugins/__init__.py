"""First-party pruneframe plugins, discovered through the ``pruneframe.plugins`` entry-point group."""
