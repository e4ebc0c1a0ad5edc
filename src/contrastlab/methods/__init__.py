"""Methods: one module each, registered by name in ``METHODS``."""

from contrastlab.methods.registry import METHODS

# Importing the method modules registers them.
from contrastlab.methods import auccl, barlow_twins, byol, graphcl, halp, invclr, isd, metamask, metaug, metaug_lab, moco, simclr  # noqa: F401

__all__ = ["METHODS"]
