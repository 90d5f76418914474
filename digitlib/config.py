"""Every path and setting of the project in one place.

Paths are built from the package's own location, so notebooks, the CLI and the dashboard
agree wherever they are started from. Settings come from the environment, with defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJ_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJ_ROOT / "data"
MODELS_DIR = PROJ_ROOT / "models"
REPORTS_DIR = PROJ_ROOT / "reports"
FIGURES_DIR = REPORTS_DIR / "figures"
NOTEBOOKS_DIR = PROJ_ROOT / "notebooks"
# Read-only data shared beside a checkout (development machines and CI).
SHARED_DATA_DIR = PROJ_ROOT.parent / "shared" / "data"

DEFAULT_MODEL_DIR = MODELS_DIR / "default"


@dataclass(frozen=True)
class Setting:
    """One environment setting: its name, default and purpose (listed in the README)."""

    name: str
    default: str
    help: str

    def get(self) -> str:
        return os.environ.get(self.name) or self.default


MNIST_DIR = Setting("MNIST_DIR", "", "Folder holding the four MNIST IDX files (.gz or raw).")
# Unset, the registry decides (registry.resolve_model_dir): its current version, else models/default.
MODEL_DIR = Setting(
    "DIGITLIB_MODEL",
    "",
    "Model directory used by default (unset: the registry's current version, else models/default).",
)
DRAWINGS_FILE = Setting(
    "DRAWINGS_FILE",
    str(SHARED_DATA_DIR / "pen-digits" / "unipen-dev.jsonl"),
    "Recorded drawings (JSON lines) used to evaluate on digits people drew.",
)
DATABASE_URL = Setting(
    "DATABASE_URL",
    f"sqlite:///{DATA_DIR / 'feedback.db'}",
    "SQLAlchemy URL of the feedback store (SQLite file by default, or postgresql+psycopg2://...).",
)
DEVICE = Setting("DIGITLIB_DEVICE", "auto", "Torch device for training: auto, cpu, cuda or mps.")
SUBMIT_RATE = Setting(
    "DIGITLIB_SUBMIT_RATE",
    "20",
    "Answers one dashboard session may store per minute (a token bucket refilled at this rate).",
)
SUBMIT_BURST = Setting(
    "DIGITLIB_SUBMIT_BURST", "5", "Answers one dashboard session may store in a quick burst before the rate applies."
)

ONNX_CHECK = Setting(
    "DIGITLIB_ONNX_CHECK",
    "",
    "Images of each check set an ONNX export is compared on (unset: all of MNIST test and the pen digits).",
)

# The Voila server (digitlib/voila_guard.py), read when it starts.
POOL_SIZE = Setting(
    "DIGITLIB_POOL_SIZE", "2", "Preheated dashboard kernels kept ready (unset: voila.json's default_pool_size, 2)."
)
KERNEL_ZYGOTE = Setting(
    "DIGITLIB_KERNEL_ZYGOTE",
    "1",
    "Dashboard kernels are forks of a process that has imported their modules (0: each starts cold).",
)
MAX_KERNELS = Setting(
    "DIGITLIB_MAX_KERNELS", "40", "Visitor kernels the dashboard runs at once; beyond it a busy page (HTTP 503)."
)
MAX_KERNELS_PER_CLIENT = Setting(
    "DIGITLIB_MAX_KERNELS_PER_CLIENT",
    "10",
    "Visitor kernels one client address may hold (a school behind one address: raise it).",
)
TRUSTED_PROXIES = Setting(
    "DIGITLIB_TRUSTED_PROXIES",
    "127.0.0.0/8,::1",
    "Proxies (addresses or networks) whose X-Forwarded-For names the visitor, for the per-client cap.",
)

SETTINGS = (
    MNIST_DIR,
    MODEL_DIR,
    DRAWINGS_FILE,
    DATABASE_URL,
    DEVICE,
    SUBMIT_RATE,
    SUBMIT_BURST,
    ONNX_CHECK,
    POOL_SIZE,
    KERNEL_ZYGOTE,
    MAX_KERNELS,
    MAX_KERNELS_PER_CLIENT,
    TRUSTED_PROXIES,
)


def mnist_search_dirs() -> list[Path]:
    """Where MNIST is looked for, in order: the MNIST_DIR setting, then data/mnist/."""
    dirs = []
    if MNIST_DIR.get():
        dirs.append(Path(MNIST_DIR.get()).expanduser())
    dirs.append(DATA_DIR / "mnist")
    return dirs
