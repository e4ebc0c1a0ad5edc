"""contrastlab: contrastive self-supervised representation learning in PyTorch.

The public API (imported on first use, so that ``import contrastlab`` stays light):
:func:`train`, :func:`evaluate`, :func:`build_method` and :class:`Run` from
:mod:`contrastlab.api`; :func:`load_backbone` from :mod:`contrastlab.export`. The losses are in
:mod:`contrastlab.losses` (functions and ``nn.Module``s), the backbones in :mod:`contrastlab.models`.
"""

__version__ = "0.1.0"

__all__ = ["Run", "build_method", "evaluate", "load_backbone", "train"]


def __getattr__(name: str):  # noqa: ANN202 - the public API, imported on first use
    if name in ("Run", "build_method", "evaluate", "train"):
        from contrastlab import api

        return getattr(api, name)
    if name == "load_backbone":
        from contrastlab.export import load_backbone

        return load_backbone
    raise AttributeError(f"module 'contrastlab' has no attribute '{name}'")
