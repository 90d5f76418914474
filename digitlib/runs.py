"""The record of a training run: the model directory (weights, metadata) with metrics.json beside it.

`digitlib train` and notebook 1.0 both record their runs here, so a model trained either way
carries the same provenance and figures (the registry, sweeps and the evaluate notebook read them).
"""

from __future__ import annotations

from pathlib import Path

from digitlib import experiments
from digitlib.dataset import Digits
from digitlib.modeling.predict import evaluate
from digitlib.modeling.train import TrainResult, save_training


def record_training_run(
    result: TrainResult, model_dir: str | Path, trained_on: Digits, test: Digits | None = None, **provenance
) -> dict:
    """Save `result` into `model_dir` and write its metrics.json; returns those metrics.

    `trained_on`: the digits the training and validation sets came from (their checksum is kept);
    `test`: digits to report test figures on (None: none); `provenance`: what made the run
    (`command=`, `recipe=`, `notebook=`...), kept in the metadata as given.
    """
    test_summary = evaluate(result.as_loaded(), test).summary() if test is not None else None
    metrics = experiments.training_metrics(result, test_summary)
    record = {"data_checksum": trained_on.checksum(), **provenance, "metrics": {"test": metrics}}
    model_dir = save_training(result, model_dir, record)
    experiments.write_metrics(model_dir / experiments.METRICS_FILE, metrics)
    return metrics
