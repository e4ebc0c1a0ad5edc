"""Methods: one module each, registered by name in ``METHODS``."""

from contrastlab.core.registry import Registry

METHODS: Registry = Registry("method")

from contrastlab.methods import barlow_twins, byol, invclr, metamask, metaug, metaug_lab, moco, simclr  # noqa: E402,F401  (registers)

__all__ = ["METHODS"]
