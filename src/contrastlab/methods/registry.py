"""``METHODS``: name -> :class:`~contrastlab.methods.base.Method` subclass. Each method module
registers its class here (``methods/__init__`` imports them all)."""

from contrastlab.core.registry import Registry

METHODS: Registry = Registry("method")
