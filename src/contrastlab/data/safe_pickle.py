"""Pickle files read without running code from them.

Unpickling can call any importable function, so a crafted file runs code the moment it is
loaded with ``pickle.load``. :func:`load_pickle` builds only plain data (numbers, strings,
bytes, lists, tuples, dicts, sets; these need no global) and, when ``numpy=True``, numpy
arrays, dtypes and scalars; any other global a file asks for is refused with a
:class:`~contrastlab.data.base.DataError` naming the file and the global, before anything runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from contrastlab.data.base import DataError

PLAIN_GLOBALS = frozenset({("_codecs", "encode")})  # bytes in protocol 0-2 pickles written by Python 3
NUMPY_GLOBALS = frozenset(
    (package + module, name)
    for package in ("numpy.core.", "numpy._core.")  # numpy 1 and numpy 2 module names
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed: frozenset[tuple[str, str]], encoding: str) -> None:  # noqa: ANN001
        super().__init__(file, encoding=encoding)
        self.allowed = allowed

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.allowed:
            raise RefusedGlobal(module, name)
        return super().find_class(module, name)


def load_pickle(path: Path, what: str, *, numpy: bool = False, encoding: str = "bytes") -> object:
    """The object pickled in ``path``, a ``what`` file (named in errors), built only from plain
    data (and numpy arrays when ``numpy``). ``encoding``: how Python 2 ``str`` objects are read
    (``"bytes"`` keeps them as bytes, as CIFAR's batches need)."""
    allowed = PLAIN_GLOBALS | (NUMPY_GLOBALS if numpy else frozenset())
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, allowed, encoding).load()
    except RefusedGlobal as err:
        holds = "plain data and numpy arrays" if numpy else "plain data (numbers, strings, lists, dicts)"
        raise DataError(f"{path}: refused to load: the pickle asks for {err.module}.{err.name}, but a {what} "
                        f"holds only {holds}; pickles can run code, so nothing else is loaded") from None
    except Exception as err:  # a damaged pickle can fail with almost any exception type
        raise DataError(f"{path}: not a readable {what} pickle ({type(err).__name__}: {err})") from None
