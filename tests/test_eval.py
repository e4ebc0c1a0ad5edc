"""Evaluation: kNN, linear probe, ridge, diagnostics, feature extraction and evaluate()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from contrastlab.data.base import ImageData
from contrastlab.data.preprocess import Normalize
from contrastlab.eval import (
    alignment,
    effective_rank,
    evaluate,
    extract_features,
    fit_ridge,
    format_results_table,
    knn_accuracy,
    linear_probe,
    pca_projection,
    ridge_regression,
    singular_values,
    uniformity,
)
from contrastlab.eval.evaluate import format_legend
from contrastlab.eval.features import validation_split


def blobs(n: int, num_classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` Gaussian points around ``num_classes`` random centres: ``(n, dim)``, ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(n) % num_classes
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def knn_reference(train, train_labels, test, test_labels, k, temperature, num_classes):
    """Per query: cosine similarity to every train point, sort, vote with exp(s / t)."""
    correct = 0
    for query, label in zip(test.tolist(), test_labels.tolist()):
        sims = []
        for point, point_label in zip(train.tolist(), train_labels.tolist()):
            dot = sum(a * b for a, b in zip(query, point))
            norm = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in point))
            sims.append((dot / norm, point_label))
        sims.sort(key=lambda pair: -pair[0])
        votes = [0.0] * num_classes
        for sim, point_label in sims[:k]:
            votes[point_label] += math.exp(sim / temperature)
        correct += votes.index(max(votes)) == label
    return 100.0 * correct / len(test)


@pytest.mark.parametrize("k, chunk_size", [(5, 3), (1, 100), (500, 7)])
def test_knn_matches_loop_reference(k, chunk_size):
    g = torch.Generator().manual_seed(0)
    train, train_labels = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    test, test_labels = torch.randn(25, 6, generator=g), torch.randint(0, 4, (25,), generator=g)
    got = knn_accuracy(train, train_labels, test, test_labels, k=k, temperature=0.1, chunk_size=chunk_size)
    expected = knn_reference(train, train_labels, test, test_labels, min(k, 40), 0.1, 4)
    assert got == pytest.approx(expected)
    assert 0 < got < 100  # random labels: the comparison is not trivially 0 or 100


def test_knn_separable_clusters_and_bad_input():
    train, train_labels = blobs(90, 3, 8, spread=0.1, seed=1)
    test, test_labels = blobs(30, 3, 8, spread=0.1, seed=2)
    assert knn_accuracy(train, train_labels, test, test_labels, k=10) == 100.0
    with pytest.raises(ValueError, match="dimension"):
        knn_accuracy(train, train_labels, test[:, :4], test_labels)
    with pytest.raises(ValueError, match="labels"):
        knn_accuracy(train, train_labels[:5], test, test_labels)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        knn_accuracy(train, train_labels, test, test_labels, num_classes=2)


def test_linear_probe_separable_and_random_labels():
    train, train_labels = blobs(200, 4, 10, spread=1.0, seed=3)
    test, test_labels = blobs(200, 4, 10, spread=1.0, seed=4)
    result = linear_probe(train, train_labels, test, test_labels, weight_decays=(0.0, 1e-3), max_iter=50)
    assert result["accuracy"] > 95
    assert result["weight_decay"] in (0.0, 1e-3)
    assert 0 <= result["val_accuracy"] <= 100

    noise = torch.randn(200, 10, generator=torch.Generator().manual_seed(5))
    random_labels = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(6))
    chance = linear_probe(noise[:100], random_labels[:100], noise[100:], random_labels[100:], max_iter=50)
    assert 5 < chance["accuracy"] < 45  # chance is 25%


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    fit, val = validation_split(100, 0.1, seed=0, labels=labels)
    assert len(val) == 10 and len(fit) == 90
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(100))
    assert torch.bincount(labels[val], minlength=3).tolist() == [5, 3, 2]
    assert torch.equal(val, validation_split(100, 0.1, seed=0, labels=labels)[1])
    assert not torch.equal(val, validation_split(100, 0.1, seed=1, labels=labels)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        validation_split(100, 1.5, seed=0)


def regression_data(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 5, generator=g) * torch.tensor([1.0, 5.0, 0.1, 2.0, 3.0]) + 4
    w = torch.randn(5, 2, generator=g)
    y = x @ w + 0.3 * torch.randn(120, 2, generator=g)
    return x, y


def test_fit_ridge_matches_sklearn():
    x, y = regression_data(7)
    weight, bias = fit_ridge(x, y, alpha=3.0)
    reference = Ridge(alpha=3.0).fit(x.double().numpy(), y.double().numpy())
    np.testing.assert_allclose(weight.T.numpy(), reference.coef_, atol=1e-4)
    np.testing.assert_allclose(bias.numpy(), reference.intercept_, atol=1e-4)


def test_ridge_regression_matches_sklearn_on_standardised_features():
    x, y = regression_data(8)
    train_x, train_y, test_x, test_y = x[:80], y[:80], x[80:], y[80:]
    result = ridge_regression(train_x, train_y, test_x, test_y, ("a", "b"), alphas=(0.5,))
    scaler = StandardScaler().fit(train_x.double().numpy())
    model = Ridge(alpha=0.5).fit(scaler.transform(train_x.double().numpy()), train_y.double().numpy())
    prediction = model.predict(scaler.transform(test_x.double().numpy()))
    truth = test_y.double().numpy()
    assert result["alpha"] == 0.5
    for column, name in enumerate(("a", "b")):
        assert result["r2"][name] == pytest.approx(r2_score(truth[:, column], prediction[:, column]), abs=1e-4)
        assert result["mse"][name] == pytest.approx(
            mean_squared_error(truth[:, column], prediction[:, column]), rel=1e-4
        )
    assert result["r2_mean"] == pytest.approx(np.mean(list(result["r2"].values())))
    assert result["r2_mean"] > 0.9


def test_ridge_chooses_alpha_on_validation_and_rejects_bad_names():
    x, y = regression_data(9)
    result = ridge_regression(x[:100], y[:100], x[100:], y[100:], ("a", "b"), alphas=(1e-3, 1e4))
    assert result["alpha"] == 1e-3  # clean linear targets: heavy shrinkage is worse
    with pytest.raises(ValueError, match="target_names"):
        ridge_regression(x[:100], y[:100], x[100:], y[100:], ("a",))


def test_singular_values_and_effective_rank():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(50, 8, generator=g) + 3
    expected = np.linalg.svd(x.double().numpy() - x.double().numpy().mean(0), compute_uv=False)
    np.testing.assert_allclose(singular_values(x).numpy(), expected, rtol=1e-10)

    # rows +-e_i for i < 3: centred already, singular values sqrt(2) x3 then zeros: exactly 3
    eye = torch.eye(5)[:3]
    assert effective_rank(torch.cat([eye, -eye])) == pytest.approx(3.0)
    low_rank = torch.randn(200, 3, generator=g) @ torch.randn(3, 32, generator=g)
    assert 1.0 < effective_rank(low_rank) <= 3.0 + 1e-6
    assert effective_rank(torch.randn(4000, 16, generator=g)) > 15.0
    assert effective_rank(torch.ones(10, 4)) == 0.0


def test_alignment_and_uniformity_against_references():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(30, 5, generator=g)
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, 7 * z) == pytest.approx(0.0, abs=1e-10)  # scale-invariant: L2-normalised
    e = torch.eye(2)
    assert alignment(e[:1], e[1:]) == pytest.approx(2.0)
    assert alignment(e[:1], e[1:], alpha=1) == pytest.approx(math.sqrt(2))

    unit = z.double() / z.double().norm(dim=1, keepdim=True)
    terms = [
        math.exp(-2 * float((unit[i] - unit[j]).pow(2).sum()))
        for i in range(len(z)) for j in range(i + 1, len(z))
    ]
    expected = math.log(sum(terms) / len(terms))
    assert uniformity(z, chunk_size=7) == pytest.approx(expected, rel=1e-9)
    assert uniformity(z) == pytest.approx(expected, rel=1e-9)


def test_pca_projection_captures_the_main_axis():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(100, 1, generator=g) * torch.tensor([[0.0, 10.0, 0.0]]) + 0.01 * torch.randn(100, 3, generator=g)
    xy = pca_projection(x)
    assert xy.shape == (100, 2)
    assert torch.corrcoef(torch.stack([xy[:, 0], x[:, 1]]))[0, 1].abs() > 0.999
    assert pca_projection(x[:1]).shape == (1, 2)


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU())


def test_extract_features_equals_eval_forward_and_restores_mode():
    torch.manual_seed(0)
    backbone = tiny_backbone()
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    normalize = Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    backbone[3].eval()  # a mixed mode must come back exactly
    feats = extract_features(backbone, images, normalize, batch_size=3)
    assert backbone.training and not backbone[3].training and backbone[2].training
    assert feats.dtype == torch.float32 and not feats.requires_grad
    with torch.no_grad():
        expected = backbone.eval()(normalize(images))
    torch.testing.assert_close(feats, expected)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(backbone, images.float(), normalize)


class NoisyView:
    """A view pipeline: normalised images plus generator noise (``scale`` 0 = identity)."""

    def __init__(self, normalize: Normalize, scale: float) -> None:
        self.normalize, self.scale = normalize, scale

    def __call__(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x = self.normalize(batch["inputs"])
        return x + self.scale * torch.randn(x.shape, generator=generator)


def tiny_split(n: int, seed: int, *, labelled: bool) -> ImageData:
    """Images whose mean brightness encodes the label (or two continuous targets)."""
    g = torch.Generator().manual_seed(seed)
    factor = torch.rand(n, 2, generator=g)
    labels = torch.arange(n) % 3
    level = labels.float() / 2 if labelled else factor[:, 0]
    base = 40 + 150 * level.view(n, 1, 1, 1) + 30 * factor[:, 1].view(n, 1, 1, 1) * (not labelled)
    images = (base + 20 * torch.rand(n, 3, 4, 4, generator=g)).clamp(0, 255).to(torch.uint8)
    if labelled:
        return ImageData("tiny", images, labels=labels, classes=("a", "b", "c"))
    return ImageData("tiny", images, targets=factor, target_names=("m", "n"))


def test_evaluate_labelled_split():
    torch.manual_seed(0)
    backbone = tiny_backbone()
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    train, test = tiny_split(60, 0, labelled=True), tiny_split(30, 1, labelled=True)
    views = [NoisyView(normalize, 0.0), NoisyView(normalize, 0.0)]
    results = evaluate(
        backbone, train, test, normalize, views=views, knn_k=5, weight_decays=(0.0, 1e-3), max_train=45
    )
    assert results["num_train"] == 45 and results["num_test"] == 30 and results["feature_dim"] == 16
    assert set(results) == {"num_train", "num_test", "feature_dim", "knn", "linear", "diagnostics"}
    assert results["knn"]["accuracy"] > 90 and results["linear"]["accuracy"] > 90
    diagnostics = results["diagnostics"]
    assert set(diagnostics) == {"effective_rank", "singular_values", "uniformity", "alignment"}
    assert len(diagnostics["singular_values"]) == 16
    assert diagnostics["alignment"] == pytest.approx(0.0, abs=1e-10)  # identical views
    json.dumps(results)
    table = format_results_table({"trained": results, "other": {"knn": {"accuracy": 12.5}}})
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert rows["knn/accuracy"][1] == "12.50%" and rows["num_train"] == ["45", "-"]
    assert rows["linear/accuracy"][0].endswith("%") and not rows["linear/weight_decay"][0].endswith("%")
    assert "diagnostics/singular_values" not in rows and "values]" not in table  # lists stay in results.json

    noisy = evaluate(backbone, train, test, normalize, views=[NoisyView(normalize, 1.0)] * 2, knn_k=5,
                     weight_decays=(0.0,))
    assert noisy["diagnostics"]["alignment"] > 0.01


def test_evaluate_targets_split():
    torch.manual_seed(0)
    backbone = tiny_backbone()
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    results = evaluate(backbone, tiny_split(80, 2, labelled=False), tiny_split(40, 3, labelled=False), normalize)
    assert set(results) == {"num_train", "num_test", "feature_dim", "regression", "diagnostics"}
    regression = results["regression"]
    assert set(regression["r2"]) == {"m", "n"} and set(regression["mse"]) == {"m", "n"}
    assert regression["r2"]["m"] > 0.5  # brightness is a near-linear function of "m"
    json.dumps(results)
    assert "regression/r2/m" in format_results_table({"trained": results})


def test_the_legend_explains_each_metric_shown_once_with_its_unit_and_direction():
    results = {"num_train": 45, "knn": {"accuracy": 50.0, "k": 5},
               "linear": {"accuracy": 60.0, "val_accuracy": 61.0, "weight_decay": 1e-3},
               "regression": {"r2": {"m": 0.9, "n": 0.5}, "alpha": 0.1},
               "diagnostics": {"singular_values": [1.0, 0.5], "uniformity": -1.0}, "unexplained": 3}
    legend = dict(line.split(maxsplit=1) for line in format_legend({"trained": results, "other": results}).splitlines())
    assert list(legend) == ["num_train", "knn/accuracy", "knn/k", "linear/accuracy", "linear/val_accuracy",
                            "linear/weight_decay", "regression/r2/<target>", "regression/alpha",
                            "diagnostics/uniformity"]
    assert "%" in legend["knn/accuracy"] and "higher is better" in legend["knn/accuracy"]
    assert "chosen by validation" in legend["linear/weight_decay"] and "not a score" in legend["regression/alpha"]
    assert "unitless" in legend["regression/r2/<target>"] and "lower" in legend["diagnostics/uniformity"]
