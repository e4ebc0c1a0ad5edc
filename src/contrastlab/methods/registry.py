"""``METHODS``: name -> :class:`~contrastlab.methods.base.Method` subclass. Each method module
registers its class here (``methods/__init__`` imports them all)."""

from contrastlab.core.config import ConfigError, MethodConfig
from contrastlab.core.registry import Registry

METHODS: Registry = Registry("method")


def encoder_prefix(method: MethodConfig, encoder: str, key: str = "eval.encoder") -> str:
    """The state-dict prefix of the ``encoder`` backbone of the method configured as ``method``
    (``student``, or ``teacher`` where it has an EMA teacher: its ``eval_encoders``); a
    ``ConfigError`` naming ``key`` and the choices for an encoder it does not have."""
    encoders = METHODS.get(method.name).eval_encoders(method)
    if encoder not in encoders:
        raise ConfigError(f"{key}: method '{method.name}' has no '{encoder}' encoder; choose {' or '.join(encoders)}")
    return encoders[encoder]
