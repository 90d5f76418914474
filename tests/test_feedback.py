"""Feedback as a DataFrame (SQLite and PostgreSQL), its analysis and drawings, and the training-set export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SEVEN

from digitlib import cli, feedback
from digitlib.feedback import FeedbackDataError, feedback_drawings, load_feedback
from digitlib.feedback_export import export_training_set, in_holdout, load_export
from digitlib.preprocess import strokes_to_input
from digitlib.retrain import concat_digits
from digitlib.store import NOT_A_DIGIT, Feedback, FeedbackStore, redact_url

ONE = [[[140, 40], [140, 240]]]
FOUR = [[[100, 40], [80, 160], [200, 160]], [[170, 80], [170, 250]]]


def answer(strokes, label, predicted, version="v1", **changes) -> Feedback:
    """A visitor's answer; the stored image is blank on purpose, so re-rendering can be told apart."""
    probabilities = np.full(10, 0.02)
    probabilities[predicted] = 0.82
    args = {
        "strokes": strokes,
        "true_label": label,
        "probabilities": probabilities,
        "image": np.zeros((28, 28), np.uint8),
        "model_version": version,
        "session_id": "s1",
        **changes,
    }
    return Feedback.create(**args)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def filled(url, tmp_path):
    """Five answers: two models, one mistake each, one replay of a drawing, one drawing labelled two ways."""
    store = FeedbackStore(url, queue_file=tmp_path / "queue.jsonl")
    rows = [
        answer(ONE, 1, 1, "v1"),
        answer(SEVEN, 7, 1, "v1"),  # the model said 1: wrong
        answer(ONE, 1, 1, "v2"),  # the same drawing again (a replay under a new id)
        answer(FOUR, 4, 4, "v2"),
        answer(FOUR, 9, 4, "v2"),  # the same four labelled 9 by someone else: unreliable
        answer([[[60, 60], [220, 60], [220, 230]]], 7, 7, "v2"),
    ]
    for row in rows:
        assert store.submit(row).status == "saved"
    store.dispose()
    return url


# --- the DataFrame -------------------------------------------------------------------------------


def test_feedback_frame_has_one_row_per_answer(filled):
    frame = load_feedback(filled)
    assert len(frame) == 6 and list(frame["id"]) == sorted(frame["id"])
    assert frame["correct"].tolist() == [True, False, True, True, False, True]
    assert str(frame["created_at"].dt.tz) == "UTC"
    assert "image" not in frame and "strokes" not in frame
    assert frame.loc[1, "predicted"] == 1 and frame.loc[1, "true_label"] == 7
    assert len(frame.loc[0, "probabilities"]) == 10


def test_images_and_strokes_are_decoded_on_request(filled):
    frame = load_feedback(filled, images=True, strokes=True)
    assert frame.loc[0, "image"].shape == (28, 28) and frame.loc[0, "image"].dtype == np.uint8
    assert frame.loc[1, "strokes"] == SEVEN


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_empty_database_gives_an_empty_frame(backend, request, tmp_path):
    url = request.getfixturevalue(f"{'sqlite' if backend == 'sqlite' else 'pg'}_url")
    frame = load_feedback(url, images=True)
    assert frame.empty and {"created_at", "true_label", "correct", "image"} <= set(frame.columns)
    assert feedback.feedback_summary(frame) == {"n": 0}


def test_reading_a_missing_sqlite_file_does_not_create_it(tmp_path):
    assert load_feedback(f"sqlite:///{tmp_path / 'none.db'}").empty
    assert not (tmp_path / "none.db").exists()


def test_analysis_tables(filled):
    frame = load_feedback(filled)
    per_version = feedback.accuracy_per_version(frame)
    assert per_version.loc["v1", "n"] == 2 and per_version.loc["v1", "accuracy"] == 0.5
    assert per_version.loc["v2", "accuracy"] == 0.75
    confusion = feedback.user_confusion(frame)
    assert confusion.sum() == 6 and confusion[7, 1] == 1 and confusion[9, 4] == 1
    summary = feedback.feedback_summary(frame)
    assert summary["n"] == 6 and summary["said_correct"] == pytest.approx(4 / 6)


def test_password_never_reaches_a_manifest():
    url = "postgresql+psycopg2://me:s3cret@db.example:5432/feedback"
    assert redact_url(url) == "postgresql+psycopg2://me:***@db.example:5432/feedback"
    assert not hasattr(feedback, "password_free_url")  # one redaction function: store.redact_url


def test_digit_answers_come_back_as_drawings(filled):
    drawings = feedback_drawings(filled)
    assert [d.label for d in drawings] == [1, 7, 1, 4, 9, 7] and drawings[1].strokes == SEVEN
    assert {d.source for d in drawings} == {"feedback"} and drawings[0].writer == "s1"


# --- export ----------------------------------------------------------------------------------------


def test_export_rerenders_deduplicates_and_writes_a_manifest(filled, tmp_path):
    manifest = export_training_set(tmp_path / "export", filled, holdout_fraction=0.5)
    assert manifest["rows_in_db"] == 6 and manifest["exported"] == 3  # ONE, SEVEN, the other 7
    # hand-drawn strokes the model reads as labelled: no label suspect here (test_label_checks poisons some)
    assert manifest["dropped"] == {"duplicates": 1, "conflicting_labels": 2, "unrenderable": 0, "suspect_labels": 0}
    assert manifest["source_db"] == redact_url(filled)
    counts = manifest["counts"]
    assert counts["train"]["n"] + counts["holdout"]["n"] == 3
    total = {d: counts["train"]["per_label"][d] + counts["holdout"]["per_label"][d] for d in map(str, range(10))}
    assert total == {**{str(d): 0 for d in range(10)}, "1": 1, "7": 2}
    assert manifest["time_range"]["first"] <= manifest["time_range"]["last"]

    export = load_export(tmp_path / "export")
    both = concat_digits(export.train, export.holdout)
    assert len(both) == 3 and both.images.dtype == torch.uint8
    # Re-rendered from the strokes with today's preprocessing, not the (blank) stored PNG.
    rendered = {int(label): torch.as_tensor(strokes_to_input(s)) for s, label in ((ONE, 1), (SEVEN, 7))}
    assert any(torch.equal(image, rendered[7]) for image in both.images)
    assert any(torch.equal(image, rendered[1]) for image in both.images)


def test_the_split_is_fixed_by_submission_id(url, tmp_path):
    store = FeedbackStore(url, queue_file=tmp_path / "queue.jsonl")
    rng = np.random.default_rng(0)
    first = [answer([[[20 + x, 40], [x + 100, 200 + i % 30]]], i % 10, i % 10, submission_id=f"a{i}")
             for i, x in enumerate(rng.integers(0, 100, 40))]  # fmt: skip
    for row in first:
        store.submit(row)
    # strokes with arbitrary labels: the label checks would flag them; the split rule is what is tested
    export_training_set(tmp_path / "one", url, 0.25, check_labels=False)
    for i in range(20):  # more feedback arrives
        store.submit(answer([[[30, 50 + i], [200, 210]]], 3, 3, submission_id=f"b{i}"))
    export_training_set(tmp_path / "two", url, 0.25, check_labels=False)
    store.dispose()

    def holdout_ids(folder):
        with np.load(Path(folder) / "holdout.npz") as data:
            return set(data["submission_ids"].tolist())

    expected = {r.submission_id for r in first if in_holdout(r.submission_id, 0.25)}
    assert holdout_ids(tmp_path / "one") == expected and 0 < len(expected) < 40
    assert holdout_ids(tmp_path / "two") & {r.submission_id for r in first} == expected


def test_exporting_an_empty_database_is_a_clear_error(sqlite_url, tmp_path, capsys):
    with pytest.raises(FeedbackDataError, match="no feedback in sqlite"):
        export_training_set(tmp_path / "out", sqlite_url)
    assert cli.main(["export-feedback", str(tmp_path / "out"), "--database-url", sqlite_url]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_cli_export_feedback(filled, tmp_path, capsys):
    assert cli.main(["export-feedback", str(tmp_path / "out"), "--database-url", filled, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["exported"] == 3 and result["train"] + result["holdout"] == 3
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["exported"] == 3


def test_an_altered_export_is_refused(filled, tmp_path):
    export_training_set(tmp_path / "e", filled)
    # submission ids are random, so either split may be empty; relabel one that has rows
    for split in ("train", "holdout"):
        with np.load(tmp_path / "e" / f"{split}.npz") as data:
            arrays = dict(data)
        if len(arrays["labels"]):
            break
    arrays["labels"] = (arrays["labels"] + 1) % 10
    np.savez_compressed(tmp_path / "e" / f"{split}.npz", **arrays)
    with pytest.raises(FeedbackDataError, match="altered"):
        load_export(tmp_path / "e")
    with pytest.raises(FeedbackDataError, match="no manifest.json"):
        load_export(tmp_path / "nowhere")


# --- "not a digit" answers -------------------------------------------------------------------------

STAR = [[[140, 20], [180, 250], [40, 100], [240, 100], [100, 250], [140, 20]]]
CIRCLE = [[[140, 40], [220, 140], [140, 240], [60, 140], [140, 40]]]


@pytest.fixture
def with_negatives(url, tmp_path):
    """Digit answers and "not a digit" answers, from a model that rejects and one that cannot."""
    store = FeedbackStore(url, queue_file=tmp_path / "queue.jsonl")
    rows = [
        answer(ONE, 1, 1, "v3", not_digit_probability=0.02),  # right digit
        answer(STAR, NOT_A_DIGIT, 4, "v3", rejected=True, not_digit_probability=0.95),  # rightly rejected
        answer(CIRCLE, NOT_A_DIGIT, 0, "v3", not_digit_probability=0.3),  # a negative the model took for 0
        answer(SEVEN, 7, 7, "v3", rejected=True, not_digit_probability=0.7),  # a 7 wrongly rejected
        answer(FOUR, 4, 4, "v1"),  # an older model: no not-digit output
        answer(FOUR, NOT_A_DIGIT, 4, "v1"),  # the same drawing called "not a digit" by someone else
    ]
    for row in rows:
        assert store.submit(row).status == "saved"
    store.dispose()
    return url


def test_not_a_digit_answers_in_the_frame_and_the_analysis(with_negatives):
    frame = load_feedback(with_negatives)
    assert frame["not_digit"].tolist() == [False, True, True, False, False, True]
    assert frame["rejected"].tolist() == [False, True, False, True, False, False]
    assert frame["true_label"].isna().tolist() == frame["not_digit"].tolist()
    # Right: its digit when it answered one, "not a digit" when it rejected a negative.
    assert frame["correct"].tolist() == [True, True, False, False, True, False]
    agreement = feedback.rejection_agreement(frame)  # v1 rows (no probability) say nothing
    assert agreement.loc["a digit", "a digit"] == 1 and agreement.loc["a digit", "not a digit"] == 1
    assert agreement.loc["not a digit", "not a digit"] == 1 and agreement.loc["not a digit", "a digit"] == 1
    assert int(agreement.to_numpy().sum()) == 4
    rates = feedback.rejection_rates(frame)
    assert rates == {"n_digits": 2, "digits": 0.5, "n_non_digits": 2, "non_digits": 0.5}
    assert feedback.rejection_rates(frame[frame["model_version"] == "v1"])["digits"] is None
    summary = feedback.feedback_summary(frame)
    assert summary["not_digit_answers"] == 3 and summary["rejected_by_model"] == 2
    confusion = feedback.user_confusion(frame)  # digit answers only
    assert confusion.sum() == 3 and confusion[7, 7] == 1


def test_export_keeps_not_a_digit_answers_out_of_the_digit_sets(with_negatives, tmp_path):
    manifest = export_training_set(tmp_path / "e", with_negatives, holdout_fraction=0.5)
    # FOUR was called 4 and "not a digit": dropped as conflicting, both rows.
    assert manifest["dropped"]["conflicting_labels"] == 2 and manifest["exported"] == 4
    assert manifest["counts"]["train"]["n"] + manifest["counts"]["holdout"]["n"] == 2  # ONE and SEVEN
    nd = manifest["not_digit"]
    assert nd["file"] == "not_digit.npz" and nd["n"] == 2 and nd["train"] + nd["holdout"] == 2
    assert "not_digit" in manifest["sha256"]

    export = load_export(tmp_path / "e")
    both = concat_digits(export.train, export.holdout)
    assert sorted(both.labels.tolist()) == [1, 7]  # no made-up class number among the digits
    negatives = torch.cat([export.not_digit["train"], export.not_digit["holdout"]])
    assert len(negatives) == 2 and len(export.not_digit["holdout"]) == nd["holdout"]
    star = torch.as_tensor(strokes_to_input(STAR))
    assert any(torch.equal(image, star) for image in negatives)  # re-rendered from the strokes

    with np.load(tmp_path / "e" / "not_digit.npz") as data:
        arrays = dict(data)
    arrays["holdout"] = ~arrays["holdout"]
    np.savez_compressed(tmp_path / "e" / "not_digit.npz", **arrays)
    with pytest.raises(FeedbackDataError, match="not_digit.npz: missing or altered"):
        load_export(tmp_path / "e")


@pytest.mark.slow
def test_the_analysis_notebook_reports_not_a_digit_answers_and_label_sources(with_negatives, tmp_path):
    from digitlib import config, experiments

    store = FeedbackStore(with_negatives, queue_file=tmp_path / "q.jsonl")
    assert store.submit(answer(FOUR, 4, 4, "v1", label_source="prompt")).status == "saved"  # asked for a 4
    store.dispose()
    notebook = config.PROJ_ROOT / "notebooks" / "3.0-dl-analyse-feedback.ipynb"
    params = {"database_url": with_negatives, "figures_dir": str(tmp_path / "f"), "name": "nd"}
    run = experiments.run_notebook(notebook, tmp_path / "report.ipynb", params, timeout=300)
    assert run.status == "ok", run.error
    summary = json.loads((tmp_path / "f" / "nd" / "analysis.json").read_text())
    assert summary["not_digit_answers"] == 3 and summary["rejected_by_model"] == 2
    assert summary["rejection"] == {"n_digits": 2, "digits": 0.5, "n_non_digits": 2, "non_digits": 0.5}
    assert "visitor said" in run.html.read_text()  # the agreement table is in the report
    sources = summary["label_sources"]  # answers per label source: the prompted one apart
    assert sources["prompt"] == {"answers": 1, "said_correct": 1.0}
    assert sources["confirmed"]["said_correct"] == 1.0 and sources["corrected"]["said_correct"] == 0.0
    assert sum(s["answers"] for s in sources.values()) == summary["n"] == 7
