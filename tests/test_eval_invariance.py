"""Test-time feature averaging and robustness to test-time nuisance (InvCLR's evaluations)."""

from __future__ import annotations

import json

import pytest
import torch

from contrastlab.cli import main
from contrastlab.core.config import ConfigError
from contrastlab.data import DATASETS
from contrastlab.data.augment import RandomResizedCropFlip, ViewPipeline
from contrastlab.data.base import ImageData
from contrastlab.data.perturbation import register_perturbation
from contrastlab.data.preprocess import Normalize, channel_stats
from contrastlab.data.spirograph import NUISANCE_HIGH, NUISANCE_LOW, BackgroundShift, SpirographViews
from contrastlab.eval import (
    JitterShift,
    averaged_features,
    evaluate,
    extract_features,
    knn_accuracy,
    perturbation_for,
    robustness_curve,
)
from contrastlab.models import build_backbone
from contrastlab.recipes import load_config

BACKGROUND = [1, 3, 5]  # b_r, b_g, b_b in the nuisance vector
PROBES = {"knn_k": 20, "weight_decays": (1e-2,)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: with several threads, thread synchronisation dominates (about
    7x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    train = DATASETS.get("digits")("train", size=200)
    test = DATASETS.get("digits")("test", size=100)
    normalize = Normalize(*channel_stats(train.images))
    torch.manual_seed(0)
    backbone = build_backbone("convnet", (1, 8, 8), channels=(8, 16))
    return train, test, normalize, backbone


def crop_view(normalize: Normalize) -> ViewPipeline:
    return ViewPipeline([RandomResizedCropFlip(8, scale=(0.3, 1.0))], normalize)


def loop_average(backbone, data, view, num_views, generator, batch_size):
    """Reference: per chunk, call the view num_views times, run the backbone, sum, divide."""
    backbone.eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)))
            batch = {"inputs": data.images[index], "labels": data.labels[index], "index": index}
            total = 0
            for _ in range(num_views):
                total = total + backbone(view(batch, generator)).float()
            rows.append(total / num_views)
    return torch.cat(rows)


def test_averaged_features_match_loop_reference(digits):
    train, _, normalize, backbone = digits
    view = crop_view(normalize)
    backbone.train()
    got = averaged_features(backbone, train, view, 3, torch.Generator().manual_seed(1), batch_size=64)
    assert backbone.training  # mode restored
    assert got.shape == (200, 16) and got.dtype == torch.float32
    expected = loop_average(backbone, train, view, 3, torch.Generator().manual_seed(1), batch_size=64)
    assert torch.equal(got, expected)

    # one view: exactly that view's features; the view is random, so it differs from the clean image
    single = averaged_features(backbone, train, view, 1, torch.Generator().manual_seed(2), batch_size=500)
    batch = {"inputs": train.images, "labels": train.labels, "index": torch.arange(200)}
    with torch.no_grad():
        one_view = backbone.eval()(view(batch, torch.Generator().manual_seed(2)))
    assert torch.equal(single, one_view)
    assert not torch.allclose(single, extract_features(backbone, train.images, normalize))

    # averaging more draws shrinks the spread between two independent estimates
    def spread(m: int) -> float:
        a, b = (averaged_features(backbone, train, view, m, torch.Generator().manual_seed(s)) for s in (3, 4))
        return float((a - b).pow(2).mean())

    assert spread(8) < 0.3 * spread(1)


def test_identity_view_gives_plain_features_and_evaluate_takes_a_featurizer(digits):
    labelled_train, labelled_test, normalize, backbone = digits
    train, test = (
        ImageData("digits", split.images, targets=split.labels[:, None].float(), target_names=("digit",))
        for split in (labelled_train, labelled_test)
    )
    identity = lambda batch, generator: normalize(batch["inputs"])  # noqa: E731
    averaged = averaged_features(backbone, train, identity, 3, torch.Generator(), batch_size=64)
    torch.testing.assert_close(averaged, extract_features(backbone, train.images, normalize, batch_size=64))

    seen = []

    def featurize(split):
        seen.append(len(split))
        return averaged_features(backbone, split, identity, 2, torch.Generator(), batch_size=64)

    custom = evaluate(backbone, train, test, normalize, featurize=featurize, max_train=150, **PROBES)
    plain = evaluate(backbone, train, test, normalize, max_train=150, **PROBES)
    assert seen == [150, 100]  # the probes' train subset, then the test set
    for key in ("r2_mean", "mse_mean", "alpha"):
        assert custom["regression"][key] == pytest.approx(plain["regression"][key])


def test_averaged_features_reject_bad_num_views(digits):
    train, _, normalize, backbone = digits
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match=f"num_views.*{bad}"):
            averaged_features(backbone, train, crop_view(normalize), bad, torch.Generator())


def test_robustness_curve_on_images(digits):
    train, test, normalize, backbone = digits
    jitter = JitterShift(normalize)
    curve = robustness_curve(backbone, train, test, normalize, jitter, [0.0, 0.8], max_train=150, seed=3, **PROBES)
    assert [point["strength"] for point in curve] == [0.0, 0.8]

    clean = evaluate(backbone, train, test, normalize, max_train=150, seed=3, **PROBES)
    assert curve[0]["knn"] == clean["knn"] and curve[0]["linear"] == clean["linear"]

    # s > 0: probes fitted on the clean train features, scored on jittered test images
    clean_test = extract_features(backbone, test.images, normalize)
    batch = {"inputs": test.images, "labels": test.labels, "index": torch.arange(len(test))}
    with torch.no_grad():
        jittered = backbone.eval()(jitter(0.8)(batch, torch.Generator().manual_seed(3)))
    assert not torch.allclose(jittered, clean_test, atol=1e-3)
    subset = train.subset(torch.randperm(200, generator=torch.Generator().manual_seed(3))[:150].sort().values)
    train_feats = extract_features(backbone, subset.images, normalize)
    expected_knn = knn_accuracy(train_feats, subset.labels, jittered, test.labels, k=20)
    assert curve[1]["knn"]["accuracy"] == pytest.approx(expected_knn)
    assert curve[1]["linear"]["accuracy"] != curve[0]["linear"]["accuracy"]


def test_spirograph_background_shift_draws_shifted_backgrounds():
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    batch = {"targets": torch.ones(4000, 4)}
    for strength in (0.0, 0.25, 0.4):
        view = BackgroundShift(normalize)(strength)
        assert isinstance(view, SpirographViews)
        nuisance = view.sample(batch, torch.Generator().manual_seed(0))["nuisance"]
        low, high = nuisance.min(dim=0).values, nuisance.max(dim=0).values
        for column in range(6):
            shift = strength if column in BACKGROUND else 0.0
            expected_low, expected_high = NUISANCE_LOW[column] + shift, NUISANCE_HIGH[column] + shift
            assert expected_low - 1e-6 <= low[column] < expected_low + 0.01
            assert expected_high - 0.01 < high[column] <= expected_high + 1e-6


def test_a_dataset_registers_the_perturbation_of_its_views():
    normalize = Normalize([0.5] * 3, [0.25] * 3)

    class SubclassedViews(SpirographViews):
        pass

    class OwnViews:
        pass

    @register_perturbation(OwnViews)
    class OwnShift(JitterShift):
        pass

    assert isinstance(perturbation_for(SubclassedViews(normalize), normalize), BackgroundShift)
    assert type(perturbation_for(OwnViews(), normalize)) is OwnShift
    with pytest.raises(ValueError, match="registered twice"):
        register_perturbation(OwnViews)(JitterShift)


def test_perturbation_choice_and_invalid_strengths(digits):
    train, test, normalize, backbone = digits
    assert isinstance(perturbation_for(SpirographViews(normalize), normalize), BackgroundShift)
    assert isinstance(perturbation_for(crop_view(normalize), normalize), JitterShift)
    with pytest.raises(ValueError, match=r"0\.45 must lie in \[0, 0\.4\]"):
        BackgroundShift(normalize)(0.45)
    with pytest.raises(ValueError, match="-0.1"):
        JitterShift(normalize)(-0.1)
    for strengths in ([], [0.2, -1.0]):
        with pytest.raises(ValueError, match="strength"):
            robustness_curve(backbone, train, test, normalize, JitterShift(normalize), strengths)


def test_config_validates_the_eval_options():
    cfg = load_config(overrides=["eval.feature_averaging=30", "eval.robustness=[0, 0.1, 0.2]"])
    assert cfg.eval.feature_averaging == 30 and cfg.eval.robustness == (0.0, 0.1, 0.2)
    assert load_config().eval.feature_averaging is None and load_config().eval.robustness is None
    bad = {
        "eval.feature_averaging=0": "eval.feature_averaging.*0",
        "eval.feature_averaging=2.5": "eval.feature_averaging.*integer",
        "eval.robustness=[0.1, -0.2]": "eval.robustness.*-0.2",
        "eval.robustness=[]": "eval.robustness",
        "eval.robustness=0.2": "eval.robustness.*list",
        "eval.robustness=[0, strong]": r"eval.robustness\[1\]",
        "eval.robustnes=[0]": "did you mean 'robustness'|robustness",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=[override])


TINY_SPIROGRAPH = [
    "data.name=spirograph", "data.train_size=128", "data.test_size=64", "augment.preset=spirograph",
    "backbone.name=convnet", "backbone.options={channels: [8, 16]}",
    "method.proj_hidden_dim=32", "method.proj_out_dim=16", "optim.name=sgd", "optim.lr=0.05",
    "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=64", "train.precision=fp32", "train.channels_last=false",
    "train.progress=false", "train.device=cpu", "eval.at_end=false", "eval.plots=false",
]


def test_eval_command_writes_averaged_column_and_robustness_curves(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY_SPIROGRAPH]) == 0
    assert main(["eval", str(run), "eval.feature_averaging=2", "eval.robustness=[0, 0.2]"]) == 0
    out = capsys.readouterr().out
    assert "trained_fa" in out and "s=0.2" in out and "robustness of random_init" in out

    results = json.loads((run / "results.json").read_text())
    assert list(results)[-3:] == ["trained", "trained_fa", "random_init"]
    assert results["trained_fa"]["regression"]["r2"] != results["trained"]["regression"]["r2"]
    for name in ("trained", "random_init"):
        curve = results[name]["robustness"]
        assert [point["strength"] for point in curve] == [0.0, 0.2]
        assert all(set(point["regression"]) >= {"r2_mean", "mse_mean", "r2", "mse"} for point in curve)
        assert curve[0]["regression"]["r2"] != curve[1]["regression"]["r2"]
    assert "robustness" not in results["trained_fa"]

    assert main(["eval", str(run), "eval.robustness=[0.5]"]) == 2
    assert "eval.robustness" in capsys.readouterr().err
