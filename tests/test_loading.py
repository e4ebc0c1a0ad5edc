"""Batches through the dataset protocol: the in-memory gather and DataLoader workers give the same
batches, epochs are seeded and sharded, and a dataset without a vectorised gather trains,
resumes and evaluates like an in-memory one."""

import multiprocessing

import pytest
import torch

from contrastlab.core.distributed import DistEnv
from contrastlab.data import DATASETS
from contrastlab.data.base import ImageData
from contrastlab.data.dataset import Dataset, SampleKey, batch_to, sample_seed
from contrastlab.data import loading
from contrastlab.data.loading import BatchLoader, eval_batches, release_free_heap
from contrastlab.data.preprocess import Normalize
from contrastlab.engine import checkpoint as ckpt
from contrastlab.engine.distributed import init_distributed
from contrastlab.engine.evaluation import evaluate_run
from contrastlab.engine.sampler import EpochBatches
from contrastlab.engine.trainer import Trainer
from contrastlab.eval.features import extract_features, gather_rows
from contrastlab.models import build_backbone
from test_trainer import interrupted_run, losses, tiny_config


class PerSample:
    """A dataset of the protocol without ``get_batch``: samples one at a time, as a streamed
    dataset serves them (records the keys it was asked for and the largest batch collated)."""

    def __init__(self, data: ImageData) -> None:
        self.data = data
        self.name, self.kind, self.labels, self.targets = data.name, data.kind, data.labels, data.targets
        self.target_names, self.classes = data.target_names, data.classes
        self.keys: list = []
        self.largest_batch = 0

    @property
    def shape(self):
        return self.data.shape

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        self.keys.append(key)
        index = key.index if isinstance(key, SampleKey) else key
        sample = {"inputs": self.data.images[index], "index": index}
        if self.labels is not None:
            sample["labels"] = int(self.labels[index])
        return sample

    def collate(self, samples):
        self.largest_batch = max(self.largest_batch, len(samples))
        batch = {"inputs": torch.stack([s["inputs"] for s in samples]),
                 "index": torch.tensor([s["index"] for s in samples])}
        if "labels" in samples[0]:
            batch["labels"] = torch.tensor([s["labels"] for s in samples])
        return batch

    def subset(self, index):
        return PerSample(self.data.subset(index))


def digits(n=64):
    return DATASETS.get("digits")("train", size=n, seed=0)


def test_a_per_sample_dataset_is_a_dataset_and_batches_like_the_in_memory_gather():
    data = digits()
    streamed = PerSample(data)
    assert isinstance(streamed, Dataset) and isinstance(data, Dataset)
    keys = [[SampleKey(i, sample_seed(0, 0, i)) for i in chunk] for chunk in ([5, 1, 9], [0, 63])]
    for workers in (0, 2):
        fast = list(BatchLoader(data, keys))
        slow = list(BatchLoader(streamed, keys, num_workers=workers))
        assert len(fast) == len(slow) == 2
        for a, b in zip(fast, slow):
            assert set(a) == set(b)
            assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        BatchLoader(data, keys, num_workers=-1)


def env(rank=0, world_size=1):
    return DistEnv(rank, world_size, rank, torch.device("cpu"), world_size > 1)


def test_epoch_batches_are_seeded_sharded_and_carry_per_sample_seeds():
    one = EpochBatches(20, 4, 5, seed=3, env=env())
    one.set_epoch(2)
    first, again = list(one), list(one)
    assert first == again and len(first) == 5
    assert sorted(k.index for batch in first for k in batch) == list(range(20))
    assert all(k.seed == sample_seed(3, 2, k.index) for batch in first for k in batch)
    one.set_epoch(3)
    assert [k.index for k in list(one)[0]] != [k.index for k in first[0]]
    ranks = [EpochBatches(20, 4, 2, seed=3, env=env(r, 2)) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    shards = [{k.index for batch in r for k in batch} for r in ranks]
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 8
    assert sample_seed(0, 1, 5) != sample_seed(0, 2, 5) != sample_seed(1, 1, 5)


def test_features_of_a_dataset_are_extracted_batch_by_batch():
    data = digits(50)
    streamed = PerSample(data)
    backbone = build_backbone("convnet", data.shape, channels=[4, 8])
    normalize = Normalize([0.3], [0.2])
    whole = extract_features(backbone, data.images, normalize, batch_size=50)
    batched = extract_features(backbone, streamed, normalize, batch_size=16)
    torch.testing.assert_close(batched, whole)
    assert streamed.largest_batch == 16 and [k for k in streamed.keys] == list(range(50))
    index = torch.tensor([7, 3])
    assert [b["index"].tolist() for b in eval_batches(data, 1, index)] == [[7], [3]]
    with pytest.raises(ValueError, match="expected 3 rows, got 2"):
        gather_rows(3, [torch.zeros(2, 4)])


def test_eval_workers_are_shut_down_when_the_pass_ends():
    before = set(multiprocessing.active_children())
    loader = eval_batches(PerSample(digits(20)), 8, num_workers=1)
    assert [len(b["index"]) for b in loader] == [8, 8, 4]
    assert set(multiprocessing.active_children()) == before  # the loader is alive, its workers are not


def test_close_shuts_down_persistent_workers_and_a_later_pass_starts_new_ones():
    before = set(multiprocessing.active_children())
    loader = BatchLoader(PerSample(digits(20)), [[0, 1, 2], [3, 4]], num_workers=1)
    assert [len(b["index"]) for b in loader] == [3, 2]
    assert set(multiprocessing.active_children()) - before  # persistent: alive between passes
    loader.close()
    assert set(multiprocessing.active_children()) == before
    loader.close()  # idempotent
    assert [len(b["index"]) for b in loader] == [3, 2]
    loader.close()
    assert set(multiprocessing.active_children()) == before


def test_the_training_workers_are_gone_before_evaluation(tmp_path, per_sample_digits):
    """A trainer's persistent loader workers are shut down when it finishes, not left alive
    through the evaluation that follows (their memory counts against the run's peak)."""
    before = set(multiprocessing.active_children())
    cfg = tiny_config("train.epochs=1", "data.name=per_sample_digits", "data.num_workers=1")
    trainer = Trainer(cfg, tmp_path, init_distributed("cpu"))
    trainer.fit()
    assert trainer.loader is not None  # the trainer is alive, its workers are not
    assert set(multiprocessing.active_children()) == before


def test_the_free_heap_is_released_before_workers_are_forked(monkeypatch):
    assert release_free_heap() == (loading._malloc_trim() is not None)
    alive_at_release = []
    monkeypatch.setattr(loading, "release_free_heap", lambda: alive_at_release.append(set(multiprocessing.active_children())))
    before = set(multiprocessing.active_children())
    data = PerSample(digits(20))
    assert len(list(eval_batches(data, 8, num_workers=1))) == len(list(eval_batches(data, 8))) == 3
    assert alive_at_release == [before]  # once, for the loader with workers, before they started


def test_batch_to_moves_tensors_lists_and_objects_with_to():
    class Graphs:
        def to(self, device):
            self.device = device
            return self

    batch = batch_to({"inputs": [torch.zeros(1)], "index": torch.arange(2), "graphs": Graphs(), "name": "x"},
                     torch.device("cpu"))
    assert batch["graphs"].device == torch.device("cpu") and batch["name"] == "x"
    assert isinstance(batch["inputs"], list) and torch.is_tensor(batch["inputs"][0])


@pytest.fixture
def per_sample_digits(monkeypatch):
    def load(split, root=None, size=None, seed=0):
        return PerSample(DATASETS.get("digits")(split, root=root, size=size, seed=seed))

    monkeypatch.setitem(DATASETS._entries, "per_sample_digits", (load, "test: digits one sample at a time"))


def test_a_per_sample_dataset_in_workers_trains_resumes_and_evaluates_like_in_memory(tmp_path, monkeypatch,
                                                                                    per_sample_digits):
    cpu = init_distributed("cpu")
    quick_eval = ["eval.weight_decays=[0.0]", "eval.compare_random_init=false"]
    memory = tiny_config("train.epochs=3", *quick_eval)
    streamed = tiny_config("train.epochs=3", "data.name=per_sample_digits", "data.num_workers=1", *quick_eval)
    Trainer(memory, tmp_path / "memory", cpu).fit()
    interrupted_run(streamed, tmp_path / "streamed", cpu, monkeypatch, crash_epoch=2)
    assert losses(tmp_path / "memory") == losses(tmp_path / "streamed")
    a = ckpt.load_checkpoint(tmp_path / "memory")["method"]
    b = ckpt.load_checkpoint(tmp_path / "streamed")["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    results = [evaluate_run(tmp_path / name, cfg, echo=False)
               for name, cfg in (("memory", memory), ("streamed", streamed))]
    assert results[0]["trained"]["knn"] == results[1]["trained"]["knn"]
    assert results[0]["trained"]["linear"]["accuracy"] == results[1]["trained"]["linear"]["accuracy"]


def test_loader_options_a_dataset_does_not_take_are_rejected_by_name():
    from contrastlab.core.config import ConfigError
    from contrastlab.engine.setup import load_data

    with pytest.raises(ConfigError, match=r"dataset 'digits' takes none of data.image_size \(set them to null\)"):
        load_data(tiny_config("data.image_size=32"))
