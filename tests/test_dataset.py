import gzip
import shutil

import numpy as np
import pytest
import torch

from digitlib import config
from digitlib.dataset import (
    IMAGE_MAGIC,
    LABEL_MAGIC,
    DataError,
    Digits,
    find_mnist_dir,
    load_mnist,
    normalise,
    read_idx,
    train_val_split,
)


def write_idx(path, array, magic, compress=False):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / ("x.gz" if compress else "x"), images, IMAGE_MAGIC, compress)
    np.testing.assert_array_equal(read_idx(path, IMAGE_MAGIC), images)


def test_wrong_magic_is_refused_naming_the_file(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(10), LABEL_MAGIC)
    with pytest.raises(DataError, match=r"labels.*magic number"):
        read_idx(path, IMAGE_MAGIC)


def test_truncated_file_is_refused(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((3, 28, 28)), IMAGE_MAGIC)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"images.*truncated"):
        read_idx(path, IMAGE_MAGIC)


def test_corrupt_gzip_is_refused(tmp_path):
    good = write_idx(tmp_path / "good.gz", np.zeros((3, 28, 28)), IMAGE_MAGIC, compress=True)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(good.read_bytes()[:30])  # cut inside the compressed stream
    with pytest.raises(DataError, match="bad.gz.*corrupt or truncated"):
        read_idx(bad, IMAGE_MAGIC)


def test_real_mnist_shapes_and_labels(mnist_train, mnist_test):
    assert mnist_train.images.shape == (60_000, 28, 28) and mnist_train.images.dtype == torch.uint8
    assert mnist_test.images.shape == (10_000, 28, 28)
    assert mnist_train.labels.dtype == torch.int64
    assert torch.bincount(mnist_test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_wrong_count_in_a_split_is_refused(tmp_path, mnist_dir):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(mnist_dir / f"{name}.gz", tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((7, 28, 28)), IMAGE_MAGIC)
    with pytest.raises(DataError, match=r"t10k-images.*shape \(7, 28, 28\)"):
        load_mnist("test", tmp_path)


def test_missing_data_message_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setattr(config, "DATA_DIR", tmp_path)
    with pytest.raises(DataError) as e:
        find_mnist_dir(download=False)
    message = str(e.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "mnist") in message
    assert "MNIST_DIR" in message


def test_a_mnist_dir_setting_that_does_not_hold_mnist_is_an_error_not_a_fallback(tmp_path, monkeypatch, mnist_dir):
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"MNIST_DIR=.*nowhere: no such folder"):
        find_mnist_dir(download=False)
    for f in sorted(mnist_dir.glob("*.gz"))[1:]:  # three of the four files
        (tmp_path / f.name).symlink_to(f.resolve())
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"MNIST_DIR=.*t10k-images-idx3-ubyte\(\.gz\) is missing"):
        find_mnist_dir(download=True)  # nothing downloaded elsewhere either


def test_mnist_dir_setting_comes_first(tmp_path, monkeypatch, mnist_dir):
    for f in mnist_dir.glob("*.gz"):
        (tmp_path / f.name).symlink_to(f.resolve())
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    assert find_mnist_dir(download=False) == tmp_path


def test_split_is_disjoint_and_reproducible(mnist_test):
    train_a, val_a = train_val_split(mnist_test, 1000, seed=3)
    train_b, val_b = train_val_split(mnist_test, 1000, seed=3)
    assert len(train_a) == 9000 and len(val_a) == 1000
    assert torch.equal(val_a.labels, val_b.labels) and torch.equal(val_a.images, val_b.images)
    # No image is in both halves (compare by content hash of a few rows).
    seen = {bytes(img.numpy()) for img in train_a.images[:2000]}
    assert not any(bytes(img.numpy()) in seen for img in val_a.images)


def test_digits_refuses_mismatched_lengths():
    with pytest.raises(DataError):
        Digits(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))


def test_normalise_matches_mnist_statistics(mnist_train):
    x = normalise(mnist_train.images[:10_000])
    assert x.shape == (10_000, 1, 28, 28)
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02
