"""Exports carry their preprocessing, and ``contrastlab.load_backbone`` gives the backbone with it:
its features of preprocessed images equal the evaluation path's; older checkpoints still export;
files that are not exports are named with what they lack."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import contrastlab
from contrastlab.cli import main
from contrastlab.data import DATASETS
from contrastlab.data.base import ImageData
from contrastlab.data.eval_input import preprocess_from_record, preprocessing_record
from contrastlab.data.preprocess import LabNormalize
from contrastlab.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from contrastlab.engine.setup import load_data, make_normalize, trained_backbone
from contrastlab.eval.features import extract_features
from contrastlab.export import ExportError, read_metadata
from contrastlab.recipes import load_config
from exported_run import train_and_export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(run folder, export)`` of a tiny digits run."""
    return train_and_export(tmp_path_factory.mktemp("export"))


def test_the_export_records_the_runs_preprocessing(exported):
    run, out = exported
    data = load_data(load_config(run / "config.yaml"))
    expected = {"kind": "image", "channels": "L", "input_size": [1, 8, 8], "resize": None, "centre_crop": None,
                "normalize": {"kind": "rgb", "mean": data.normalize.mean, "std": data.normalize.std}}
    assert load_checkpoint(run)["preprocessing"] == expected
    meta = read_metadata(out)
    assert meta["preprocessing"] == expected
    assert {k: meta[k] for k in ("backbone", "method", "encoder")} == {"backbone": "convnet", "method": "simclr",
                                                                       "encoder": "student"}


def test_load_backbone_features_equal_the_evaluation_features(exported):
    run, out = exported
    cfg = load_config(run / "config.yaml")
    data = load_data(cfg)
    test = data.test.subset(torch.arange(40))
    expected = extract_features(trained_backbone(load_checkpoint(run), cfg, "student"), test, data.normalize)

    backbone = contrastlab.load_backbone(out)
    assert not backbone.training
    images = test.images  # (40, 1, 8, 8) uint8, as evaluation reads them
    pil_images = [Image.fromarray(image[0].numpy()) for image in images]
    with torch.no_grad():
        for inputs in (images, images.float() / 255, pil_images):
            features = backbone(backbone.preprocess(inputs))
            assert features.shape == expected.shape
            torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def write_images(folder, sizes):
    """RGB PNGs of the given ``(width, height)`` sizes with smooth, distinct content; their paths."""
    folder.mkdir(parents=True)
    paths = []
    for number, (width, height) in enumerate(sizes):
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([(x * 255 / width + 40 * number) % 256, y * 255 / height,
                           128 + 100 * np.sin((x + y + number) / 5)], axis=-1).astype(np.uint8)
        path = folder / f"{number}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_streamed_files_are_resized_and_cropped_as_evaluation_decodes_them(tmp_path):
    paths = write_images(tmp_path / "images", [(40, 30), (31, 50), (24, 24), (67, 45)])
    files = DATASETS.get("folder")("train", root=str(tmp_path / "images"), image_size=16, in_memory=False)
    normalize = make_normalize("rgb", files)
    record = preprocessing_record(files, normalize, 16)
    assert {k: record[k] for k in ("channels", "input_size", "resize", "centre_crop")} == \
        {"channels": "RGB", "input_size": [3, 16, 16], "resize": 16, "centre_crop": 16}
    preprocess = preprocess_from_record(json.loads(json.dumps(record)), "test")
    evaluated = normalize(torch.stack([files.eval_input(i) for i in range(len(files))]))

    assert torch.equal(preprocess([Image.open(path) for path in paths]), evaluated)
    for path, expected in zip(paths, evaluated):
        pixels = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
        assert torch.equal(preprocess(pixels)[0], expected)  # a uint8 tensor: as the file is decoded
        in_pixels = (preprocess(pixels.float() / 255)[0] - expected) * torch.tensor(normalize.std).view(3, 1, 1)
        assert in_pixels.abs().max() < 1 / 255  # a float tensor: the same filter, without rounding to 8 bits


def test_lab_and_data_that_are_not_images(tmp_path):
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    record = preprocessing_record(ImageData(name="colours", images=images), LabNormalize(), None)
    assert record["normalize"]["kind"] == "lab" and record["channels"] == "RGB"
    assert torch.equal(preprocess_from_record(record, "test")(images), LabNormalize()(images))

    skeletons = DATASETS.get("skeleton_actions")("train", size=4)
    record = preprocessing_record(skeletons, make_normalize("rgb", skeletons), None)
    assert record == {"kind": "none", "data_kind": "skeleton"}
    sequences = skeletons.sequences
    assert preprocess_from_record(record, "test")(sequences) is sequences


def test_a_checkpoint_without_preprocessing_is_exported_with_it_recomputed(exported, tmp_path, capsys):
    run, out = exported
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    state = load_checkpoint(old)
    del state["preprocessing"]
    torch.save(state, old / CHECKPOINT_NAME)
    assert main(["export", str(old), "--out", str(tmp_path / "old.safetensors")]) == 0
    assert "normalisation was recomputed from the training data of 'digits'" in capsys.readouterr().err
    assert read_metadata(tmp_path / "old.safetensors") == read_metadata(out)

    config = yaml.safe_load((old / "config.yaml").read_text())
    config["data"].update(name="folder", root=str(tmp_path / "moved-away"))
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["export", str(old), "--out", str(tmp_path / "old2.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "holds no preprocessing record" in err and "moved-away does not exist" in err
    assert not (tmp_path / "old2.safetensors").exists()


def test_files_that_are_not_contrastlab_exports_are_named(exported, tmp_path):
    _, out = exported
    with pytest.raises(ExportError, match=r"nothing\.safetensors: no such file"):
        contrastlab.load_backbone(tmp_path / "nothing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ExportError, match=r"junk\.safetensors is not a safetensors file"):
        contrastlab.load_backbone(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ExportError, match=r"plain\.safetensors is not a contrastlab export: .* no 'contrastlab'"):
        contrastlab.load_backbone(plain)

    meta = read_metadata(out)
    weights = {"w": torch.zeros(2)}
    older = tmp_path / "older.safetensors"
    save_file(weights, str(older), metadata={"contrastlab": json.dumps({k: v for k, v in meta.items()
                                                                         if k != "preprocessing"})})
    with pytest.raises(ExportError, match=r"older\.safetensors: .* lacks preprocessing; re-export it"):
        contrastlab.load_backbone(older)
    bad = tmp_path / "bad.safetensors"
    meta["preprocessing"]["normalize"]["kind"] = "hsv"
    save_file(weights, str(bad), metadata={"contrastlab": json.dumps(meta)})
    with pytest.raises(ExportError, match=r"bad\.safetensors: 'preprocessing': 'normalize': 'kind' must be one "
                                          r"of 'rgb', 'lab', got 'hsv'"):
        contrastlab.load_backbone(bad)
    meta["preprocessing"]["normalize"]["kind"] = "rgb"
    save_file(weights, str(bad), metadata={"contrastlab": json.dumps(meta)})
    with pytest.raises(ExportError, match=r"bad\.safetensors: cannot load the exported backbone 'convnet'"):
        contrastlab.load_backbone(bad)


def test_preprocess_names_what_it_cannot_take(exported):
    preprocess = contrastlab.load_backbone(exported[1]).preprocess
    with pytest.raises(ValueError, match=r"images must be \(B, 1, H, W\)"):
        preprocess(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\].*divide by 255"):
        preprocess(torch.full((2, 1, 8, 8), 255.0))
    with pytest.raises(ValueError, match="images are 9x8 but the backbone was evaluated on 8x8 images as they are"):
        preprocess(torch.zeros(2, 1, 8, 9, dtype=torch.uint8))
    with pytest.raises(TypeError, match="got ndarray"):
        preprocess(np.zeros((2, 1, 8, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match="a list of str"):
        preprocess(["image.png"])


def test_import_contrastlab_stays_light():
    script = ("import sys, contrastlab; assert 'torch' not in sys.modules, 'torch imported'; "
              "contrastlab.load_backbone; assert 'contrastlab.export' in sys.modules; "
              "getattr(contrastlab, 'no_such_name')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "AttributeError: module 'contrastlab' has no attribute 'no_such_name'" in result.stderr, result.stderr
