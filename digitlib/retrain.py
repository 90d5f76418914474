"""The retrain pipeline, once: feedback export, training mix, fine-tuned candidate, comparison, decision, registry.

`retrain` runs it all: the feedback is exported (label checks on, suspect rows left out of
training; the held-out split keeps them, as feedback_export explains), the
current version is fine-tuned on MNIST plus the oversampled feedback, candidate and current are
compared side by side on the MNIST test set, the feedback held-out split and the trusted data
the feedback cannot touch (MNIST's validation split, the pen-digit dev set), the promotion rule
(registry.decide) judges, and the candidate is registered with that record (and promoted when
the rule says so). Notebook 4.0, `make retrain` and the feedback benchmarks all call it; the
steps (`training_mix`, `fine_tune_config`, `compare`) are public for tests and reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from digitlib import config, registry
from digitlib.dataset import Digits, load_mnist, train_val_split
from digitlib.drawings import drawings_to_digits, load_drawings
from digitlib.feedback_export import DEFAULT_HOLDOUT_FRACTION, FeedbackExport, export_training_set, load_export
from digitlib.modeling.checkpoint import LoadedModel, load_model
from digitlib.modeling.predict import evaluate
from digitlib.modeling.train import TrainConfig, TrainResult, save_training, train

MNIST_VALIDATION_SIZE = 5000  # held out of every fine-tune's MNIST share: trusted data for the gate
GATE_SETS = ("feedback_holdout", "mnist_test", *registry.TRUSTED_SETS)


@dataclass(frozen=True)
class RetrainSettings:
    """How a candidate is made and judged (notebook 4.0's parameters; benchmarks shrink the sizes)."""

    oversample: int = 10  # each feedback drawing is seen this many times per epoch (its weight against MNIST)
    mnist_subset: int | None = 20000  # MNIST training images mixed in (None: all but the validation images)
    epochs: int = 2
    lr: float = 3e-4  # low: fine-tuning the current model, not training from scratch
    batch_size: int = 128
    augment: str = "light"
    seed: int = 0
    device: str = "auto"
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    check_labels: bool = True  # judge the feedback's labels out of sample (digitlib.label_checks)
    keep_suspect: bool = False  # keep the rows the label checks suspect in the training set (listed either way)
    tolerance: float = 0.002  # accuracy the candidate may lose on MNIST test and each trusted set

    def train_overrides(self) -> dict:
        return {k: getattr(self, k) for k in ("epochs", "lr", "batch_size", "augment", "seed", "device")}


@dataclass
class ReferenceData:
    """The data every retrain uses besides the feedback: MNIST to mix in and the sets to compare on."""

    mnist_train: Digits  # MNIST training split less the validation images
    mnist_test: Digits
    mnist_validation: Digits  # trusted: never in a fine-tune's MNIST share
    drawings: Digits | None  # trusted: the pen-digit dev set (without it the rule refuses, naming it)
    reported: dict[str, Digits] = field(default_factory=dict)  # shown beside the others, not judged by the gate

    def fixed_sets(self) -> dict[str, Digits]:
        """Every set but the feedback held-out split (which changes with each export)."""
        sets = {"mnist_test": self.mnist_test, "mnist_validation": self.mnist_validation}
        return {**sets, **({"drawings": self.drawings} if self.drawings is not None else {}), **self.reported}

    def sets(self, feedback_holdout: Digits) -> dict[str, Digits]:
        fixed = self.fixed_sets()
        return {"mnist_test": fixed.pop("mnist_test"), "feedback_holdout": feedback_holdout, **fixed}


def reference_data(
    data_dir: str | Path | None = None,
    drawings_file: str | Path | None = None,
    mnist_test_size: int | None = None,
    mnist_validation_size: int | None = None,
    *,
    drawings: Digits | None = None,
    reported: dict[str, Digits] | None = None,
) -> ReferenceData:
    """MNIST (train less validation, test) and the pen-digit dev set (`drawings`, else read from
    `drawings_file` (default: the DRAWINGS_FILE setting) when it exists)."""
    mnist_train, mnist_validation = train_val_split(load_mnist("train", data_dir), MNIST_VALIDATION_SIZE, seed=0)
    if drawings is None:
        path = Path(drawings_file or config.DRAWINGS_FILE.get())
        drawings = drawings_to_digits(load_drawings(path)) if path.is_file() else None
    test = load_mnist("test", data_dir).head(mnist_test_size)
    return ReferenceData(mnist_train, test, mnist_validation.head(mnist_validation_size), drawings, reported or {})


# --- the steps --------------------------------------------------------------------------------------


def concat_digits(*parts: Digits) -> Digits:
    return Digits(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def training_mix(mnist: Digits, feedback: Digits, mnist_subset: int | None = None, oversample: int = 10) -> Digits:
    """MNIST (its first `mnist_subset` images) plus the feedback repeated `oversample` times.

    Repeating is the weighting: a few hundred drawings would be drowned in tens of thousands of
    MNIST digits. Order does not matter: training shuffles every epoch.
    """
    if oversample < 0:
        raise ValueError(f"oversample must be 0 or more, not {oversample}")
    repeated = feedback.subset(torch.arange(len(feedback)).repeat(oversample))
    return concat_digits(mnist.head(mnist_subset), repeated)


def fine_tune_config(base: LoadedModel, **overrides) -> TrainConfig:
    """Start from `base`'s weights: a short, gentle run (low learning rate, cosine decay)."""
    if base.path is None:
        raise ValueError("the base model must come from a model directory (load_model)")
    settings = {
        "arch": base.metadata["arch"],
        "init_from": str(base.path),
        "epochs": 2,
        "lr": 3e-4,
        "schedule": "cosine",
        "augment": "light",
        "val_size": 0,
        # Keep the base's outputs: a 10-output base stays one, an 11-output one keeps learning "not a digit".
        "negatives": TrainConfig.negatives if base.metadata.get("outputs", 10) > 10 else 0.0,
        # A fine-tune learns the feedback; the pen-like data of the from-scratch recipe would only slow it.
        "redraw": 0.0,
        "stroke_digits": 0.0,
        **overrides,
    }
    return TrainConfig(**settings)


def compare_models(models: dict[str, LoadedModel], sets: dict[str, Digits]) -> pd.DataFrame:
    """Accuracy of each model (columns) on each evaluation set (rows), with the set's size."""
    rows = {}
    for set_name, digits in sets.items():
        rows[set_name] = {"n": len(digits), **{m: evaluate(model, digits).accuracy for m, model in models.items()}}
    return pd.DataFrame.from_dict(rows, orient="index")


@dataclass
class Comparison:
    """Candidate and current side by side, and the promotion rule's decision on those figures."""

    against: str  # the version compared with (promotion requires it to be current still)
    table: pd.DataFrame  # rows: sets; columns: n, current, candidate
    decision: registry.Decision

    def record(self) -> dict:
        """What registry.register keeps as the version's comparison (and registry.promote checks)."""
        return {"against": self.against, "table": self.table.to_dict(), "decision": self.decision.to_dict()}


def compare(
    current: LoadedModel,
    candidate: LoadedModel,
    sets: dict[str, Digits],
    *,
    against: str,
    tolerance: float = RetrainSettings.tolerance,
    current_accuracy: dict[str, float] | None = None,
) -> Comparison:
    """Both models on every set, then registry.decide on the gate's sets.

    `current_accuracy` gives the current model's figures on sets it was already measured on (a
    benchmark making many candidates from one model); the others are measured here.
    """
    known = {k: v for k, v in (current_accuracy or {}).items() if k in sets}
    table = compare_models({"candidate": candidate}, sets)
    unknown = {k: d for k, d in sets.items() if k not in known}
    measured = compare_models({"current": current}, unknown)["current"].to_dict() if unknown else {}
    table.insert(1, "current", [known.get(k, measured.get(k)) for k in table.index])
    judged = [k for k in GATE_SETS if k in table.index]
    decision = registry.decide(*({k: float(table.loc[k, who]) for k in judged} for who in ("candidate", "current")),
                               tolerance=tolerance)  # fmt: skip
    return Comparison(against, table, decision)


# --- the pipeline -----------------------------------------------------------------------------------


@dataclass
class Retrain:
    """What one retrain made: the export, the training run, the comparison and what the registry did."""

    name: str
    parent: str
    manifest: dict
    export: FeedbackExport
    mix_size: int
    training: TrainResult
    comparison: Comparison
    candidate: LoadedModel
    registered: bool
    promoted: bool
    settings: RetrainSettings

    def report(self) -> dict:
        """The retrain report (reports/figures/<name>/retrain.json)."""
        return {"candidate": self.name, "parent": self.parent, "promoted": self.promoted, **self.comparison.record(),
                "settings": asdict(self.settings)}  # fmt: skip


def candidate_name() -> str:
    return f"feedback-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def retrain(
    url: str | None,
    export_dir: str | Path,
    data: ReferenceData,
    settings: RetrainSettings = RetrainSettings(),
    *,
    models_dir: str | Path | None = None,
    name: str | None = None,
    register: bool = True,
    promote: bool = True,
    progress: bool = True,
    current_accuracy: dict[str, float] | None = None,
) -> Retrain:
    """Export the feedback at `url`, fine-tune the current version on it, compare, decide, register.

    With `register`, the candidate is saved as models/<name> with its comparison record and
    promoted when the rule says so and `promote`; without, it stays in memory and models/ is
    left as it is (benchmarks). Raises FeedbackDataError when there is no usable feedback.
    """
    root = Path(models_dir) if models_dir else config.MODELS_DIR
    name = name or candidate_name()
    parent = registry.read_pointer(root).current
    current = load_model(root / parent)
    manifest = export_training_set(
        export_dir, url, settings.holdout_fraction, check_labels=settings.check_labels,
        keep_suspect=settings.keep_suspect, models_dir=root,
    )  # fmt: skip
    export = load_export(export_dir)
    mix = training_mix(data.mnist_train, export.train, settings.mnist_subset, settings.oversample)
    training = train(fine_tune_config(current, **settings.train_overrides()), mix, None, progress=progress)
    if register:
        candidate = load_model(save_training(training, root / name, {"parent": parent, "data_manifest": manifest}))
    else:
        candidate = training.as_loaded()
    comparison = compare(current, candidate, data.sets(export.holdout), against=parent,
                         tolerance=settings.tolerance, current_accuracy=current_accuracy)  # fmt: skip
    promoted = False
    if register:
        metrics = {k: float(v) for k, v in comparison.table["candidate"].items()}
        registry.register(name, parent=parent, metrics=metrics, data_manifest=manifest,
                          comparison=comparison.record(), models_dir=root)  # fmt: skip
        if promote and comparison.decision.promote:
            registry.promote(name, root)
            promoted = True
    return Retrain(name, parent, manifest, export, len(mix), training, comparison, candidate, register, promoted,
                   settings)  # fmt: skip
