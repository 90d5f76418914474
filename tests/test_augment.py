import pytest
import torch

from digitlib.augment import PRESETS, Augmentation, augment_batch, change_thickness, get_augmentation


def bar_image():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 4:24, 13:15] = 1.0  # a vertical stroke two pixels wide
    return x


def test_none_is_identity():
    x = bar_image()
    assert augment_batch(x, PRESETS["none"]) is x


def test_rotation_moves_ink_but_keeps_shape():
    x = bar_image()
    y = augment_batch(x, Augmentation(rotation=45), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)
    assert y.min() >= 0 and y.max() <= 1
    # Rotation keeps roughly the amount of ink (bilinear resampling blurs a little).
    assert abs(y.sum() / x.sum() - 1) < 0.2


def test_thickness_makes_ink_thicker_and_thinner():
    x = bar_image()
    thicker = change_thickness(x, torch.tensor([1.0, 1.0]))
    thinner = change_thickness(x, torch.tensor([-1.0, -1.0]))
    assert thicker.sum() > x.sum() * 1.5 and thinner.sum() < x.sum() * 0.5


def test_same_generator_seed_same_augmentation():
    x = bar_image()
    a = augment_batch(x, PRESETS["draw"], torch.Generator().manual_seed(1))
    b = augment_batch(x, PRESETS["draw"], torch.Generator().manual_seed(1))
    c = augment_batch(x, PRESETS["draw"], torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_get_augmentation_forms():
    assert get_augmentation("light") == PRESETS["light"]
    assert get_augmentation({"rotation": 5}).rotation == 5
    with pytest.raises(ValueError, match="unknown augmentation"):
        get_augmentation("wild")


def ring_image():
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    r = ((yy - 14) ** 2 / 81 + (xx - 14) ** 2 / 36).sqrt()
    return ((r - 1).abs() < 0.15).float().view(1, 1, 28, 28)


def test_variants_slash_zeros_and_flag_ones_only():
    x = torch.cat([ring_image(), ring_image(), bar_image()[:1]])
    labels = torch.tensor([0, 8, 1])
    y = augment_batch(x, Augmentation(variants=1.0), torch.Generator().manual_seed(0), labels)
    assert torch.equal(y[1], x[1])  # an 8 is left alone
    # The zero gains ink inside its ring (the slash crosses the hole).
    assert y[0, 0, 12:17, 12:17].sum() > x[0, 0, 12:17, 12:17].sum() + 2
    # The one gains ink left of its top.
    assert y[2, 0, 4:12, :13].sum() > 1


def test_variants_need_labels():
    x = ring_image()
    assert torch.equal(augment_batch(x, Augmentation(variants=1.0)), x)


def test_augmentation_from_a_string():
    assert get_augmentation("pen,elastic=1.5") == Augmentation(**{**PRESETS["pen"].to_dict(), "elastic": 1.5})
    assert get_augmentation("rotation=15, thickness=0.5") == Augmentation(rotation=15, thickness=0.5)
    with pytest.raises(ValueError, match="unknown augmentation field"):
        get_augmentation("wobble=2")
    with pytest.raises(ValueError, match="not a number"):
        get_augmentation("rotation=lots")
