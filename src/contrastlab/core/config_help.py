"""The resolved config as commented YAML: every field's value, default, allowed values and help.

``contrastlab config RECIPE [overrides]`` prints :func:`describe`. Its output is itself a recipe
(the comments aside, it is the YAML that ``config.yaml`` holds), so it can be saved and edited.
A field's help is the comment on its line in the config dataclass (or the method's config class).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
import types
import typing
from typing import Any

import yaml

# A field line of a config dataclass: ``    name: type = default  # help``.
_FIELD = re.compile(r"^\s+([A-Za-z_]\w*)\s*:")


def field_help(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line in the source of ``cls`` and its bases, or the
    whole-line comments right above it (a base's help is kept where a subclass has none)."""
    help_text: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        lines, comments = source.splitlines(), _comments(source)
        names = {f.name for f in dataclasses.fields(klass)}
        for number, line in enumerate(lines, start=1):
            match = _FIELD.match(line)
            if not match or match.group(1) not in names:
                continue
            above = []  # a block of whole-line comments right above the field stands in for a trailing one
            while number - len(above) - 1 >= 1 and lines[number - len(above) - 2].lstrip().startswith("#"):
                above.insert(0, comments[number - len(above) - 1])
            text = comments.get(number) or " ".join(above)
            if text:
                help_text[match.group(1)] = text
    return help_text


def _comments(source: str) -> dict[int, str]:
    """Line number (1-based) -> the text of the comment that ends that line."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def allowed(hint: Any, rule: str | None) -> str:
    """The values a field of type ``hint`` with range ``rule`` takes, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [allowed(a, rule) for a in args if a is not type(None)]
        return " or ".join(options) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + " | ".join(str(a) for a in args)
    if origin is tuple:
        element = args[0] if args else Any
        return f"list of {allowed(element, rule)}"
    if origin is dict:
        return "mapping"
    names = {bool: "true/false", int: "integer", float: "number", str: "text"}
    word = names.get(hint, getattr(hint, "__name__", str(hint)))
    return f"{word} {rule}" if rule and hint in (int, float) else word


def _ranges(cls: type) -> dict[str, str]:
    ranges: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        ranges.update(vars(klass).get("RANGES", {}))
    return ranges


def _flow(value: Any) -> str:
    """``value`` as one line of YAML."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def describe_section(section: Any, name: str) -> list[str]:
    """The lines of one section: ``name:`` then one commented line per field."""
    cls = type(section)
    hints, ranges, help_text = typing.get_type_hints(cls), _ranges(cls), field_help(cls)
    lines = [f"{name}:"]
    rows = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        notes = [allowed(hints[f.name], ranges.get(f.name))]
        notes.append("(default)" if value == default else f"default: {_flow(default)}")
        if help_text.get(f.name):
            notes.append(help_text[f.name])
        rows.append((f"  {f.name}: {_flow(value)}", "; ".join(notes)))
    width = max(len(left) for left, _ in rows)
    lines += [f"{left:<{width}}  # {note}" for left, note in rows]
    return lines


def describe(cfg: Any) -> str:
    """Every section of ``cfg`` (a :class:`~contrastlab.core.config.Config`) as commented YAML."""
    lines: list[str] = []
    for f in dataclasses.fields(cfg):
        lines += describe_section(getattr(cfg, f.name), f.name)
    return "\n".join(lines)
