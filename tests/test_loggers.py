"""train.loggers: metrics.jsonl always, metrics.csv when asked, TensorBoard event files and W&B
offline runs holding the logged scalars, and the config errors for unknown or missing loggers."""

import json
import re
import sys
from pathlib import Path

import pytest

from contrastlab.cli import main
from contrastlab.core.config import ConfigError
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.external_loggers import WANDB_ID_FILE
from contrastlab.engine.metrics import MetricsLogger
from contrastlab.engine.trainer import Trainer
from test_trainer import TINY, losses, tiny_config

SHORT = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=32", "eval.at_end=false"]


def train(run_dir, *overrides, resume=False):
    Trainer(tiny_config(*SHORT, *overrides), run_dir, init_distributed("cpu"), resume=resume).fit()


def test_the_default_writes_jsonl_and_csv_and_nothing_else(tmp_path):
    train(tmp_path)
    assert (tmp_path / "metrics.jsonl").stat().st_size > 0 and (tmp_path / "metrics.csv").stat().st_size > 0
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "wandb").exists()


def test_an_unknown_logger_is_a_config_error_naming_the_choices():
    choices = r"train\.loggers\[1\]: 'mlflow' is not one of jsonl, csv, tensorboard, wandb"
    with pytest.raises(ConfigError, match=choices):
        tiny_config("train.loggers=[jsonl, mlflow]")


@pytest.mark.parametrize("name, module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_logger_that_is_not_installed_names_its_extra(tmp_path, monkeypatch, capsys, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    monkeypatch.setattr("contrastlab.engine.trainer.load_data",  # checked first: no data loaded in vain
                        lambda *args, **kwargs: pytest.fail("the data was loaded before the loggers were checked"))
    assert main(["train", "--run-dir", str(tmp_path / "run"), *TINY, *SHORT, f"train.loggers=[{name}]"]) == 2
    err = capsys.readouterr().err
    assert f"train.loggers lists {name}, which is not installed: pip install 'contrastlab[{name}]'" in err


def test_tensorboard_events_hold_the_logged_scalars_and_jsonl_is_still_written(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train(tmp_path, "train.loggers=[tensorboard]")
    assert not (tmp_path / "metrics.csv").exists()  # csv was not asked for; jsonl always is written
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "images_per_s", "epoch_loss"} <= set(events.Tags()["scalars"])
    logged = {event.step: event.value for event in events.Scalars("loss")}
    assert logged == pytest.approx(losses(tmp_path))
    assert list(logged) == [1, 2]


def wandb_history(run_folder: Path) -> dict[int, dict]:
    """The history rows (by step) of the W&B offline run in ``run_folder``, read from its
    ``run-<id>.wandb`` file: LevelDB-style log records (32 KiB blocks, 7-byte headers of CRC,
    little-endian length and type: 1 full, 2 first, 3 middle, 4 last) holding protobuf Records,
    after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    raw = next(run_folder.glob("run-*.wandb")).read_bytes()
    block, pos, pending, rows = 32768, 7, b"", {}
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                rows[row["_step"]] = row
    return rows


def test_wandb_offline_run_holds_the_metrics_and_a_resumed_run_keeps_its_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for variable, folder in (("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                             ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(run, "train.loggers=[jsonl, csv, wandb]", "train.wandb_project=tests")
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    train(run, "train.loggers=[jsonl, csv, wandb]", "train.wandb_project=tests", "train.epochs=2", resume=True)
    assert (run / WANDB_ID_FILE).read_text().strip() == run_id

    parts = sorted((run / "wandb").glob("offline-run-*"))
    # offline-run-<start time>-<run id>, with "-1" added by W&B when both runs started in the same second
    folder = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?")
    assert len(parts) == 2 and all(folder.fullmatch(part.name) for part in parts), [p.name for p in parts]
    history = {step: row for part in parts for step, row in wandb_history(part).items()}
    logged = {step: row["loss"] for step, row in history.items()}
    assert logged == pytest.approx(losses(run)), (f"W&B {logged}; metrics.jsonl {(run / 'metrics.jsonl').read_text()}; "
                                                   f"parts {[p.name for p in parts]}")
    assert list(history) == [1, 2, 3, 4] and history[4]["epoch"] == 2


def test_tensorboard_hides_what_an_interrupted_run_logged_after_its_checkpoint(tmp_path, monkeypatch):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    original = MetricsLogger.log

    def crash_after_step_3(self, record):
        original(self, record)
        if record["step"] == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(MetricsLogger, "log", crash_after_step_3)
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path, "train.loggers=[tensorboard]", "train.epochs=2")
    train(tmp_path, "train.loggers=[tensorboard]", "train.epochs=2", resume=True)
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3, 4]
