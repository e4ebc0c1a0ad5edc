"""Batched augmentations vs slow per-pixel references, gradients, pipelines and presets."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.data import augment as aug
from contrastlab.data.preprocess import Normalize
from contrastlab.data.spirograph import SpirographViews

SPEC_YIQ_TO_RGB = torch.tensor([[1, 0.956, 0.621], [1, -0.272, -0.647], [1, -1.107, 1.705]], dtype=torch.float64)


def images(*shape, seed=0, low=0.0, high=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=dtype)


def crop_params(center, size, flip):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return {"center": t(center), "size": t(size), "flip": t(flip)}


def jitter_params(b, c, s, h, apply=None):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return {
        "brightness": t(b),
        "contrast": t(c),
        "saturation": t(s),
        "hue": t(h),
        "apply": t(apply if apply is not None else [1.0] * len(b)),
    }


# ---------------------------------------------------------------- crop + flip


def reference_crop(x, params, out_size):
    """Per output pixel: map into the input box, clamp to the border, bilinear-interpolate."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, out_size, out_size, dtype=x.dtype)
    for n in range(b):
        cx, cy = params["center"][n].tolist()
        sx, sy = params["size"][n].tolist()
        sign = -1.0 if params["flip"][n] > 0.5 else 1.0
        for i in range(out_size):
            for j in range(out_size):
                u, v = (2 * j + 1) / out_size - 1, (2 * i + 1) / out_size - 1
                px = min(max(((cx + sign * sx * u) + 1) * w / 2 - 0.5, 0), w - 1)
                py = min(max(((cy + sy * v) + 1) * h / 2 - 0.5, 0), h - 1)
                x0, y0 = min(int(px), w - 2), min(int(py), h - 2)
                fx, fy = px - x0, py - y0
                out[n, :, i, j] = (
                    x[n, :, y0, x0] * (1 - fx) * (1 - fy)
                    + x[n, :, y0, x0 + 1] * fx * (1 - fy)
                    + x[n, :, y0 + 1, x0] * (1 - fx) * fy
                    + x[n, :, y0 + 1, x0 + 1] * fx * fy
                )
    return out


def test_crop_full_box_is_identity_and_flip_is_torch_flip():
    x = images(2, 3, 8, 8)
    crop = aug.RandomResizedCropFlip(8)
    full = crop_params([[0, 0], [0, 0]], [[1, 1], [1, 1]], [0, 0])
    torch.testing.assert_close(crop.apply(x, full), x, atol=1e-12, rtol=0)
    flipped = crop_params([[0, 0], [0, 0]], [[1, 1], [1, 1]], [1, 0])
    out = crop.apply(x, flipped)
    torch.testing.assert_close(out[0], torch.flip(x[0], dims=[2]), atol=1e-12, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("out_size", [8, 16])
def test_pixel_aligned_crop_matches_interpolate(out_size):
    x = images(2, 3, 32, 32)
    # rows 4..19, columns 8..23: centre (x, y) = (0, -0.25), half the image each way
    params = crop_params([[0.0, -0.25]] * 2, [[0.5, 0.5]] * 2, [0, 0])
    expected = F.interpolate(x[:, :, 4:20, 8:24], size=out_size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(aug.RandomResizedCropFlip(out_size).apply(x, params), expected, atol=1e-12, rtol=0)


def test_continuous_crop_with_flip_matches_loop_reference():
    x = images(2, 2, 6, 7)
    params = crop_params([[0.13, -0.21], [-0.3, 0.4]], [[0.61, 0.47], [0.55, 0.58]], [1, 0])
    torch.testing.assert_close(aug.RandomResizedCropFlip(5).apply(x, params), reference_crop(x, params, 5))


def test_crop_grid_equals_affine_grid():
    crop = aug.RandomResizedCropFlip(5)
    params = crop_params([[0.13, -0.21], [-0.3, 0.4]], [[0.61, 0.47], [0.55, 0.58]], [1, 0])
    sign = 1 - 2 * params["flip"]
    theta = torch.zeros(2, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 1, 1] = params["size"][:, 0] * sign, params["size"][:, 1]
    theta[:, :, 2] = params["center"]
    expected = F.affine_grid(theta, [2, 1, 5, 5], align_corners=False)
    torch.testing.assert_close(crop.sampling_grid(params, images(2, 1, 7, 7)), expected)


def test_crop_samples_fit_the_image_with_valid_scale_and_ratio():
    crop = aug.RandomResizedCropFlip(32, scale=(0.2, 0.9), ratio=(0.5, 2.0))
    p = crop.sample(4000, torch.Generator().manual_seed(0))
    w, h = p["size"].unbind(1)
    assert ((p["center"].abs() + p["size"]) <= 1 + 1e-6).all()
    assert ((w * h >= 0.2 - 1e-6) & (w * h <= 0.9 + 1e-6)).all()
    assert ((w / h >= 0.5 - 1e-5) & (w / h <= 2.0 + 1e-5)).all()
    assert 0.45 < p["flip"].mean() < 0.55 and set(p["flip"].unique().tolist()) == {0.0, 1.0}


def test_crop_gradient_wrt_box():
    x = images(1, 1, 6, 6, seed=1)
    center = torch.tensor([[0.11, -0.07]], dtype=torch.float64, requires_grad=True)
    size = torch.tensor([[0.63, 0.71]], dtype=torch.float64, requires_grad=True)
    flip = torch.ones(1, dtype=torch.float64)
    crop = aug.RandomResizedCropFlip(4)
    run = lambda c, s: crop.apply(x, {"center": c, "size": s, "flip": flip})  # noqa: E731
    assert torch.autograd.gradcheck(run, (center, size))


# ---------------------------------------------------------------- colour jitter


def reference_jitter(x, p, to_rgb):
    """Spec 3.3 per pixel with loops: brightness, contrast, saturation, YIQ hue rotation."""
    out = x.clone()
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    lum = lambda px: 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]  # noqa: E731
    to_yiq = aug.RGB_TO_YIQ.tolist()
    for n in range(x.shape[0]):
        b, c, s, h = (p[k][n].item() for k in ("brightness", "contrast", "saturation", "hue"))
        h_, w_ = x.shape[2:]
        img = [[[clip(b * x[n, k, i, j].item()) for j in range(w_)] for i in range(h_)] for k in range(3)]
        pixels = [(i, j) for i in range(x.shape[2]) for j in range(x.shape[3])]
        mean = sum(lum([img[k][i][j] for k in range(3)]) for i, j in pixels) / len(pixels)
        for i, j in pixels:
            rgb = [clip(c * img[k][i][j] + (1 - c) * mean) for k in range(3)]
            g = lum(rgb)
            rgb = [clip(s * v + (1 - s) * g) for v in rgb]
            y, i_, q = (sum(to_yiq[r][k] * rgb[k] for k in range(3)) for r in range(3))
            phi = 2 * math.pi * h
            yiq = [y, math.cos(phi) * i_ - math.sin(phi) * q, math.sin(phi) * i_ + math.cos(phi) * q]
            for k in range(3):
                out[n, k, i, j] = sum(to_rgb[k][r] * yiq[r] for r in range(3))
    return out


def test_jitter_matches_per_pixel_reference():
    x = images(2, 3, 4, 4, seed=2)
    p = jitter_params([1.3, 0.7], [0.6, 1.4], [1.2, 0.5], [0.08, -0.1])
    expected = reference_jitter(x, p, aug.YIQ_TO_RGB.tolist())
    torch.testing.assert_close(aug.ColorJitter.from_strength(0.5).apply(x, p), expected)
    # The exact inverse differs from the spec's rounded matrix only in the third decimal.
    torch.testing.assert_close(aug.YIQ_TO_RGB, SPEC_YIQ_TO_RGB, atol=3e-3, rtol=0)


@pytest.mark.parametrize("turns", [0.0, 1.0])
def test_zero_and_full_hue_rotation_are_identity(turns):
    x = images(2, 3, 5, 5, seed=3)
    p = jitter_params([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [turns, turns])
    torch.testing.assert_close(aug.ColorJitter(0.4, 0.4, 0.4, 0.1).apply(x, p), x, atol=1e-12, rtol=0)


def test_jitter_one_channel_applies_brightness_and_contrast_only():
    x = images(2, 1, 4, 4, seed=4, high=0.6)
    p = jitter_params([1.2, 0.9], [0.8, 1.1], [0.1, 1.9], [0.3, -0.3])
    b, c = p["brightness"].view(-1, 1, 1, 1), p["contrast"].view(-1, 1, 1, 1)
    bright = (b * x).clamp(0, 1)
    expected = (c * bright + (1 - c) * bright.mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
    torch.testing.assert_close(aug.ColorJitter(0.8, 0.8, 0.8, 0.2).apply(x, p), expected)


def test_jitter_gradient_wrt_factors():
    x = images(2, 3, 3, 3, seed=5, low=0.3, high=0.6)  # clamps stay inactive
    jitter = aug.ColorJitter(0.2, 0.2, 0.2, 0.1)
    values = ([1.1, 0.9], [0.95, 1.05], [1.1, 0.92], [0.05, -0.07])
    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    apply = torch.ones(2, dtype=torch.float64)

    def run(b, c, s, h):
        return jitter.apply(x, {"brightness": b, "contrast": c, "saturation": s, "hue": h, "apply": apply})

    assert torch.autograd.gradcheck(run, leaves)


def test_jitter_samples_ranges():
    p = aug.ColorJitter.from_strength(0.5, prob=0.8).sample(5000, torch.Generator().manual_seed(0))
    for key in ("brightness", "contrast", "saturation"):
        assert p[key].min() >= 0.6 and p[key].max() <= 1.4 and p[key].min() < 0.61 and p[key].max() > 1.39
    assert p["hue"].abs().max() <= 0.1 and p["hue"].abs().max() > 0.099
    assert 0.77 < p["apply"].mean() < 0.83


# ---------------------------------------------------------------- grayscale, blur, solarize


def test_grayscale_weights_and_indicator():
    x = images(2, 3, 3, 3, seed=6)
    out = aug.RandomGrayscale(0.5).apply(x, {"apply": torch.tensor([1.0, 0.0])})
    for i in range(3):
        for j in range(3):
            luma = 0.299 * x[0, 0, i, j] + 0.587 * x[0, 1, i, j] + 0.114 * x[0, 2, i, j]
            torch.testing.assert_close(out[0, :, i, j], luma.expand(3))
    torch.testing.assert_close(out[1], x[1])
    one = images(2, 1, 3, 3)
    torch.testing.assert_close(aug.RandomGrayscale(1.0).apply(one, {"apply": torch.ones(2)}), one)


def test_blur_of_delta_is_normalised_gaussian_per_sample():
    x = torch.zeros(2, 3, 15, 15, dtype=torch.float64)
    x[:, :, 7, 7] = 1.0
    sigmas = [0.7, 1.6]
    out = aug.GaussianBlur(1.0, kernel_size=7).apply(x, {"sigma": torch.tensor(sigmas), "apply": torch.ones(2)})
    for n, sigma in enumerate(sigmas):
        g = torch.tensor([math.exp(-(t**2) / (2 * sigma**2)) for t in range(-3, 4)], dtype=torch.float64)
        g = g / g.sum()
        expected = torch.zeros(15, 15, dtype=torch.float64)
        expected[4:11, 4:11] = torch.outer(g, g)
        for k in range(3):
            torch.testing.assert_close(out[n, k], expected)


def test_blur_kernel_side_and_sigma_gradient():
    blur = aug.GaussianBlur(0.5)
    assert [blur.side(s, s) for s in (8, 32, 96, 224)] == [3, 3, 9, 23]
    x = images(2, 2, 5, 5, seed=7)
    sigma = torch.tensor([0.6, 1.3], dtype=torch.float64, requires_grad=True)
    apply = torch.ones(2, dtype=torch.float64)
    run = lambda s: blur.apply(x, {"sigma": s, "apply": apply})  # noqa: E731
    assert torch.autograd.gradcheck(run, (sigma,), fast_mode=True)


def test_solarize_inverts_pixels_at_or_above_threshold():
    x = images(2, 3, 4, 4, seed=8)
    out = aug.Solarize(1.0).apply(x, {"apply": torch.tensor([1.0, 0.0])})
    for k in range(3):
        for i in range(4):
            for j in range(4):
                v = x[0, k, i, j].item()
                assert out[0, k, i, j].item() == pytest.approx(1 - v if v >= 0.5 else v)
    torch.testing.assert_close(out[1], x[1])


@pytest.mark.parametrize(
    "make",
    [
        lambda p: aug.ColorJitter.from_strength(1.0, prob=p),
        aug.RandomGrayscale,
        aug.GaussianBlur,
        aug.Solarize,
        lambda p: aug.RandomResizedCropFlip(8, flip_prob=p),
    ],
)
def test_probability_zero_is_identity_and_one_is_always(make):
    g = torch.Generator().manual_seed(0)
    key = "flip" if isinstance(make(0.0), aug.RandomResizedCropFlip) else "apply"
    assert make(0.0).sample(64, g)[key].sum() == 0
    assert make(1.0).sample(64, g)[key].sum() == 64
    if key == "apply":
        x = images(64, 3, 8, 8, dtype=torch.float32)
        torch.testing.assert_close(make(0.0).apply(x, make(0.0).sample(64, g)), x)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="blur probability must be a probability"):
        aug.GaussianBlur(1.5)
    with pytest.raises(ValueError, match="crop scale must lie in"):
        aug.RandomResizedCropFlip(8, scale=(0.5, 2.0))
    with pytest.raises(ValueError, match=r"expected images \(B, 1 or 3, H, W\)"):
        aug.RandomGrayscale(0.5).apply(torch.zeros(1, 2, 4, 4), {"apply": torch.ones(1)})


# ---------------------------------------------------------------- pipelines and presets


def uint8_batch(n=6, channels=3, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return {"inputs": images, "index": torch.arange(n)}


def test_pipeline_is_deterministic_for_a_generator_and_normalises():
    normalize = Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    view = aug.build_views("simclr-imagenet", image_size=12, channels=3, normalize=normalize, size=10)[0]
    batch = uint8_batch()
    first = view(batch, torch.Generator().manual_seed(3))
    assert first.shape == (6, 3, 10, 10) and first.dtype == torch.float32
    torch.testing.assert_close(view(batch, torch.Generator().manual_seed(3)), first)
    assert not torch.allclose(view(batch, torch.Generator().manual_seed(4)), first)
    params = view.sample(batch, torch.Generator().manual_seed(3))
    assert set(params) == {"crop", "jitter", "gray", "blur"}
    x = batch["inputs"].float() / 255
    for t in view.transforms:
        x = t.apply(x, params[t.name])
    mean, std = torch.tensor(normalize.mean).view(1, 3, 1, 1), torch.tensor(normalize.std).view(1, 3, 1, 1)
    torch.testing.assert_close(view.apply(batch, params), (x - mean) / std)


def test_cpu_chunking_gives_the_same_view_and_gradients(monkeypatch):
    normalize = Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    view = aug.build_views("byol", image_size=12, channels=3, normalize=normalize)[1]
    batch = uint8_batch(n=7)
    params = view.sample(batch, torch.Generator().manual_seed(0))
    params["jitter"]["hue"].requires_grad_(True)
    whole = view.apply(batch, params)
    (grad,) = torch.autograd.grad(whole.sum(), params["jitter"]["hue"])
    monkeypatch.setattr(aug, "CPU_CHUNK_VALUES", 1000)  # 432 values per image: chunks of 2, 2, 2, 1
    chunked = view.apply(batch, params)
    torch.testing.assert_close(chunked, whole)
    # float32 sums over a different grouping: a hue gradient near 0 can differ by ~5e-5 absolute
    torch.testing.assert_close(torch.autograd.grad(chunked.sum(), params["jitter"]["hue"])[0], grad,
                               atol=2e-4, rtol=1e-4)


def test_crop_only_identity_params_give_normalised_input():
    normalize = Normalize([0.5], [0.5])
    view = aug.build_views("crop-only", image_size=12, channels=1, normalize=normalize)[0]
    batch = uint8_batch(n=2, channels=1)
    params = {"crop": {"center": torch.zeros(2, 2), "size": torch.ones(2, 2), "flip": torch.zeros(2)}}
    torch.testing.assert_close(view.apply(batch, params), (batch["inputs"].float() / 255 - 0.5) / 0.5)


def test_one_channel_images_run_through_every_preset():
    for preset in ("simclr-cifar", "simclr-imagenet", "byol", "crop-only"):
        for view in aug.build_views(preset, image_size=12, channels=1, normalize=Normalize([0.5], [0.2])):
            assert view(uint8_batch(channels=1), torch.Generator().manual_seed(0)).shape == (6, 1, 12, 12)


def test_presets_build_the_documented_transforms():
    normalize = Normalize([0.5] * 3, [0.2] * 3)

    def describe(preset, **kwargs):
        views = aug.build_views(preset, image_size=32, channels=3, normalize=normalize, **kwargs)
        return [{t.name: t for t in v.transforms} for v in views]

    cifar = describe("simclr-cifar")
    assert [set(v) for v in cifar] == [{"crop", "jitter", "gray"}] * 2
    assert cifar[0]["jitter"].magnitudes["brightness"] == pytest.approx(0.4)
    assert cifar[0]["jitter"].hue == pytest.approx(0.1)
    assert cifar[0]["gray"].prob == 0.2 and cifar[0]["jitter"].prob == 0.8
    byol = describe("byol")
    assert set(byol[0]) == {"crop", "jitter", "gray", "blur"} and byol[0]["blur"].prob == 1.0
    assert byol[1]["blur"].prob == 0.1 and byol[1]["solarize"].prob == 0.2
    assert byol[0]["jitter"].magnitudes == pytest.approx({"brightness": 0.4, "contrast": 0.4, "saturation": 0.2})
    assert byol[0]["jitter"].hue == pytest.approx(0.1)
    assert [set(v) for v in describe("crop-only")] == [{"crop"}] * 2
    custom = describe(
        "simclr-imagenet", jitter_strength=0.25, blur_prob=(0.0, 0.3), size=24, crop_scale=(0.5, 1.0)
    )
    assert custom[0]["jitter"].magnitudes["contrast"] == pytest.approx(0.2) and "blur" not in custom[0]
    assert custom[1]["blur"].prob == 0.3 and custom[1]["crop"].size == 24 and custom[1]["crop"].scale == (0.5, 1.0)
    spiro = aug.build_views("spirograph", image_size=32, channels=3, normalize=normalize)
    assert len(spiro) == 2 and all(isinstance(v, SpirographViews) for v in spiro)


def test_build_views_rejects_bad_input():
    normalize = Normalize([0.5] * 3, [0.2] * 3)
    with pytest.raises(ValueError, match="preset 'simclr'; valid: gray-small, colour-small, gray-large, colour-large, simclr-cifar, simclr-imagenet, byol, crop-only"):
        aug.build_views("simclr", image_size=32, channels=3, normalize=normalize)
    with pytest.raises(ValueError, match="normalisation has 3 channels but images have 1"):
        aug.build_views("byol", image_size=32, channels=1, normalize=normalize)
    with pytest.raises(ValueError, match=r"views\[0\]: spirograph views render 3 x 32 x 32"):
        aug.build_views("spirograph", image_size=28, channels=3, normalize=normalize)
    with pytest.raises(ValueError, match="jitter_strength must be >= 0, got -1"):
        aug.build_views("byol", image_size=32, channels=3, normalize=normalize, jitter_strength=-1.0)
    with pytest.raises(ValueError, match=r"blur_prob must give one probability per view"):
        aug.build_views("byol", image_size=32, channels=3, normalize=normalize, blur_prob=(0.5,))
    view = aug.build_views("crop-only", image_size=12, channels=3, normalize=normalize)[0]
    with pytest.raises(ValueError, match=r"params lack \['crop'\]"):
        view.apply(uint8_batch(), {})
    with pytest.raises(ValueError, match=r"batch\['inputs'\] must be uint8"):
        view.apply({"inputs": torch.zeros(2, 3, 12, 12)}, view.sample(uint8_batch(n=2), torch.Generator()))
