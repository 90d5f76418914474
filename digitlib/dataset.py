"""MNIST from its IDX files straight into uint8 tensors, with a train/validation split.

The whole dataset lives in memory as tensors (47 MB): batches are slices, never per-image
decoding. The test set is kept apart for final evaluation only.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digitlib import config
from digitlib.preprocess import standardise

log = logging.getLogger(__name__)

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}


class DataError(Exception):
    """Data that is missing, corrupt or not what it claims to be."""


@dataclass
class Digits:
    """A set of 28x28 digit images (uint8, white ink on black) and their labels (int64)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index) -> Digits:
        return Digits(self.images[index], self.labels[index])

    def head(self, n: int | None) -> Digits:
        return self if n is None or n >= len(self) else self.subset(slice(0, n))

    def checksum(self) -> str:
        """SHA-256 over images and labels: records exactly which data a model saw."""
        digest = hashlib.sha256(self.images.numpy().tobytes())
        digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e}); the file is corrupt or truncated") from e


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file (raw or .gz) of unsigned bytes, checking magic number and sizes."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path}: magic number {magic:#010x}, expected {expected_magic:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(
            f"{path}: {len(data)} bytes but the header {shape} needs {expected}; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(name: str, directory: Path) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist_dir(download: bool = True) -> Path:
    """The first folder holding all four MNIST files; download into data/mnist if none does."""
    needed = [name for images, labels, _ in FILES.values() for name in (images, labels)]
    chosen = config.MNIST_DIR.get()
    if chosen:  # named by the operator: a missing file is an error, not a reason to look elsewhere
        directory = Path(chosen).expanduser()
        if not directory.is_dir():
            raise DataError(f"{config.MNIST_DIR.name}={directory}: no such folder (unset it to use data/mnist)")
        missing = [name for name in needed if not _find(name, directory)]
        if missing:
            raise DataError(
                f"{config.MNIST_DIR.name}={directory}: {directory / missing[0]}(.gz) is missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        return directory
    searched = config.mnist_search_dirs()
    for directory in searched:
        if all(_find(name, directory) for name in needed):
            return directory
    target = config.DATA_DIR / "mnist"
    if download:
        try:
            download_mnist(target)
            return target
        except Exception as e:  # offline, mirror down, disk full: fall through to the hint
            log.warning("MNIST download failed: %s", e)
    places = "\n  ".join(str(d) for d in searched)
    files = "\n  ".join(f"{n}.gz" for n in needed)
    raise DataError(
        f"MNIST not found. Put these four files (gzipped or raw):\n  {files}\n"
        f"into one of:\n  {places}\n"
        "or set MNIST_DIR to the folder holding them (see README, 'Data')."
    )


def download_mnist(target: Path) -> None:
    """Fetch the four files from torchvision's mirrors, checking their MD5 sums."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_url

    target.mkdir(parents=True, exist_ok=True)
    for filename, md5 in MNIST.resources:
        for mirror in MNIST.mirrors:
            try:
                download_url(f"{mirror}{filename}", str(target), filename=filename, md5=md5)
                break
            except Exception as e:
                log.warning("download of %s from %s failed: %s", filename, mirror, e)
        else:
            raise DataError(f"could not download {filename} from any mirror")


def load_mnist(split: str = "train", directory: str | Path | None = None, download: bool = True) -> Digits:
    """Load the MNIST `train` or `test` split as uint8 images (N, 28, 28) and int64 labels."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, not {split!r}")
    directory = Path(directory) if directory else find_mnist_dir(download)
    image_name, label_name, count = FILES[split]
    image_path, label_path = _find(image_name, directory), _find(label_name, directory)
    for name, path in ((image_name, image_path), (label_name, label_path)):
        if path is None:
            raise DataError(f"{directory / name}(.gz) is missing")
    images = read_idx(image_path, IMAGE_MAGIC)
    labels = read_idx(label_path, LABEL_MAGIC)
    if images.shape != (count, 28, 28):
        raise DataError(f"{image_path}: shape {images.shape}, expected {(count, 28, 28)}")
    if labels.shape != (count,):
        raise DataError(f"{label_path}: {labels.shape[0]} labels, expected {count}")
    if labels.max() > 9:
        raise DataError(f"{label_path}: label {labels.max()} outside 0-9")
    return Digits(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def train_val_split(digits: Digits, val_size: int = 5_000, seed: int = 0) -> tuple[Digits, Digits]:
    """Hold out a fixed random validation set from the training set (same seed, same split)."""
    if not 0 <= val_size < len(digits):
        raise ValueError(f"val_size must be in [0, {len(digits)}), not {val_size}")
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))
    return digits.subset(order[val_size:]), digits.subset(order[:val_size])


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), standardised as the models expect."""
    return standardise(images.float().div_(255.0).unsqueeze(1))
