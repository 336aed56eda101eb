"""Hydra plugins shipped with distillery (found by Hydra through the ``hydra_plugins`` namespace package)."""
