"""The ``contrastlab`` command: train, eval, export, config, list, bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contrastlab.core.config import ConfigError
from contrastlab.data.base import DataError
from contrastlab.engine.checkpoint import CheckpointError
from contrastlab.engine.run_folder import RunFolderError
from contrastlab.recipes import config_from, load_config

USER_ERRORS = (ConfigError, DataError, CheckpointError, RunFolderError)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options (train CFG --run-dir D a.b=1): argparse leaves them over.
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides.extend(extra)
    try:
        return args.run(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contrastlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="pre-train an encoder, then evaluate it",
                           epilog="every field, its default and allowed values: contrastlab config RECIPE [overrides]")
    train.add_argument("config", nargs="?", help="YAML recipe (see configs/); omit with --resume or to start from the defaults")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
    train.add_argument("--run-dir", type=Path, help="output folder (default: runs/<recipe>-<time>)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.set_defaults(run=_train)

    evaluate = sub.add_parser("eval", help="evaluate a trained run's frozen backbone")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("overrides", nargs="*", help="eval.key=value overrides, e.g. eval.knn_k=20")
    evaluate.set_defaults(run=_eval)

    export = sub.add_parser("export", help="write the backbone's weights as safetensors")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--out", type=Path, required=True, help="e.g. backbone.safetensors")
    export.add_argument("--encoder", default="student",
                        help="which backbone: student (default), or teacher (methods with an EMA teacher)")
    export.set_defaults(run=_export)

    config = sub.add_parser("config", help="print a recipe's resolved config: every field's value, default, "
                            "allowed values and help")
    config.add_argument("config", nargs="?", help="YAML recipe (omit for the defaults)")
    config.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. method.name=byol")
    config.set_defaults(run=_config)

    bench = sub.add_parser("bench", help="run a benchmark suite (methods x datasets x seeds) and write its report",
                           epilog="suites: benchmarks/suites/*.yaml; finished cells are read, not re-run")
    bench.add_argument("suite", type=Path, help="the suite's YAML file")
    bench.add_argument("--out", type=Path, help="report and run folders (default: the suite's path without .yaml)")
    bench.add_argument("--fresh", action="store_true", help="re-run every cell, even finished ones")
    bench.add_argument("--only", action="append", metavar="DATASET",
                       help="run only this dataset's cells (repeatable) and write no report: to share a suite "
                            "among processes; a run without --only then writes the report from the finished cells")
    bench.set_defaults(run=_bench)

    listing = sub.add_parser("list", help="list methods, datasets, backbones and augmentation presets")
    listing.set_defaults(run=_list)
    return parser


def _overrides_only(args: argparse.Namespace) -> None:
    """A first positional ``a.b=value`` is an override, not a recipe: no recipe was given."""
    if args.config is not None and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None


def _train(args: argparse.Namespace) -> int:
    from contrastlab.api import train
    from contrastlab.engine.trainer import RanksLost, TrainingDiverged

    _overrides_only(args)
    if args.resume is not None and args.config is not None:
        raise ConfigError("with --resume the run's own config.yaml is used; give only overrides")
    try:
        train(args.config, args.overrides, run_dir=args.resume or args.run_dir, resume=args.resume is not None,
              default_stem=None if args.config else "defaults")
    except (TrainingDiverged, RanksLost) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _eval(args: argparse.Namespace) -> int:
    from contrastlab.api import evaluate

    evaluate(args.run_dir, args.overrides)
    return 0


def _export(args: argparse.Namespace) -> int:
    from contrastlab.engine.checkpoint import backbone_state, export_backbone, load_checkpoint
    from contrastlab.export import export_metadata
    from contrastlab.methods.registry import encoder_prefix

    state = load_checkpoint(args.run_dir)
    cfg = state["config"]
    weights = backbone_state(state, encoder_prefix(config_from(cfg).method, args.encoder, key="--encoder"))
    preprocessing = state["preprocessing"] if "preprocessing" in state else _recomputed_preprocessing(args.run_dir)
    meta = export_metadata(cfg, state["input_shape"], args.encoder, preprocessing)
    out = export_backbone(weights, meta, args.out)
    print(f"wrote {out} ({len(weights)} tensors; backbone {meta['backbone']}, input {meta['input_shape']})")
    return 0


def _recomputed_preprocessing(run_dir: Path) -> dict:
    """The preprocessing record of a checkpoint written before checkpoints held one: the run's
    training data loaded again (``load_data``) for their normalisation."""
    from contrastlab.data.eval_input import preprocessing_record
    from contrastlab.engine.setup import load_data

    cfg = load_config(run_dir / "config.yaml")
    try:
        data = load_data(cfg)
    except (ConfigError, DataError, OSError) as err:
        raise CheckpointError(
            f"{run_dir / 'checkpoint.pt'} holds no preprocessing record (written before checkpoints kept one) and "
            f"the run's training data could not be loaded to recompute its normalisation: {err}. Make the data "
            f"available where {run_dir / 'config.yaml'} says (data.root), then export again") from None
    print(f"{run_dir / 'checkpoint.pt'} holds no preprocessing record: the normalisation was recomputed from "
          f"the training data of '{cfg.data.name}'", file=sys.stderr)
    return preprocessing_record(data.train, data.normalize, cfg.data.image_size)


def _config(args: argparse.Namespace) -> int:
    from contrastlab.core.config_help import describe

    _overrides_only(args)
    print(describe(load_config(args.config, args.overrides)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from contrastlab.bench.runner import run_suite

    command = "contrastlab bench " + " ".join([str(args.suite), *(["--out", str(args.out)] if args.out else [])])
    return 1 if run_suite(args.suite, args.out, resume=not args.fresh, command=command, only=args.only) else 0


def _list(args: argparse.Namespace) -> int:
    from contrastlab.data import DATASETS
    from contrastlab.methods import METHODS
    from contrastlab.models import BACKBONES

    from contrastlab.data.augment import AUTO_PRESET, PRESETS

    for title, registry in (("methods", METHODS), ("datasets", DATASETS), ("backbones", BACKBONES)):
        print(f"{title}:")
        for name, summary in registry.summaries():
            print(f"  {name:<16} {summary}")
    print("augmentation presets (augment.preset):")
    print(f"  {AUTO_PRESET:<16} the preset of the dataset's kind (the default)")
    for name, preset in PRESETS.items():
        print(f"  {name:<16} {preset.summary}")
    return 0
