"""``DATASETS``: name -> loader. Each loader module registers itself here (``data/__init__``
imports them all), with the signature
``load(split: str, root: str | None = None, size: int | None = None, seed: int = 0) -> ImageData``.
"""

from contrastlab.core.registry import Registry

DATASETS: Registry = Registry("dataset")
