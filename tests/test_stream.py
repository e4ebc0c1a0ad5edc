"""Streaming image files: decoding of every PIL mode, eval and decode-time crops, draft mode,
the filelist and folder loaders (in memory vs streaming), subsets and pickling."""

from __future__ import annotations

import math
import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from contrastlab.data import DATASETS, DataError, ImageData
from contrastlab.data import stream
from contrastlab.data.augment import RandomResizedCropFlip
from contrastlab.data.dataset import SampleKey
from contrastlab.data.decode import DecodeCrop, crop_generator, decode_centre, decode_crops, draft_reduction, to_8bit
from contrastlab.data.stream import ImageFiles, image_dataset
from fixtures import pattern, write_image


def load(name: str, split: str, root: Path, **kwargs):
    return DATASETS.get(name)(split, str(root), **kwargs)


def files_of(paths: list[Path], **kwargs) -> ImageData | ImageFiles:
    """The dataset of ``paths`` (unlabelled) through the shared loader logic."""
    return image_dataset("test", [str(p) for p in paths], None, (), **kwargs)


def rgb(height: int, width: int, offset: int = 0) -> np.ndarray:
    """``(H, W, 3)`` uint8 with a distinct value pattern."""
    return pattern(1, 3, height, width, offset)[0].transpose(1, 2, 0)


def smooth(height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 smooth gradients (JPEG-friendly, so lossy paths stay comparable)."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [128 + 100 * np.sin(x / 23.0), 128 + 100 * np.cos(y / 17.0), (x + y) * 255.0 / (height + width)]
    return np.stack(channels, axis=-1).round().clip(0, 255).astype(np.uint8)


def native(path: Path) -> np.ndarray:
    """The decoded pixels of one file at its own size, ``(C, H, W)``, through the dataset."""
    data = files_of([path], in_memory=False)
    return data[0]["inputs"].numpy()


# ---------------------------------------------------------------- modes


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1, 128, 129, 257], [1000, 32767, 32768, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    data = files_of([tmp_path / "deep.png"], in_memory=False)
    assert data.shape == (1, 2, 5)
    assert np.array_equal(data[0]["inputs"][0].numpy(), expected)


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_other_deep_gray_modes_scale_the_value_pil_reads(mode):
    image = Image.frombytes("I;16", (3, 2), np.array([[0, 300, 40000], [65535, 7, 12345]], "<u2").tobytes())
    image = image.convert(mode) if mode == "I" else Image.frombytes(mode, image.size, image.tobytes())
    read = np.array([[image.getpixel((x, y)) for x in range(3)] for y in range(2)], dtype=np.int64)
    expected = np.floor(np.clip(read, 0, 65535) * 255 / 65535 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(to_8bit(image, 1)), expected)


def test_palette_decodes_to_its_colours(tmp_path):
    palette = [(255, 0, 0), (0, 128, 255), (10, 20, 30), (200, 200, 7)]
    index = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 3, 3]], dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([v for colour in palette for v in colour])
    image.save(tmp_path / "p.png")
    pixels = native(tmp_path / "p.png")
    assert pixels.shape == (3, 3, 4)
    assert np.array_equal(pixels.transpose(1, 2, 0), np.array(palette, dtype=np.uint8)[index])


def test_gray_palette_is_one_channel_with_exact_values(tmp_path):
    levels = np.array([0, 17, 99, 254, 255, 3], dtype=np.uint8)  # palette entry i is gray levels[i]
    index = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([v for level in levels for v in (level, level, level)])
    image.save(tmp_path / "gray.png")
    data = files_of([tmp_path / "gray.png"], in_memory=False)
    assert data.channels == 1
    assert np.array_equal(data[0]["inputs"][0].numpy(), levels[index])


def test_alpha_is_dropped(tmp_path):
    colour = rgb(3, 4)
    alpha = np.array([[0, 50, 100, 255]] * 3, dtype=np.uint8)
    Image.fromarray(np.dstack([colour, alpha]), "RGBA").save(tmp_path / "rgba.png")
    gray = colour[:, :, 0]
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    assert np.array_equal(native(tmp_path / "rgba.png").transpose(1, 2, 0), colour)
    assert np.array_equal(native(tmp_path / "la.png")[0], gray)


def test_cmyk_rgb_gray_and_one_bit(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [100, 50, 200, 30], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.frombytes("CMYK", (4, 1), cmyk.tobytes()).save(tmp_path / "cmyk.tif")
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    expected = 255 * (1 - c / 255) * (1 - k / 255)
    assert np.abs(native(tmp_path / "cmyk.tif").transpose(1, 2, 0) - expected).max() <= 1
    write_image(tmp_path / "rgb.png", rgb(4, 5))
    assert np.array_equal(native(tmp_path / "rgb.png").transpose(1, 2, 0), rgb(4, 5))
    bits = np.array([[0, 255, 255], [255, 0, 0]], dtype=np.uint8)
    Image.fromarray(bits).convert("1").save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    assert np.array_equal(native(tmp_path / "one.png")[0], bits)


def test_channels_one_only_when_every_image_is_gray(tmp_path):
    for name, pixels in {"a.png": rgb(4, 4)[:, :, 0], "b.png": rgb(4, 4, 5)[:, :, 1]}.items():
        write_image(tmp_path / "gray" / name, pixels)
    assert load("folder", "train", tmp_path / "gray", in_memory=False).shape == (1, 4, 4)
    write_image(tmp_path / "gray" / "c.png", rgb(4, 4))
    mixed = load("folder", "train", tmp_path / "gray", in_memory=False)
    assert mixed.shape == (3, 4, 4)
    assert np.array_equal(mixed[0]["inputs"].numpy(), np.repeat(rgb(4, 4)[None, :, :, 0], 3, axis=0))


def test_undecodable_file_names_the_file(tmp_path):
    write_image(tmp_path / "a.png", rgb(4, 4))
    data = load("folder", "train", tmp_path, in_memory=False)
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="a.png"):
        data[0]


# ---------------------------------------------------------------- eval mode


def test_eval_input_is_the_resized_centre_square(tmp_path):
    # reference (torchvision's Resize + CenterCrop): resize the whole image so that its shorter
    # side is 12, then crop the centre; the sizes are chosen so that the scale is exact. Off by
    # at most 1 (PIL rounds between its two passes); a box shifted by one pixel is off by >= 3.
    images = {"wide.png": (rgb(30, 50), (20, 12), (4, 0)), "tall.png": (rgb(40, 20, 9), (12, 24), (0, 6))}
    for name, (pixels, _, _) in images.items():
        write_image(tmp_path / name, pixels)
    data = files_of([tmp_path / name for name in images], image_size=12, in_memory=False)
    assert data.shape == (3, 12, 12)
    for i, (pixels, resized, (left, top)) in enumerate(images.values()):
        reference = Image.fromarray(pixels).resize(resized, Image.Resampling.BILINEAR)
        expected = np.asarray(reference.crop((left, top, left + 12, top + 12))).transpose(2, 0, 1)
        assert np.abs(data[i]["inputs"].numpy().astype(int) - expected).max() <= 1
        assert torch.equal(data[i]["inputs"], data[i]["inputs"])  # deterministic
    batch = data.collate([data[0], data[1]])
    assert batch["inputs"].shape == (2, 3, 12, 12) and batch["inputs"].dtype == torch.uint8
    assert batch["index"].tolist() == [0, 1] and "labels" not in batch


def test_draft_mode_is_close_to_a_full_decode(tmp_path):
    Image.fromarray(smooth(600, 800)).save(tmp_path / "big.jpg", quality=90)
    with Image.open(tmp_path / "big.jpg") as image:
        assert draft_reduction(image, [(600, 64)]) == 8  # 600 / 64 >= 8: decoded at 1/8
    with Image.open(tmp_path / "big.jpg") as image:
        assert draft_reduction(image, [(600, 64), (300, 64)]) == 4  # the smaller crop needs 1/4
    fast = decode_centre(str(tmp_path / "big.jpg"), 64, 3, draft=True).float()
    full = decode_centre(str(tmp_path / "big.jpg"), 64, 3, draft=False).float()
    assert 0 < (fast - full).abs().mean() < 2.0
    crop = (DecodeCrop(48, (0.2, 0.5), (0.75, 1.33), 0.5),)
    fast_crop = decode_crops(str(tmp_path / "big.jpg"), crop, 5, 3, draft=True)[0].float()
    full_crop = decode_crops(str(tmp_path / "big.jpg"), crop, 5, 3, draft=False)[0].float()
    assert (fast_crop - full_crop).abs().mean() < 2.0


# ---------------------------------------------------------------- training mode


def training_data(tmp_path: Path, crops: list) -> ImageFiles:
    write_image(tmp_path / "c" / "a.png", rgb(40, 60))
    write_image(tmp_path / "c" / "b.png", rgb(50, 30, 7))
    write_image(tmp_path / "d" / "e.png", rgb(33, 33, 3))
    data = load("folder", "train", tmp_path, image_size=16, in_memory=False)
    return data.with_decode_crops(crops)


def test_decode_crops_per_view_sizes_and_determinism(tmp_path):
    data = training_data(tmp_path, [RandomResizedCropFlip(24), RandomResizedCropFlip(24), RandomResizedCropFlip(8)])
    sample = data[SampleKey(1, 123)]
    assert [tuple(v.shape) for v in sample["inputs"]] == [(3, 24, 24), (3, 24, 24), (3, 8, 8)]
    assert sample["index"] == 1 and sample["labels"] == 0
    again = data[SampleKey(1, 123)]
    assert all(torch.equal(a, b) for a, b in zip(sample["inputs"], again["inputs"]))
    assert not torch.equal(sample["inputs"][0], sample["inputs"][1])  # views draw their own crops
    others = [data[SampleKey(1, seed)]["inputs"][0] for seed in range(5)]
    assert sum(not torch.equal(o, sample["inputs"][0]) for o in others) >= 4
    batch = data.collate([data[SampleKey(i, i)] for i in (2, 0)])
    assert [tuple(v.shape) for v in batch["inputs"]] == [(2, 3, 24, 24), (2, 3, 24, 24), (2, 3, 8, 8)]
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [2, 0]
    with pytest.raises(TypeError, match="SampleKey"):
        data[0]


def test_decode_crop_is_the_drawn_box_resized(tmp_path):
    data = training_data(tmp_path, [RandomResizedCropFlip(16, scale=(0.2, 0.6), flip_prob=0.0)])
    view = data[SampleKey(0, 77)]["inputs"][0]
    left, top, w, h, flip = data.crops[0].box(60, 40, crop_generator(77, 0))
    assert not flip
    expected = Image.fromarray(rgb(40, 60)).resize((16, 16), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    assert np.array_equal(view.numpy(), np.asarray(expected).transpose(2, 0, 1))


def test_crop_boxes_follow_scale_and_ratio_in_pixels():
    crop = DecodeCrop(32, scale=(0.1, 0.3), ratio=(3 / 4, 4 / 3), flip_prob=0.5)
    width, height = 200, 100
    boxes = [crop.box(width, height, crop_generator(seed, 0)) for seed in range(2000)]
    left, top, w, h, flip = (np.array(column, dtype=np.float64) for column in zip(*boxes))
    area, aspect = w * h / (width * height), w / h
    assert (left >= 0).all() and (top >= 0).all() and (left + w <= width).all() and (top + h <= height).all()
    assert area.min() > 0.1 - 0.01 and area.max() < 0.3 + 0.01
    assert aspect.min() > 0.75 - 0.03 and aspect.max() < 4 / 3 + 0.03  # pixels, not image fractions
    assert abs(area.mean() - 0.2) < 0.01  # area fraction ~ U(0.1, 0.3)
    assert abs(np.log(aspect).mean()) < 0.02  # log-ratio symmetric around 0
    assert abs(flip.mean() - 0.5) < 0.05
    centre = (left + w / 2) / width
    assert abs(centre.mean() - 0.5) < 0.02 and centre.std() > 0.2  # placed anywhere, not centred


def test_crop_falls_back_to_the_centre_at_the_clamped_ratio():
    crop = DecodeCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
    assert crop.box(60, 20, crop_generator(0, 0)) == (20, 0, 20, 20, False)  # no square of area 1200 fits


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_flip_prob_zero_never_one_always(tmp_path, flip_prob):
    # scale 1 at the image's own ratio: the box is the whole image, so only the flip varies
    data = training_data(tmp_path, [RandomResizedCropFlip(20, scale=(1.0, 1.0), ratio=(1.5, 1.5), flip_prob=flip_prob)])
    whole = np.asarray(Image.fromarray(rgb(40, 60)).resize((20, 20), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    expected = whole[:, :, ::-1] if flip_prob == 1.0 else whole
    for seed in range(20):
        assert np.array_equal(data[SampleKey(0, seed)]["inputs"][0].numpy(), expected)


# ---------------------------------------------------------------- loaders


def test_filelist_labelled_relative_absolute_comments(tmp_path):
    write_image(tmp_path / "img" / "a.png", rgb(6, 6))
    write_image(tmp_path / "img" / "b.png", rgb(6, 6, 1))
    write_image(tmp_path / "elsewhere" / "c.png", rgb(6, 6, 2))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text(
        f"# a comment\n\n../img/a.png 7\n../img/b.png   3\n{tmp_path / 'elsewhere' / 'c.png'}\t7\n")
    data = load("filelist", "train", tmp_path / "lists")
    assert isinstance(data, ImageData)  # small and one size: in memory
    assert data.classes == ("3", "7") and data.labels.tolist() == [1, 0, 1]
    assert np.array_equal(data.images[2].numpy().transpose(1, 2, 0), rgb(6, 6, 2))
    streamed = load("filelist", "train", tmp_path / "lists" / "train.txt", in_memory=False)
    assert isinstance(streamed, ImageFiles) and streamed.labels.tolist() == [1, 0, 1]
    assert torch.equal(streamed.collate([streamed[i] for i in range(3)])["inputs"], data.images)


def test_filelist_unlabelled(tmp_path):
    write_image(tmp_path / "a.png", rgb(6, 6))
    (tmp_path / "all.txt").write_text("a.png\na.png\n")
    data = load("filelist", "train", tmp_path / "all.txt")
    assert data.labels is None and data.classes == () and len(data) == 2


@pytest.mark.parametrize("text, match", [
    ("a.png 1\na.png 2 3\n", "train.txt:2"),
    ("a.png 1\n\na.png cat\n", "train.txt:3"),
    ("a.png 1\na.png\n", "line 1 has a label but line 2"),
    ("a.png\nmissing.png\n", "train.txt:2"),
    ("# only a comment\n", "lists no images"),
])
def test_filelist_errors_name_file_and_line(tmp_path, text, match):
    write_image(tmp_path / "a.png", rgb(6, 6))
    (tmp_path / "train.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        load("filelist", "train", tmp_path)


def test_filelist_splits(tmp_path):
    write_image(tmp_path / "a.png", rgb(6, 6))
    (tmp_path / "train.txt").write_text("a.png\n")
    with pytest.raises(DataError, match="test.txt"):
        load("filelist", "test", tmp_path)
    with pytest.raises(DataError, match="only serves split 'train'"):
        load("filelist", "test", tmp_path / "train.txt")


def write_mixed_folder(root: Path) -> None:
    write_image(root / "cat" / "a.png", rgb(20, 30))
    write_image(root / "cat" / "b.png", rgb(20, 30, 4))
    write_image(root / "dog" / "c.png", rgb(24, 16, 8))


def test_folder_in_memory_auto_switch(tmp_path, monkeypatch):
    for name, offset in [("cat/a.png", 0), ("cat/b.png", 4), ("dog/c.png", 8)]:
        write_image(tmp_path / "same" / name, rgb(20, 30, offset))
    auto = load("folder", "train", tmp_path / "same")
    assert isinstance(auto, ImageData) and auto.shape == (3, 20, 30)  # one size, small: whole images
    assert isinstance(load("folder", "train", tmp_path / "same", in_memory=False), ImageFiles)
    monkeypatch.setattr(stream, "IN_MEMORY_BYTES", 3 * 20 * 30 * 3 - 1)  # one byte short
    too_big = load("folder", "train", tmp_path / "same")
    assert isinstance(too_big, ImageFiles) and too_big.shape == (3, 20, 30)
    assert torch.equal(too_big.collate([too_big[i] for i in range(3)])["inputs"], auto.images)

    write_mixed_folder(tmp_path / "mixed")
    streamed = load("folder", "train", tmp_path / "mixed", image_size=16)
    assert isinstance(streamed, ImageFiles) and streamed.shape == (3, 16, 16)
    forced = load("folder", "train", tmp_path / "mixed", image_size=16, in_memory=True)
    assert isinstance(forced, ImageData) and forced.shape == (3, 16, 16)
    assert torch.equal(forced.images, streamed.collate([streamed[i] for i in range(3)])["inputs"])
    assert forced.labels.tolist() == streamed.labels.tolist() == [0, 0, 1]


@pytest.mark.parametrize("in_memory", [None, True, False])
def test_mixed_sizes_without_image_size_ask_for_it(tmp_path, in_memory):
    write_mixed_folder(tmp_path)
    with pytest.raises(DataError, match="data.image_size") as info:
        load("folder", "train", tmp_path, in_memory=in_memory)
    assert "c.png" in str(info.value) and "16x24" in str(info.value)


def test_subset_pickle_and_labels_without_decoding(tmp_path):
    write_mixed_folder(tmp_path)
    data = load("folder", "train", tmp_path, image_size=8, in_memory=False)
    part = data.subset(torch.tensor([2, 0]))
    assert isinstance(part, ImageFiles) and part.labels.tolist() == [1, 0]
    assert torch.equal(part[0]["inputs"], data[2]["inputs"]) and part[1]["index"] == 1
    mask = data.subset(torch.tensor([False, True, True]))
    assert [mask.path(i) for i in range(2)] == [data.path(1), data.path(2)]
    training = data.with_decode_crops([RandomResizedCropFlip(8)])
    for dataset in (data, training):
        blob = pickle.dumps(dataset)
        assert len(blob) < 2000 + 2 * sum(len(p) for p in dataset.paths)  # paths + a fixed overhead
        copy = pickle.loads(blob)
        key = SampleKey(1, 5) if dataset.crops else 1
        views = [copy[key]["inputs"], dataset[key]["inputs"]]
        assert all(torch.equal(a, b) for a, b in zip(*(v if isinstance(v, list) else [v] for v in views)))
    for path in tmp_path.rglob("*.png"):
        path.unlink()
    assert data.labels.tolist() == [0, 0, 1] and data.num_classes == 2  # known without the files
    with pytest.raises(DataError, match="a.png"):
        data[0]


def shared_inputs(data: ImageFiles, samples: list) -> torch.Tensor:
    """Whether ``data.collate`` put each input tensor of the batch in shared memory: ``(V,)`` bool."""
    inputs = data.collate(samples)["inputs"]
    return torch.tensor([x.is_shared() for x in (inputs if isinstance(inputs, list) else [inputs])])


def test_collate_stacks_into_shared_memory_in_a_worker_only(tmp_path):
    write_mixed_folder(tmp_path)
    data = load("folder", "train", tmp_path, image_size=8, in_memory=False)
    training = data.with_decode_crops([RandomResizedCropFlip(8), RandomResizedCropFlip(4)])
    for dataset, keys in ((data, [0, 2]), (training, [SampleKey(0, 1), SampleKey(2, 3)])):
        loader = DataLoader(dataset, batch_sampler=[keys], num_workers=1, collate_fn=partial(shared_inputs, dataset))
        assert next(iter(loader)).all()
        assert not shared_inputs(dataset, [dataset[k] for k in keys]).any()  # in this process: the heap
    batch = data.collate([data[0], data[2]])["inputs"]
    assert torch.equal(batch, torch.stack([data[0]["inputs"], data[2]["inputs"]]))


def test_streaming_paths_are_one_numpy_buffer(tmp_path):
    write_mixed_folder(tmp_path)
    data = load("folder", "train", tmp_path, image_size=8, in_memory=False)
    assert isinstance(data.paths, np.ndarray) and data.paths.dtype.kind == "S" and data.paths.shape == (3,)


def test_decode_crop_checks_its_parameters():
    with pytest.raises(ValueError, match="scale"):
        DecodeCrop.like(DecodeCrop(8, (0.5, 1.5), (1.0, 1.0), 0.5))
    assert DecodeCrop.like(RandomResizedCropFlip(8, scale=(0.2, 1.0), flip_prob=0.3)) == DecodeCrop(
        8, (0.2, 1.0), (3 / 4, 4 / 3), 0.3)
    assert math.isclose(DecodeCrop.like(RandomResizedCropFlip(8)).ratio[1], 4 / 3)
