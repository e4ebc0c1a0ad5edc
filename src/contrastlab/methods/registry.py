"""``METHODS``: name -> :class:`~contrastlab.methods.base.Method` subclass. Each method module
registers its class here (``methods/__init__`` imports them all)."""

from contrastlab.core.config import ConfigError
from contrastlab.core.registry import Registry

METHODS: Registry = Registry("method")


def encoder_prefix(method: str, encoder: str, key: str = "eval.encoder") -> str:
    """The state-dict prefix of ``method``'s ``encoder`` backbone (``student``, or ``teacher``
    where it has an EMA teacher: its ``EVAL_ENCODERS``); a ``ConfigError`` naming ``key`` and the
    choices for an encoder it does not have."""
    encoders = METHODS.get(method).EVAL_ENCODERS
    if encoder not in encoders:
        raise ConfigError(f"{key}: method '{method}' has no '{encoder}' encoder; choose {' or '.join(encoders)}")
    return encoders[encoder]
