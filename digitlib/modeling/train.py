"""Training: whole dataset as tensors on the device, batch augmentation, a per-epoch history.

The same code runs on CPU, CUDA and MPS; the device is chosen at run time.
"""

from __future__ import annotations

import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from digitlib import augment, config
from digitlib.dataset import Digits
from digitlib.modeling.checkpoint import (
    DIGITS,
    NOT_DIGIT,
    LoadedModel,
    arch_params_of,
    build_for,
    load_model,
    outputs_of,
    save_model,
)
from digitlib.modeling.models import DEFAULT_ARCH, Ensemble
from digitlib.preprocess import MNIST_MEAN, MNIST_STD, standardise


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class TrainConfig:
    """Everything that defines a training run; recorded in the model's metadata."""

    arch: str = _help("architecture: seed, vggbn or vggbn48", default=DEFAULT_ARCH)
    epochs: int = _help("passes over the training set", default=20)
    batch_size: int = _help("images per step", default=128)
    lr: float = _help("peak learning rate", default=3e-3)
    optimizer: str = _help("adamw, adam or sgd", default="adamw")
    weight_decay: float = _help("decoupled weight decay (AdamW) or L2 (SGD)", default=5e-4)
    schedule: str = _help("onecycle, cosine, step (x0.7 per epoch) or constant", default="onecycle")
    label_smoothing: float = _help("cross-entropy label smoothing", default=0.1)
    augment: str = _help("augmentation preset (none, light, pen, draw), fields: pen,elastic=1", default="pen")
    seed: int = _help("seed for weights, data order and augmentation", default=0)
    val_size: int = _help("validation images held out of the training set", default=5000)
    train_subset: int | None = _help("use only the first N training images", default=None)
    device: str = _help("auto, cpu, cuda or mps", default="auto")
    target_accuracy: float | None = _help("stop once validation accuracy reaches this", default=None)
    threads: int | None = _help("CPU threads (default: all cores)", default=None)
    init_from: str | None = _help("start from this model directory's weights (fine-tuning)", default=None)
    compile: bool = _help("torch.compile the model (worth it on a GPU for long runs)", default=False)
    precision: str = _help("auto (bf16 on Ampere+ GPUs and CPUs with bf16 instructions), bf16 or fp32", default="auto")
    negatives: float = _help(
        "generated non-digit drawings (an 11th class, 'not a digit') as a share of the training images; 0: digits only",
        default=0.2,
    )
    redraw: float = _help(
        "chance that a training digit is shown re-drawn along its skeleton with a round pen (pen_style)", default=0.25
    )
    stroke_digits: float = _help(
        "digits written in stroke space (stroke fonts, written variants; pen_style) as a share of the training images",
        default=0.2,
    )
    members: int = _help(
        "models trained with seeds seed, seed+1, ... whose logits are averaged (an ensemble)", default=1
    )

    def to_dict(self) -> dict:
        return asdict(self)


# Named recipes: `default` makes models/default (robust to drawn digits); `fast` is the
# quickest to 99.5% on MNIST on a CPU; `seed` reproduces the seed apps' training. On a GPU,
# small batches leave it waiting on Python, so its recipes take 512 images a step:
# `sprint` is one epoch to 99% and `fast-gpu` six to 99.5% (epochs measured on CPU).
RECIPES = {
    "default": TrainConfig(),
    "fast": TrainConfig(epochs=6, augment="light", label_smoothing=0.0, negatives=0.0, redraw=0.0, stroke_digits=0.0),
    # Label smoothing 0.1 lifts one epoch from 99.00-99.16% to 99.16-99.25% (4-5 seeds): a margin over 99%.
    "sprint": TrainConfig(
        epochs=1, batch_size=512, lr=1e-2, augment="none", negatives=0.0, redraw=0.0, stroke_digits=0.0
    ),
    "fast-gpu": TrainConfig(
        epochs=6,
        batch_size=512,
        lr=1e-2,
        augment="light",
        label_smoothing=0.0,
        negatives=0.0,
        redraw=0.0,
        stroke_digits=0.0,
    ),
    "seed": TrainConfig(
        arch="seed",
        epochs=5,
        lr=1e-3,
        optimizer="adam",
        schedule="constant",
        weight_decay=0.0,
        augment="none",
        negatives=0.0,
        redraw=0.0,
        stroke_digits=0.0,
    ),
}


def recipe(name: str, **overrides) -> TrainConfig:
    """A named recipe with some options changed."""
    try:
        base = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}") from None
    return replace(base, **overrides)


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    history: list[dict]
    device: str
    train_seconds: float  # time in training steps, validation excluded
    images_seen: int
    stopped_early: bool = False
    precision: str = "fp32"  # what "auto" chose: bf16 (autocast) or fp32
    hardware: str = ""  # the GPU or CPU model the timings were taken on
    extra: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)  # a saved run's version and path (TrainResult.from_saved)

    @classmethod
    def from_saved(cls, loaded: LoadedModel) -> TrainResult:
        """A saved training run as a result again (to join an ensemble): its weights and records."""
        meta = loaded.metadata
        if "training" not in meta:
            raise ValueError(f"{loaded.path}: no training record in its metadata")
        known = {f.name for f in fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in meta["training"].items() if k in known})
        seconds = float(meta.get("train_seconds", 0.0))
        return cls(
            loaded.model,
            cfg,
            meta.get("history", []),
            meta.get("device", "cpu"),
            seconds,
            round(seconds * float(meta.get("images_per_second", 0.0))),
            bool(meta.get("stopped_early", False)),
            meta.get("precision", "fp32"),
            meta.get("hardware", ""),
            {"outputs": outputs_of(meta)},
            {"version": loaded.version, "path": str(loaded.path)},
        )

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds else 0.0

    def as_loaded(self) -> LoadedModel:
        """The trained model ready for prediction (evaluation mode, same normalisation)."""
        self.model.eval()
        return LoadedModel(self.model, {"normalisation": {"mean": MNIST_MEAN, "std": MNIST_STD}, **self.extra})


def pick_device(requested: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless one is requested (here or by the DIGITLIB_DEVICE setting)."""
    if requested == "auto":
        requested = config.DEVICE.get()
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def hardware_name(device: torch.device) -> str:
    """What a run's speed depends on, e.g. "NVIDIA H100 80GB HBM3" or "AMD EPYC 9R14 (2 threads)".

    Machines sold as one kind differ (Intel with AMX, AMD with AVX512-BF16), so timings name it.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return f"{model or platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) under torchrun / torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases (standard practice; they are not weights to shrink).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}: adamw, adam or sgd")


def _scheduler(cfg: TrainConfig, opt, steps_per_epoch: int):
    """A per-step schedule (None for constant)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        if total < 4:
            return None  # too few steps to warm up and anneal: the peak rate throughout
        # The warm-up spans at least two steps: OneCycleLR divides by zero when it spans one
        # (a 5-step run at 0.2); from 10 steps on this is 0.2.
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=max(0.2, 2 / total))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.7 ** (step // steps_per_epoch))
    if cfg.schedule == "constant":
        return None
    raise ValueError(f"unknown schedule {cfg.schedule!r}: onecycle, cosine, step or constant")


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bf16 instructions: AMX tiles (Intel Xeon 4th generation on) or
    AVX512-BF16 (AMD Zen 4 on, Intel Cooper Lake). A training step is 1.7-2x faster in bf16 there
    (benchmarks/train_step_options.py); without them bf16 is converted in software, so fp32 stays."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, so looked up with care
    return any(check() for check in (getattr(torch.cpu, name, None) for name in checks) if check)


def _uses_bf16(precision: str, device: torch.device) -> bool:
    # bf16 autocast where the hardware multiplies bf16 natively; elsewhere fp32 is faster.
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}: auto, bf16 or fp32")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":  # Ampere on; older GPUs (T4, V100) only emulate bf16
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_multiplies_bf16()


def _to_model_input(images: torch.Tensor, aug: augment.Augmentation, generator, labels=None) -> torch.Tensor:
    x = images.float().div_(255.0).unsqueeze(1)
    x = augment.augment_batch(x, aug, generator, labels)
    return standardise(x).contiguous(memory_format=torch.channels_last)


def training_step(
    net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool, label_smoothing=0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step (forward in bf16 autocast if asked, loss in fp32); returns logits and loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return logits, loss


@torch.inference_mode()
def evaluate_loss_accuracy(model: nn.Module, digits: Digits, batch_size: int = 2000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on `digits` (already on the model's device).

    Accuracy is the top digit class, as test accuracy is measured: an 11-output model's "not a
    digit" is decided by the calibrated threshold, not by its raw top output.
    """
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(digits), batch_size):
        x = _to_model_input(digits.images[i : i + batch_size], augment.PRESETS["none"], None)
        y = digits.labels[i : i + batch_size]
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits[:, :DIGITS].argmax(1) == y).sum().item()
    n = max(len(digits), 1)
    return loss_sum / n, correct / n


def _initial_model(cfg: TrainConfig, outputs: int) -> nn.Module:
    """Fresh weights, or a saved model's when fine-tuning (`init_from`, same architecture).

    A 10-output model fine-tuned with negatives keeps its digit weights and gains an 11th
    output, started so that it says "not a digit" rarely (bias -4).
    """
    if cfg.init_from is None:
        return build_for(cfg.arch, {}, outputs)
    base = load_model(cfg.init_from, expect_arch=cfg.arch)
    model, base_outputs = base.model, outputs_of(base.metadata)
    if base_outputs == outputs:
        return model  # an ensemble is fine-tuned whole: its members learn from the averaged logits
    if base_outputs != DIGITS or outputs != DIGITS + 1 or isinstance(model, Ensemble):
        raise ValueError(f"cannot fine-tune a {base_outputs}-output model into a {outputs}-output one")
    last = model[-1]
    wider = nn.Linear(last.in_features, outputs)
    with torch.no_grad():
        wider.weight[:DIGITS] = last.weight
        wider.bias[:DIGITS] = last.bias
        wider.weight[DIGITS].normal_(0, 0.01)
        wider.bias[DIGITS] = -4.0
    model[-1] = wider
    return model


NEGATIVE_SEED = 1_000  # generated negatives: training ones from seed + this, held-out ones from seed + 2x this
VAL_NEGATIVES = 3_000
CLEAN_TRAIN_LOSS_IMAGES = 5_000  # training images whose loss is also measured as the validation loss is


STROKE_DIGIT_SEED = 4_000


def with_stroke_digits(digits: Digits, share: float, seed: int) -> Digits:
    """`digits` plus share * len(digits) digits written in stroke space (pen_style.stroke_digit_images)."""
    from digitlib.pen_style import stroke_digit_images

    n = round(share * len(digits))
    if n <= 0:
        return digits
    images, labels = stroke_digit_images(n, seed + STROKE_DIGIT_SEED, config.DATA_DIR / "cache")
    device = digits.images.device
    return Digits(
        torch.cat([digits.images, torch.from_numpy(images).to(device)]),
        torch.cat([digits.labels, torch.from_numpy(labels).to(device)]),
    )


def redrawn_images(digits: Digits, share: float, seed: int) -> torch.Tensor | None:
    """Each of `digits`' images re-drawn with a pen (pen_style.redraw_images), or None when `share` is 0."""
    from digitlib.pen_style import redraw_images

    if share <= 0:
        return None
    redrawn = redraw_images(digits.images.cpu().numpy(), seed, config.DATA_DIR / "cache")
    return torch.from_numpy(redrawn).to(digits.images.device)


def with_negatives(digits: Digits, share: float, seed: int) -> Digits:
    """`digits` plus share * len(digits) generated non-digit drawings labelled NOT_DIGIT (10)."""
    from digitlib.negatives import negative_images

    n = round(share * len(digits))
    if n <= 0:
        return digits
    images = torch.from_numpy(negative_images(n, seed + NEGATIVE_SEED, part="train")).to(digits.images.device)
    labels = torch.full((n,), NOT_DIGIT, dtype=digits.labels.dtype, device=digits.labels.device)
    return Digits(torch.cat([digits.images, images]), torch.cat([digits.labels, labels]))


@torch.inference_mode()
def _logits(model: nn.Module, images: torch.Tensor, aug: augment.Augmentation, generator=None, labels=None):
    model.eval()
    out = []
    for i in range(0, len(images), 2000):
        y = None if labels is None else labels[i : i + 2000]
        out.append(model(_to_model_input(images[i : i + 2000], aug, generator, y)).float().cpu())
    return torch.cat(out)


def calibrate(model: nn.Module, cfg: TrainConfig, val_digits: Digits) -> dict:
    """Fit the calibration and the not-digit operating point on validation data (digitlib.calibration)."""
    from digitlib import calibration
    from digitlib.negatives import negative_images

    device = next(model.parameters()).device
    logits = _logits(model, val_digits.images, augment.PRESETS["none"])
    negatives = hard = None
    if cfg.negatives > 0:
        n = min(VAL_NEGATIVES, len(val_digits))
        held_out = negative_images(n, cfg.seed + 2 * NEGATIVE_SEED, part="validation")
        negatives = _logits(model, torch.from_numpy(held_out).to(device), augment.PRESETS["none"])
        # The same validation digits drawn as the pen augmentation draws them: the operating point's set.
        generator = torch.Generator(device=device).manual_seed(cfg.seed + 3 * NEGATIVE_SEED)
        pen = augment.get_augmentation("pen")
        hard = _logits(model, val_digits.images, pen, generator, val_digits.labels)
    pen_logits = pen_sites = None
    drawings_file = Path(config.DRAWINGS_FILE.get())
    if cfg.negatives > 0 and drawings_file.is_file():  # the digits visitors draw: where "not a digit" is set
        from digitlib.drawings import drawings_to_digits, load_drawings

        drawn = [d for d in load_drawings(drawings_file) if d.label is not None]
        images = drawings_to_digits(drawn).images.to(device)
        pen_logits, pen_sites = _logits(model, images, augment.PRESETS["none"]), [d.source for d in drawn]
    return calibration.fit(logits, val_digits.labels.cpu(), negatives, hard, pen_digits=pen_logits, pen_sites=pen_sites)


EpochCallback = Callable[[dict, nn.Module], None]


def train(
    cfg: TrainConfig,
    train_digits: Digits,
    val_digits: Digits | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a fresh model (or `cfg.members` of them, an Ensemble); returns it with its per-epoch history.

    `on_epoch(record, model)` is called after each epoch (benchmarks use it to test the model
    as it trains, outside the timed part). Under torchrun each process trains on its share of
    every epoch and DistributedDataParallel keeps the copies equal; `batch_size` is per process.
    An ensemble's members are trained one after the other with seeds seed, seed+1, ...; its
    history has a `member` entry (1, 2, ...) in each record.
    """
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.members < 1:
        raise ValueError("epochs, batch_size and members must be at least 1")
    if cfg.members == 1:
        return _train_one(cfg, train_digits, val_digits, on_epoch, progress)
    if cfg.init_from is not None:
        raise ValueError("init_from fine-tunes the saved model (an ensemble too) as it is: members must be 1")
    members = []
    for i in range(cfg.members):
        member_cfg = replace(cfg, seed=cfg.seed + i, members=1)
        if progress and distributed_rank_world()[0] == 0:
            tqdm.write(f"ensemble member {i + 1}/{cfg.members} (seed {member_cfg.seed})")
        members.append(_train_one(member_cfg, train_digits, val_digits, on_epoch, progress, calibrated=False))
    return ensemble_result(members, cfg, val_digits)


def ensemble_result(members: list[TrainResult], cfg: TrainConfig, val_digits: Digits | None = None) -> TrainResult:
    """Trained members as one Ensemble, measured and calibrated on `val_digits` as a single model is."""
    if len({m.extra.get("outputs", DIGITS) for m in members}) != 1 or len({m.config.arch for m in members}) != 1:
        raise ValueError("ensemble members must share an architecture and their outputs")
    if any(m.config.members != 1 or isinstance(m.model, Ensemble) for m in members):
        raise ValueError("members must be single models, not ensembles")
    validated = val_digits is not None and len(val_digits)
    if len({m.config.val_size for m in members}) != 1 or (validated and members[0].config.val_size < 1):
        # The ensemble is calibrated on the validation images: no member may have trained on them.
        raise ValueError("members must hold out the same validation images (val_size) to be calibrated together")
    model = Ensemble([m.model for m in members]).eval()
    history = [{"member": i, **record} for i, m in enumerate(members, 1) for record in m.history]
    extra = {"outputs": members[0].extra.get("outputs", DIGITS)}
    extra["members"] = [{"seed": m.config.seed, **m.origin} for m in members]
    if validated and distributed_rank_world()[0] == 0:
        device = pick_device(cfg.device)
        model.to(device)
        val_digits = Digits(val_digits.images.to(device), val_digits.labels.to(device))
        for record, member in zip(extra["members"], model.members, strict=True):  # all measured alike, now
            record["val_accuracy"] = evaluate_loss_accuracy(member, val_digits)[1]
        extra["val_loss"], extra["val_accuracy"] = evaluate_loss_accuracy(model, val_digits)
        extra.update(calibrate(model, cfg, val_digits))
    first = members[0]
    return TrainResult(
        model.cpu(),
        replace(cfg, members=len(members)),
        history,
        first.device,
        sum(m.train_seconds for m in members),
        sum(m.images_seen for m in members),
        any(m.stopped_early for m in members),
        first.precision,
        first.hardware,
        extra,
    )


def _train_one(
    cfg: TrainConfig,
    train_digits: Digits,
    val_digits: Digits | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    calibrated: bool = True,
) -> TrainResult:
    """Train one model; `calibrated`: fit its calibration on `val_digits` (an ensemble's members are not)."""
    device = pick_device(cfg.device)
    rank, world = distributed_rank_world()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: one GPU per process
    if device.type == "cuda":
        # Fixed batch shapes: let cuDNN time its kernels once and keep the fastest; TF32 for fp32 matmuls.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))  # cores shared by processes
    seed_everything(cfg.seed)
    aug = augment.get_augmentation(cfg.augment)
    train_digits = train_digits.head(cfg.train_subset)
    train_digits = Digits(train_digits.images.to(device), train_digits.labels.to(device))
    # The same digits, measured each epoch as the validation set is (no augmentation, no smoothing).
    clean_train = train_digits.head(CLEAN_TRAIN_LOSS_IMAGES)
    outputs = DIGITS + 1 if cfg.negatives > 0 else DIGITS
    # Pen re-drawings of the MNIST digits; the images added below (stroke digits, negatives) are
    # already pen drawings, so they stand in for their own.
    redrawn = redrawn_images(train_digits, cfg.redraw, cfg.seed)
    mnist_count = len(train_digits)
    train_digits = with_stroke_digits(train_digits, cfg.stroke_digits, cfg.seed)
    train_digits = with_negatives(train_digits, cfg.negatives, cfg.seed)
    if redrawn is not None:
        redrawn = torch.cat([redrawn, train_digits.images[mnist_count:]])
    if val_digits is not None:
        val_digits = Digits(val_digits.images.to(device), val_digits.labels.to(device))

    model = _initial_model(cfg, outputs).to(device).to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model)
    per_rank = len(train_digits) // world
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    sched = _scheduler(cfg, opt, steps_per_epoch)
    # Same data order on every process (each takes its share); augmentation differs per process.
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    aug_generator = generator if world == 1 else torch.Generator(device=device).manual_seed(cfg.seed + 1 + rank)
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    bf16 = _uses_bf16(cfg.precision, device)

    history: list[dict] = []
    train_seconds, images_seen, stopped = 0.0, 0, False
    progress = progress and rank == 0  # one progress bar, however many processes
    # A live bar (a widget in Lab) and a text line per epoch; reports run by papermill set
    # DIGITLIB_PROGRESS=lines: only the lines, which the executed notebook and its HTML keep.
    bar = progress and os.environ.get("DIGITLIB_PROGRESS") != "lines"
    epochs = tqdm(range(1, cfg.epochs + 1), desc="epochs", unit="epoch", disable=not bar)
    for epoch in epochs:
        net.train()
        order = torch.randperm(len(train_digits), device=device, generator=generator)[rank::world][:per_rank]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        start = time.perf_counter()
        batches = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=not bar)
        for step in batches:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            y = train_digits.labels[idx]
            images = train_digits.images[idx]
            if redrawn is not None:
                pen = torch.rand(len(idx), device=device, generator=aug_generator) < cfg.redraw
                images = torch.where(pen.view(-1, 1, 1), redrawn[idx], images)
            x = _to_model_input(images, aug, aug_generator, y)
            logits, loss = training_step(net, opt, x, y, bf16, cfg.label_smoothing)
            if sched is not None:
                sched.step()
            # Accumulate on the device: no host sync per step.
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if world > 1:
            for total in (loss_sum, correct):
                dist.all_reduce(total)
        seen = per_rank * world
        train_seconds += seconds
        images_seen += seen
        record = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / seen,
            "train_accuracy": correct.item() / seen,
            "lr": opt.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_second": seen / seconds,
        }
        val_start = time.perf_counter()
        record["train_clean_loss"], record["train_clean_accuracy"] = evaluate_loss_accuracy(model, clean_train)
        if val_digits is not None and len(val_digits):
            record["val_loss"], record["val_accuracy"] = evaluate_loss_accuracy(model, val_digits)
        history.append(record)
        epochs.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k.endswith(("loss", "accuracy"))})
        if progress:
            epochs.write(epoch_line(record, cfg.epochs, time.perf_counter() - val_start))
        if on_epoch:
            on_epoch(record, model)
        if cfg.target_accuracy and record.get("val_accuracy", 0) >= cfg.target_accuracy:
            stopped = True
            break
    model.eval()
    extra = {"outputs": outputs}
    if val_digits is not None and len(val_digits) and rank == 0 and calibrated:
        extra.update(calibrate(model, cfg, val_digits))
    precision = "bf16" if bf16 else "fp32"
    hardware = hardware_name(device)
    return TrainResult(
        model.cpu(), cfg, history, str(device), train_seconds, images_seen, stopped, precision, hardware, extra
    )


def epoch_line(record: dict, epochs: int, val_seconds: float = 0.0) -> str:
    """One epoch as text: losses, accuracies, learning rate at its end, and where the time went."""
    train_part = f"train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.2%}"
    if "train_clean_loss" in record:  # the same measure as the validation loss
        train_part += f" (unaugmented {record['train_clean_loss']:.4f})"
    parts = [f"epoch {record['epoch']}/{epochs}: {train_part}"]
    if "val_accuracy" in record:
        parts.append(f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.2%}")
    timing = f"{record['seconds']:.1f} s training"
    timing += f" + {val_seconds:.1f} s validation" if "val_accuracy" in record else ""
    parts.append(f"lr {record['lr']:.2e}, {timing} ({record['images_per_second']:,.0f} images/s)")
    return ", ".join(parts)


def save_training(result: TrainResult, directory: str | Path, extra_metadata: dict | None = None) -> Path:
    """Save a trained model with its configuration, history and timings."""
    meta = {
        "arch": result.config.arch,
        "arch_params": arch_params_of(result.model),
        "training": result.config.to_dict(),
        "history": result.history,
        "device": result.device,
        "precision": result.precision,
        "hardware": result.hardware,
        "train_seconds": round(result.train_seconds, 2),
        "images_per_second": round(result.images_per_second, 1),
        "stopped_early": result.stopped_early,
        "torch_version": torch.__version__,
        **result.extra,  # outputs, calibration, rejection
        **(extra_metadata or {}),
    }
    return save_model(result.model, directory, meta)
