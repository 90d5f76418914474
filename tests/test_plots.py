"""Figures: what each one draws (bars, labels, captions) and the calibration numbers behind them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from digitlib import plots
from digitlib.dataset import Digits
from digitlib.drawings import DrawingsEvaluation
from digitlib.modeling.predict import Evaluation


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def one_hot_evaluation(predictions: list[int], labels: list[int], confidence: float = 0.9) -> Evaluation:
    """Probabilities with `confidence` on each prediction, the rest spread evenly."""
    probs = torch.full((len(labels), 10), (1 - confidence) / 9)
    probs[torch.arange(len(labels)), torch.tensor(predictions)] = confidence
    return Evaluation(probs, torch.tensor(labels))


def digits_of(labels: list[int]) -> Digits:
    images = torch.stack([torch.full((28, 28), 10 * label, dtype=torch.uint8) for label in labels])
    return Digits(images, torch.tensor(labels))


def image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_save_figure_writes_a_png_and_creates_folders(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = plots.save_figure(fig, tmp_path / "a" / "b" / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_grid_shows_every_class_in_its_own_column():
    digits = digits_of([d for d in range(10) for _ in range(7)])
    fig = plots.sample_grid(digits, per_class=3)
    shown = image_axes(fig)
    assert len(shown) == 30
    # Row-major grid: the first row holds one digit of each class, labelled on top.
    assert [ax.get_title() for ax in shown[:10]] == [str(d) for d in range(10)]
    first_row_pixels = [int(ax.images[0].get_array()[0, 0]) for ax in shown[:10]]
    assert first_row_pixels == [10 * d for d in range(10)]


def test_training_curves_plot_train_and_validation_per_epoch():
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.8, "val_accuracy": 0.7 + e / 100}
        for e in (1, 2, 3)
    ]
    fig = plots.training_curves(history)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "validation"]
    assert list(acc_ax.lines[1].get_ydata()) == pytest.approx([0.71, 0.72, 0.73])
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3]


def test_training_curves_without_validation_draw_only_training():
    fig = plots.training_curves([{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9}])
    assert [line.get_label() for line in fig.axes[0].lines] == ["train"]


def test_confusion_heatmap_writes_every_nonzero_count():
    cm = torch.zeros(10, 10, dtype=torch.long)
    cm[3, 3], cm[3, 5], cm[9, 4] = 97, 2, 1
    fig = plots.confusion_matrix_heatmap(cm)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert texts == {"97", "2", "1"}
    assert fig.axes[0].get_xlabel() == "predicted digit"


def test_per_class_bars_label_accuracy_and_leave_missing_classes_empty():
    per_class = [0.99, 0.98, None, 0.9, 1.0, 0.97, 0.96, 0.95, 0.94, 0.93]
    fig = plots.per_class_accuracy_bars(per_class)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels[0] == "99.0%" and labels[2] == "" and labels[3] == "90.0%"
    # Zoomed to where the bars differ, not 0-1.
    assert ax.get_ylim()[0] == pytest.approx(0.85)


def test_misclassified_grid_captions_prediction_confidence_and_truth():
    ev = one_hot_evaluation(predictions=[1, 7, 2, 8], labels=[1, 1, 2, 3], confidence=0.8)
    ev.probabilities[3] = torch.full((10,), 0.05)
    ev.probabilities[3, 8] = 0.55
    fig = plots.misclassified_grid(digits_of([1, 1, 2, 3]), ev)
    shown = image_axes(fig)
    assert [ax.get_title() for ax in shown] == ["pred 7 (80%)\ntrue 1", "pred 8 (55%)\ntrue 3"]
    assert "2 most confident of 2 errors" in fig._suptitle.get_text()


def test_misclassified_grid_without_errors_says_so():
    ev = one_hot_evaluation([1, 2], [1, 2])
    fig = plots.misclassified_grid(digits_of([1, 2]), ev)
    assert not image_axes(fig)
    assert any("nothing to show" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_reliability_bins_count_confidence_accuracy_and_ece():
    confidence = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([True, True, True, False, True, False])
    frame = plots.reliability_bins(confidence, correct, bins=10)
    assert frame["count"].sum() == 6
    top, middle = frame.iloc[9], frame.iloc[5]
    assert (top["count"], top["accuracy"]) == (4, 0.75)
    assert (middle["count"], middle["accuracy"]) == (2, 0.5)
    # ECE: (4 * |0.75 - 0.95| + 2 * |0.5 - 0.55|) / 6
    assert frame.attrs["ece"] == pytest.approx((4 * 0.2 + 2 * 0.05) / 6)
    assert frame["accuracy"].isna().sum() == 8


def test_reliability_bins_put_edges_in_the_lower_bin():
    frame = plots.reliability_bins(torch.tensor([0.1, 1.0, 0.0]), torch.tensor([True, True, False]), bins=10)
    assert frame["count"].tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1]


def test_reliability_diagram_shows_ece_and_diagonal():
    ev = one_hot_evaluation([1, 2, 3, 4], [1, 2, 3, 5], confidence=0.9)
    fig = plots.reliability_diagram(plots.reliability_bins(ev.confidence, ev.correct))
    assert "ECE 15.00%" in fig.axes[0].get_title()
    assert any(list(line.get_xdata()) == [0, 1] for line in fig.axes[0].lines)


def test_per_site_bars_show_accuracy_count_and_overall_line():
    fig = plots.per_site_accuracy_bars({"apa": {"accuracy": 0.5, "n": 4}, "ced": {"accuracy": 1.0, "n": 2}}, 2 / 3)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["apa", "ced"]
    assert [t.get_text() for t in ax.texts] == ["50.0%\n4 digits", "100.0%\n2 digits"]
    assert ax.get_legend().get_texts()[0].get_text() == "all sites 66.7%"


def test_drawing_errors_grid_shows_model_input_with_site():
    ev = one_hot_evaluation([3, 4, 5], [3, 9, 5], confidence=0.7)
    digits = digits_of([3, 9, 5])
    fig = plots.drawing_errors_grid(DrawingsEvaluation(ev, ["apa", "ced", "apa"], digits))
    (shown,) = image_axes(fig)
    assert shown.get_title() == "pred 4 (70%)\ntrue 9 ced"
    assert int(shown.images[0].get_array()[0, 0]) == 90  # the image of the wrong drawing


def test_sweep_comparison_marks_failed_runs_and_zooms_on_the_finished_ones():
    table = pd.DataFrame(
        {"run_name": ["a", "b", "c"], "status": ["ok", "failed", "ok"], "val_accuracy": [0.9, None, 0.95]}
    )
    fig = plots.sweep_comparison(table.assign(label=["a\nlr=1", "b\nlr=2", "c\nlr=3"]))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["90.00%", "95.00%", "failed"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a\nlr=1", "b\nlr=2", "c\nlr=3"]
    assert [bar.get_height() for bar in ax.patches] == pytest.approx([0.9, 0.0, 0.95])
    assert ax.get_ylim()[0] == pytest.approx(0.85)


def test_sweep_comparison_of_failed_runs_only_still_draws():
    fig = plots.sweep_comparison(pd.DataFrame({"run_name": ["a"], "status": ["failed"], "val_accuracy": [None]}))
    assert [t.get_text() for t in fig.axes[0].texts if t.get_text()] == ["failed"]
    assert fig.axes[0].get_ylim()[0] == 0.0


# --- figures that explain themselves -------------------------------------------------------------


def test_reliability_diagram_defines_ece_and_the_sides_of_the_diagonal():
    bins = plots.reliability_bins(torch.tensor([0.95, 0.95, 0.55, 0.55]), torch.tensor([True, True, True, False]))
    fig = plots.reliability_diagram(bins, "MNIST test set: reliability")
    ax = fig.axes[0]
    assert ax.get_title().startswith("MNIST test set: reliability (ECE")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    # The red dots sit at the bin's accuracy, across at its mean confidence.
    assert "bin at its mean confidence" in labels and "accuracy of the bin" in labels
    (dots,) = [line for line in ax.lines if line.get_color() == "tab:red"]
    assert list(dots.get_ydata()[~pd.isna(dots.get_ydata())]) == pytest.approx([0.5, 1.0])
    note = " ".join(t.get_text() for t in fig.texts)
    assert "ECE, expected calibration error" in note
    assert "Above the diagonal" in note and "under-confident" in note and "over-confident" in note


def test_confusion_matrix_colour_bar_reads_in_counts():
    counts = torch.diag(torch.tensor([980, 1130, 1020, 1000, 980, 890, 950, 1020, 970, 1000]))
    counts[4, 9] = 7
    fig = plots.confusion_matrix_heatmap(counts, "MNIST test set: confusion matrix")
    bar = fig.axes[1]
    assert bar.get_ylabel() == "images (log scale)"
    assert [t.get_text() for t in bar.get_yticklabels()] == ["0", "1", "10", "100", "1,000"]
    assert fig.axes[0].get_title() == "MNIST test set: confusion matrix"


def test_per_site_bars_say_what_a_site_is_and_keep_labels_clear_of_the_mean_line():
    per_source = {"apa": {"accuracy": 0.98, "n": 692}, "imp": {"accuracy": 1.0, "n": 257}}
    fig = plots.per_site_accuracy_bars(per_source, overall=0.985, writers={"apa": 12, "imp": 5})
    ax = fig.axes[0]
    assert ax.get_title() == "UNIPEN pen digits: accuracy per contributing site"
    assert "institution" in ax.get_xlabel() and "UNIPEN" in ax.get_xlabel()
    labels = [t for t in ax.texts if t.get_text()]
    assert [t.get_text() for t in labels] == ["98.0%\n692 digits\n12 writers", "100.0%\n257 digits\n5 writers"]
    # Inside the bars, well below the dashed line of all sites.
    assert all(t.get_position()[1] < 0.6 for t in labels)


def test_zoomed_accuracy_axes_say_so():
    table = pd.DataFrame({"run_name": ["a", "b"], "status": ["ok", "ok"], "val_accuracy": [0.97, 0.52]})
    assert plots.sweep_comparison(table).axes[0].get_ylabel() == "val_accuracy (zoomed: axis from 47%)"
    bars = plots.per_class_accuracy_bars([0.9] * 10).axes[0]
    assert bars.get_ylabel() == "accuracy (zoomed: axis from 85%)"
    assert plots.per_class_accuracy_bars([0.01] * 10).axes[0].get_ylabel() == "accuracy"
