"""A benchmark suite: a YAML matrix of methods x datasets x grid points x seeds, each cell one
``contrastlab train`` run.

    name: quick                      # the report's title
    seeds: [0, 1, 2]
    reference: simclr                # the arm whose step time the others are compared with
    common: [train.epochs=1]         # overrides of every cell
    datasets:
      digits:                        # a key of one's choosing: the report's section
        kind: gray-small-convnet     # fills {kind} of the recipes' paths
        overrides: [data.name=digits]
        methods: [simclr, byol]      # the arms run on it (default: every arm)
    methods:
      simclr: {}                     # recipe configs/simclr-{kind}.yaml
      simclr-dcl: {recipe: "configs/simclr-{kind}.yaml", overrides: [method.loss=dcl]}
    grid:                            # optional: every combination of these values per cell
      train.batch_size: [64, 256]

Overrides apply in this order: the recipe, ``common``, the dataset's, the arm's, the grid
point's, then the bench's own (seed, no plots or progress bar). Relative recipe paths are read
from the current folder. Every cell's config is validated when the suite is loaded, so a typo
fails before the first run.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contrastlab.core.config import ConfigError
from contrastlab.recipes import load_config

SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")  # becomes a folder name
DEFAULT_RECIPE = "configs/{method}-{kind}.yaml"
SUITE_KEYS = {"name", "about", "seeds", "reference", "common", "datasets", "methods", "grid"}
DATASET_KEYS = {"kind", "overrides", "methods"}
METHOD_KEYS = {"recipe", "overrides"}
UNTRAINED = "untrained"  # the report's row of the backbone at initialisation: not an arm's name


@dataclass(frozen=True)
class Cell:
    """One run of the matrix: ``arm`` on ``dataset`` at grid ``point`` for ``seed``."""

    dataset: str
    arm: str
    point: tuple[tuple[str, str], ...]  # (key, value) of each grid axis
    seed: int
    recipe: Path
    overrides: tuple[str, ...]  # everything after the recipe, the bench's own included

    @property
    def key(self) -> str:
        """The cell's folder below the suite's ``runs/``: ``dataset/arm[/key=value...]/s<seed>``."""
        point = [re.sub(r"[^A-Za-z0-9_.+=-]", "_", f"{k}={v}") for k, v in self.point]
        return "/".join([self.dataset, self.arm, *point, f"s{self.seed}"])

    @property
    def group(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """The cells that differ only by seed share a group (a row of the report)."""
        return self.dataset, self.arm, self.point


@dataclass
class Suite:
    name: str
    about: str
    seeds: list[int]
    reference: str | None
    common: list[str]
    cells: list[Cell] = field(default_factory=list)
    grid: dict[str, list[str]] = field(default_factory=dict)


def bench_overrides(seed: int, untrained: bool) -> list[str]:
    """The overrides the bench adds to every cell: its seed and a quiet run; the first arm of a
    dataset also evaluates the backbone at initialisation (``untrained``)."""
    return [f"train.seed={seed}", "train.progress=false", "eval.plots=false",
            f"eval.compare_random_init={str(untrained).lower()}"]


def load_suite(path: str | Path) -> Suite:
    """Read and check the suite in ``path``; every error names the file and the entry."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"suite {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"suite {path}: not valid YAML ({err})") from None
    where = f"suite {path}"
    _mapping(raw, where, SUITE_KEYS, required={"datasets", "methods"})
    name = str(raw.get("name", path.stem))
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds must be a list of distinct integers, got {seeds!r}")
    common = _overrides(raw.get("common", []), f"{where}: common")
    methods = _named(raw["methods"], f"{where}: methods", METHOD_KEYS)
    if UNTRAINED in methods:
        raise ConfigError(f"{where}: methods: '{UNTRAINED}' names the report's row of the untrained backbone; "
                          "rename that arm")
    datasets = _named(raw["datasets"], f"{where}: datasets", DATASET_KEYS, required={"kind"})
    reference = raw.get("reference")
    if reference is not None and reference not in methods:
        raise ConfigError(f"{where}: reference '{reference}' is not one of the methods ({', '.join(methods)})")
    grid = _grid(raw.get("grid", {}), f"{where}: grid")
    suite = Suite(name, str(raw.get("about", "")).strip(), seeds, reference, common, grid=grid)
    for dataset, spec in datasets.items():
        arms = spec.get("methods", list(methods))
        unknown = [a for a in arms if a not in methods] if isinstance(arms, list) else [arms]
        if unknown:
            raise ConfigError(f"{where}: datasets.{dataset}.methods: {unknown[0]!r} is not one of the methods "
                              f"({', '.join(methods)})")
        extra = _overrides(spec.get("overrides", []), f"{where}: datasets.{dataset}.overrides")
        for position, arm in enumerate(arms):
            suite.cells += _arm_cells(suite, dataset, str(spec["kind"]), extra, arm, methods[arm],
                                      first=position == 0, where=where)
    suite.cells.sort(key=lambda cell: seeds.index(cell.seed))  # seed-major: a stopped suite covers every arm
    return suite


def _arm_cells(suite: Suite, dataset: str, kind: str, dataset_overrides: list[str], arm: str,
               spec: dict[str, Any], first: bool, where: str) -> list[Cell]:
    template = str(spec.get("recipe", DEFAULT_RECIPE))
    recipe = Path(template.format(method=arm, kind=kind))
    if not recipe.is_file():
        raise ConfigError(f"{where}: methods.{arm} on datasets.{dataset}: recipe {recipe} does not exist "
                          f"(from '{template}'; give the arm a recipe: or leave it out of the dataset's methods:)")
    arm_overrides = _overrides(spec.get("overrides", []), f"{where}: methods.{arm}.overrides")
    cells = []
    points = list(itertools.product(*(((k, v) for v in values) for k, values in suite.grid.items())))
    for point_number, point in enumerate(points):
        before_seed = [*suite.common, *dataset_overrides, *arm_overrides, *(f"{k}={v}" for k, v in point)]
        try:
            load_config(recipe, before_seed)
        except ConfigError as err:
            raise ConfigError(f"{where}: methods.{arm} on datasets.{dataset} ({recipe}): {err}") from None
        untrained = first and point_number == 0
        cells += [Cell(dataset, arm, point, seed, recipe, tuple([*before_seed, *bench_overrides(seed, untrained)]))
                  for seed in suite.seeds]
    return cells


def _mapping(value: Any, where: str, keys: set[str], required: set[str] = frozenset()) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; expected {', '.join(sorted(keys))}")
    missing = sorted(required - set(value))
    if missing:
        raise ConfigError(f"{where}: missing '{missing[0]}'")


def _named(value: Any, where: str, keys: set[str], required: set[str] = frozenset()) -> dict[str, dict]:
    """A non-empty mapping of safe names to mappings with ``keys`` (``{}`` or null allowed)."""
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a non-empty mapping of names")
    out = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: name {name!r} must be letters, digits and . _ + - (not first .)")
        spec = spec or {}
        _mapping(spec, f"{where}.{name}", keys, required)
        out[name] = spec
    return out


def _overrides(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item and "." in item.partition("=")[0]
                                              for item in value):
        raise ConfigError(f"{where}: expected a list of 'section.key=value' strings, got {value!r}")
    return list(value)


def _grid(value: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of section.key to a list of values")
    grid = {}
    for key, values in value.items():
        if not isinstance(key, str) or "." not in key or not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: '{key}' must be a section.key with a non-empty list of values")
        grid[key] = [_text(v) for v in values]
    return grid


def _text(value: Any) -> str:
    """A grid value as an override's text (YAML's true/false/null spelled as the config reads them)."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)
