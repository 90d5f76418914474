"""Every figure of the project: digits, training curves, evaluation, sweeps and feedback.

Each function returns a matplotlib Figure and draws nothing else, so notebooks show it inline
and `save_figure` writes it under reports/figures/. Figures are made with pyplot so that
Jupyter's inline backend displays them; scripts close them after saving.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from digitlib.dataset import Digits
from digitlib.modeling.predict import Evaluation

DIGITS = list(range(10))


def _zoomed(label: str, low: float) -> str:
    """An axis label that says when the axis does not start at 0."""
    return f"{label} (zoomed: axis from {low:.0%})" if low > 0 else label


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as PNG (creating folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def digit_grid(images: torch.Tensor, captions: Sequence[str] = (), columns: int = 10, title: str = "") -> Figure:
    """uint8 images (N, 28, 28) in a grid, white ink on black as the model sees them."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].cpu().numpy(), cmap="gray", vmin=0, vmax=255)
            if i < len(captions):
                ax.set_title(captions[i], fontsize=8)
    if title:
        fig.suptitle(title)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=axes.flat[0].transAxes)
    fig.tight_layout()
    return fig


def sample_grid(digits: Digits, per_class: int = 5, seed: int = 0) -> Figure:
    """Random digits of each class, one column per class (labelled on top)."""
    generator = torch.Generator().manual_seed(seed)
    per_class = min(per_class, *(int((digits.labels == label).sum()) for label in DIGITS))
    columns = []
    for label in DIGITS:
        index = (digits.labels == label).nonzero().flatten()
        columns.append(index[torch.randperm(len(index), generator=generator)[:per_class]])
    # Row-major order of the grid: row r holds sample r of every class.
    chosen = torch.stack(columns, dim=1).flatten()
    captions = [str(label) for label in DIGITS]
    return digit_grid(digits.images[chosen], captions, columns=10, title="Sample training digits")


def training_curves(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch, training and validation side by side (an ensemble: a line per member)."""
    frame = pd.DataFrame(history)
    if "member" not in frame:
        frame["member"] = 1
    members = sorted(frame["member"].unique())
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    # train: the augmented, label-smoothed batches as trained; train_clean: training digits measured
    # as validation is (no augmentation, no smoothing), the one to compare with validation.
    names = {"train": "train", "train_clean": "train (measured as validation)", "val": "validation"}
    if "train_clean_loss" in frame:
        names["train"] = "train (augmented, smoothed)"
    markers = "os^vD"
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for colour, (split, label) in enumerate(names.items()):
            column = f"{split}_{metric}"
            if column not in frame:
                continue
            for k, member in enumerate(members):
                rows = frame[frame["member"] == member]
                name = label if len(members) == 1 else f"{label}, member {member}"
                ax.plot(rows["epoch"], rows[column], marker=markers[k % 5], color=f"C{colour}", label=name)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric.capitalize()} per epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    if len(members) == 1:
        for ax in (loss_ax, acc_ax):
            ax.legend()
        fig.tight_layout()
        return fig
    # An ensemble: one legend under both plots, colour for the split and marker for the member,
    # instead of a legend entry per line covering the curves.
    present = [(c, label) for c, (split, label) in enumerate(names.items()) if f"{split}_loss" in frame]
    handles = [Line2D([], [], color=f"C{c}", label=label) for c, label in present]
    handles += [
        Line2D([], [], color="grey", marker=markers[k % 5], linestyle="", label=f"member {member}")
        for k, member in enumerate(members)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=max(len(present), len(members)), frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def confusion_matrix_heatmap(confusion: torch.Tensor | np.ndarray, title: str = "Confusion matrix") -> Figure:
    """Counts with rows = truth and columns = prediction; colour on a log scale so errors show.

    Name the data set in `title` (e.g. "MNIST test set: confusion matrix").
    """
    counts = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    # Linear below 1, logarithmic above: zeros stay white and the colour bar reads in counts.
    norm = SymLogNorm(linthresh=1, vmin=0, vmax=max(int(counts.max()), 10))
    image = ax.imshow(counts, cmap="Blues", norm=norm)
    for (row, col), value in np.ndenumerate(counts):
        if value:
            colour = "white" if norm(value) > 0.5 else "black"
            ax.text(col, row, str(value), ha="center", va="center", fontsize=7, color=colour)
    ax.set(xticks=DIGITS, yticks=DIGITS, xlabel="predicted digit", ylabel="true digit", title=title)
    bar = fig.colorbar(image, ax=ax, label="images (log scale)")
    bar.set_ticks([t for t in (0, 1, 10, 100, 1000, 10_000, 100_000) if t <= norm.vmax])
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    fig.tight_layout()
    return fig


def per_class_accuracy_bars(per_class: Sequence[float | None], title: str = "Accuracy per digit") -> Figure:
    """One bar per digit, labelled with its accuracy; a missing class is left empty."""
    values = [np.nan if v is None else v for v in per_class]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar([str(d) for d in DIGITS], values, color="tab:blue")
    ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1%}" for v in values], fontsize=7)
    finite = [v for v in values if not np.isnan(v)]
    # Zoom in on the range where the bars differ; a full 0-1 axis hides a 1% gap.
    low = max(0.0, min(finite, default=0.0) - 0.05)
    ax.set(ylim=(low, 1.0), xlabel="digit", ylabel=_zoomed("accuracy", low), title=title)
    fig.tight_layout()
    return fig


def misclassified_grid(digits: Digits, evaluation: Evaluation, limit: int = 30, columns: int = 10) -> Figure:
    """The most confident mistakes: each image captioned 'pred P (conf%) / true T'."""
    index = evaluation.misclassified()[:limit]
    captions = [
        f"pred {evaluation.predictions[i]} ({evaluation.confidence[i]:.0%})\ntrue {evaluation.labels[i]}"
        for i in index.tolist()
    ]
    title = f"{len(index)} most confident of {int((~evaluation.correct).sum())} errors"
    return digit_grid(digits.images[index], captions, columns=columns, title=title)


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> pd.DataFrame:
    """Per confidence bin: count, mean confidence and accuracy; `ece` in the frame's attrs.

    The expected calibration error (ECE) is the count-weighted gap between the two.
    """
    conf = confidence.float().numpy()
    hit = correct.double().numpy()
    # Edges in the confidences' own precision, so a confidence of 0.1 lands where 0.1 is.
    edges = np.linspace(0, 1, bins + 1, dtype=conf.dtype)
    # Bin i holds (edge i, edge i+1]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(conf[in_bin].mean()) if count else np.nan,
                "accuracy": hit[in_bin].mean() if count else np.nan,
            }
        )
    frame = pd.DataFrame(rows)
    filled = frame[frame["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    frame.attrs["ece"] = float((gaps * filled["count"]).sum() / max(len(conf), 1))
    return frame


RELIABILITY_NOTE = (
    "Above the diagonal: right more often than its confidence says (under-confident); below: over-confident.\n"
    "ECE, expected calibration error: the gap |accuracy - mean confidence| of each bin,\n"
    "averaged over the bins weighted by their share of the images (0 = confidence means what it says)."
)


def reliability_diagram(calibration: pd.DataFrame, title: str = "Reliability") -> Figure:
    """Accuracy against confidence per bin (from `reliability_bins`); the diagonal is perfect.

    Name the data set in `title`; the figure explains the diagonal and defines ECE underneath.
    """
    frame = calibration
    fig, (ax, count_ax) = plt.subplots(2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = frame["high"].iloc[0] - frame["low"].iloc[0]
    ax.bar(frame["low"], frame["accuracy"], width=width, align="edge", edgecolor="black", label="accuracy of the bin")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration (accuracy = confidence)")
    # Each dot sits at the bin's accuracy (height) and mean confidence (across): its gap to the
    # diagonal is the bin's calibration error.
    ax.plot(frame["confidence"], frame["accuracy"], "o", color="tab:red", label="bin at its mean confidence")
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title=f"{title} (ECE {frame.attrs['ece']:.2%})")
    ax.legend(loc="upper left", fontsize=8)
    count_ax.bar(frame["low"], frame["count"], width=width, align="edge", color="gray")
    filled = frame["count"][frame["count"] > 0]
    # Log scale when the counts span decades (most images sit in the top bin), else plain.
    scale = "log" if len(filled) and filled.max() >= 10 * filled.min() else "linear"
    count_ax.set(yscale=scale, xlabel="confidence (probability of the predicted digit)", ylabel="images", xlim=(0, 1))
    count_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    count_ax.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.text(0.02, 0.01, RELIABILITY_NOTE, fontsize=7.5, va="bottom", ha="left")
    return fig


def per_site_accuracy_bars(
    per_source: dict[str, dict],
    overall: float | None = None,
    writers: dict[str, int] | None = None,
    dataset: str = "UNIPEN pen digits",
) -> Figure:
    """Accuracy on drawn digits per site, with each site's digits (and writers when given).

    A site is an institution that contributed its writers' digits to UNIPEN (apa, app, ...).
    """
    sites = list(per_source)
    accuracy = [per_source[s]["accuracy"] for s in sites]
    fig, ax = plt.subplots(figsize=(max(6, 1 + 1.1 * len(sites)), 4.2))
    bars = ax.bar(sites, accuracy, color="tab:green")
    labels = []
    for site, value in zip(sites, accuracy, strict=True):
        who = f"\n{writers[site]} writers" if writers and site in writers else ""
        labels.append(f"{value:.1%}\n{per_source[site]['n']:,} digits{who}")
    # Inside the bars, half-way up: clear of the dashed mean line near their tops.
    ax.bar_label(bars, labels=labels, label_type="center", color="white", fontsize=8, fontweight="bold")
    title = f"{dataset}: accuracy per contributing site"
    if overall is not None:
        ax.axhline(overall, linestyle="--", color="gray", label=f"all sites {overall:.1%}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set(ylim=(0, 1.12), ylabel="accuracy", title=title)
    ax.set_xlabel("site: an institution that contributed its writers' digits to UNIPEN", fontsize=9)
    fig.tight_layout()
    return fig


def drawing_errors_grid(result, limit: int = 30, columns: int = 10) -> Figure:
    """Drawn digits the model got wrong, as the model saw them (after preprocessing).

    `result` is a digitlib.drawings.DrawingsEvaluation; captions add the site.
    """
    ev = result.evaluation
    index = ev.misclassified()[:limit].tolist()
    captions = [
        f"pred {ev.predictions[i]} ({ev.confidence[i]:.0%})\ntrue {ev.labels[i]} {result.sources[i]}" for i in index
    ]
    title = f"{len(index)} most confident of {int((~ev.correct).sum())} errors on drawn digits (model input)"
    return digit_grid(result.digits.images[index], captions, columns=columns, title=title)


def sweep_comparison(table: pd.DataFrame, metric: str = "val_accuracy") -> Figure:
    """One bar per run of a sweep: `metric` for finished runs, a red 'failed' mark otherwise.

    Bars are named by the `label` column when there is one (else `run_name`).
    """
    runs = table.reset_index(drop=True)
    ok = (runs["status"] == "ok").tolist()
    values = pd.to_numeric(runs.get(metric), errors="coerce").where(runs["status"] == "ok")
    labels = runs["label"] if "label" in runs else runs["run_name"]
    fig, ax = plt.subplots(figsize=(max(5, 1 + 1.3 * len(runs)), 4.2))
    bars = ax.bar(range(len(runs)), values.fillna(0.0), color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2%}" if good else "" for v, good in zip(values, ok, strict=True)])
    # Zoom in on the range where runs differ: most sweeps compare accuracies within a few percent.
    low = max(0.0, values.min() - 0.05) if values.notna().any() else 0.0
    ax.set(ylim=(low, 1.0 + (1.0 - low) * 0.08), ylabel=_zoomed(metric, low), title=f"Sweep comparison: {metric}")
    ax.set_xticks(range(len(runs)), labels, fontsize=8)
    for x, good in enumerate(ok):
        if not good:
            ax.text(x, low + (1 - low) * 0.05, "failed", ha="center", color="tab:red", fontweight="bold")
    fig.tight_layout()
    return fig


# --- feedback: what visitors said, and retraining with it ---------------------------------------


def submissions_figure(frame: pd.DataFrame, freq: str = "D") -> Figure:
    """Answers per period (bars) and the share of them saying the model was right (line)."""
    per_period = frame.set_index("created_at").resample(freq)["correct"].agg(["size", "mean"])
    times = per_period.index.tz_localize(None)  # matplotlib's date axis counts in days
    spacing = (times[1] - times[0]) if len(times) > 1 else pd.Timedelta(hours=1)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(times, per_period["size"], width=0.8 * spacing / pd.Timedelta(days=1), color="tab:blue")
    ax.set(ylabel="answers", title="Feedback over time")
    right = ax.twinx()
    right.plot(times, per_period["mean"], "o-", color="tab:green")
    right.set(ylim=(0, 1.05), ylabel="share said correct")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def version_accuracy_figure(table: pd.DataFrame) -> Figure:
    """Share of answers saying the model was right, per model version (from `accuracy_per_version`)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(table)), 3.5))
    bars = ax.bar(range(len(table)), table["accuracy"], color="tab:green")
    ax.bar_label(bars, labels=[f"{a:.0%}\nn={n}" for a, n in zip(table["accuracy"], table["n"], strict=True)])
    ax.set_xticks(range(len(table)), [str(v)[-24:] for v in table.index], rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.2), ylabel="said correct", title="Accuracy per model version (visitors' answers)")
    fig.tight_layout()
    return fig


def misrecognised_gallery(frame: pd.DataFrame, limit: int = 30) -> Figure:
    """Drawings the model got wrong, most confident first, as the model saw them."""
    wrong = frame[~frame["correct"]].sort_values("confidence", ascending=False).head(limit)
    images = torch.from_numpy(np.stack(wrong["image"].to_list())) if len(wrong) else torch.empty(0, 28, 28)
    captions = [f"pred {p} ({c:.0%})\ntrue {t}" for p, c, t in zip(wrong["predicted"], wrong["confidence"],
                                                                    wrong["true_label"], strict=True)]  # fmt: skip
    title = f"{len(wrong)} most confident of {int((~frame['correct']).sum())} misrecognised drawings"
    return digit_grid(images, captions, title=title)


def comparison_figure(table: pd.DataFrame, title: str = "Candidate and current model") -> Figure:
    """Grouped bars: accuracy per evaluation set, one bar per model."""
    models = [c for c in table.columns if c != "n"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        bars = ax.bar(np.arange(len(table)) + i * width, table[model], width, label=model)
        ax.bar_label(bars, labels=[f"{a:.1%}" for a in table[model]], fontsize=8)
    ax.set_xticks(np.arange(len(table)) + width * (len(models) - 1) / 2, [f"{s}\nn={n}" for s, n in table["n"].items()])
    ax.set(ylim=(0, 1.15), ylabel="accuracy", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def not_digit_histogram(groups: dict[str, np.ndarray], threshold: float | None, title: str = "Not a digit") -> Figure:
    """Distribution of the calibrated not-digit probability per group of drawings, with the operating point."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    bins = np.linspace(0, 1, 41)
    for name, values in groups.items():
        values = np.asarray(values, dtype=float)
        share = (values >= threshold).mean() if threshold is not None and len(values) else 0.0
        ax.hist(values, bins=bins, alpha=0.55, density=True, label=f"{name} (n={len(values):,}; {share:.1%} rejected)")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"operating point {threshold:.3f}")
    ax.set(yscale="log", xlabel='calibrated probability of "not a digit"', ylabel="density", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
