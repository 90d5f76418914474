"""The benchmarks' arithmetic and their JSON, which run_all turns into reports/benchmarks.md (one table each)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from digitlib import config


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, config.PROJ_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


train_speed = load_benchmark("train_speed")
run_all = load_benchmark("run_all")


def test_time_to_target_is_the_first_epoch_that_reaches_it():
    curve = [(1.0, 0.98), (2.0, 0.991), (3.0, 0.989), (4.0, 0.996)]
    assert train_speed.time_to(curve, 0.99) == 2.0
    assert train_speed.time_to(curve, 0.995) == 4.0
    assert train_speed.time_to(curve, 0.999) is None


def test_median_over_repeats_counts_misses_as_slowest():
    assert train_speed.median_or_none([0.4, 0.3, 0.5]) == 0.4
    assert train_speed.median_or_none([0.4, None, 0.3]) == 0.4
    assert train_speed.median_or_none([0.4, None, None]) is None


@pytest.mark.slow
def test_benchmark_json_becomes_report_rows():
    command = [
        sys.executable,
        "benchmarks/train_speed.py",
        "--recipes",
        "seed",
        "sprint",
        "--repeats",
        "2",
        "--epochs-seed",
        "1",
    ]
    done = subprocess.run(
        [*command, "--train-subset", "2048", "--json"], cwd=config.PROJ_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sprint = next(r for r in report["runs"] if r["name"] == "sprint")
    assert (sprint["batch_size"], sprint["repeats"], report["device"]) == (512, 2, "cpu")
    assert 0.3 < sprint["test_accuracy"] < 0.99  # 2,048 images, one epoch: learning, not done
    assert sprint["seconds_to_99"] is None and sprint["images_per_second"] > 0
    table = run_all.table_of("train_speed", report)
    row = dict(zip(table.columns, next(r for r in table.rows if r[0] == "`sprint`"), strict=True))
    assert row["time to 99%"] == "not reached" and row["epochs x batch"] == "1 x 512"
    assert not any("default/seed" in note for note in table.notes)  # no default recipe in this run


def test_every_recipe_is_benchmarked():
    from digitlib.modeling.train import RECIPES

    assert sorted(train_speed.IN_ORDER) == sorted(RECIPES)


def test_dashboard_latency_json_becomes_report_rows():
    done = subprocess.run(
        [sys.executable, "benchmarks/dashboard_latency.py", "--no-browser", "--drawings", "20"]
        + ["--compare-limit", "100", "--json"],
        cwd=config.PROJ_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "threads)" in report["machine"]  # the same hardware name as the training benchmark
    assert 0 < report["python"]["p50_ms"] <= report["python"]["p99_ms"]
    rows = dict(run_all.table_of("dashboard_latency", report).rows)
    python = report["python"]
    assert rows["strokes to probabilities, 1 thread, 20 drawings: wall p50 / p99"] == (
        f"{python['p50_ms']} / {python['p99_ms']} ms"
    )
    assert not any("Chromium" in figure for figure in rows)  # no browser run, no browser rows


CROWD_RESULT = {
    "client": "protocol",
    "visitors": 50,
    "rate_per_s": 1.0,
    "think_s": [2.0, 3.0],
    "drawings_per_visitor": 5,
    "served": 48,
    "errors": {"no prediction within 60 s": 2},
    "page_open_s": {"p50": 0.4, "p95": 2.5, "max": 3.1},
    "stroke_to_prediction_ms": {"p50": 40.0, "p95": 120.0, "p99": 200.0, "max": 300.0, "n": 500},
    "answers_saved": 240,
    "rows_stored": 241,
    "answers_stored_exactly_once": False,
}

POISONED_SUMMARY = {
    "base": "default-x",
    "feedback_sites": ["app", "ced", "gmd"],
    "unseen_writers": 477,
    "gate_pen_digits": 642,
    "clean_gain": 0.0,
    "seconds": 908.0,
}
POISONED_RUNS = [
    {"attack": "random", "rate": 0.0, "checks": True, "injected": 0, "flagged": 0, "flag_precision": None}
    | {"flag_recall": None, "current_unseen_accuracy": 0.9895, "candidate_unseen_accuracy": 0.9895, "promoted": True},
    {"attack": "random", "rate": 0.3, "checks": True, "injected": 180, "flagged": 180, "flag_precision": 0.98}
    | {"flag_recall": 0.98, "current_unseen_accuracy": 0.9895, "candidate_unseen_accuracy": 0.9895, "promoted": False},
    {"attack": "random", "rate": 0.3, "checks": False, "injected": 180, "flagged": None, "flag_precision": None}
    | {"flag_recall": None, "current_unseen_accuracy": 0.9895, "candidate_unseen_accuracy": 0.9895, "promoted": False},
]

HONEST_RESULT = {
    "model": "default-y",
    "temperature": 0.457,
    "threshold": 0.587,
    "mnist_test": {"n": 10000, "accuracy": 0.9956, "ece_before": 0.0844, "ece_after": 0.0015, "rejected": 0.0088},
    "pen_digits": {"n": 4657, "accuracy": 0.988, "ece_before": 0.0875, "ece_after": 0.005, "rejected": 0.0522},
    "non_digits_dev": {"all": {"n": 400, "rejected": 0.985}, "latin": {"n": 200, "rejected": 0.97}},
    "generated_validation_negatives": {"n": 2000, "rejected": 0.968},
}


def rows_of(table):
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def test_crowd_json_becomes_one_table_row():
    table = run_all.table_of("crowd", CROWD_RESULT)
    (row,) = rows_of(table)
    assert row["served"] == "48/50"
    assert row["stroke end to prediction p50 / p95 / p99 / max"] == "40 / 120 / 200 / 300 ms"
    assert row["answers saved = rows, each once"] == "240 = 241, NO"
    assert row["peak RSS (PSS), server + kernels"] == "-"  # a server at --url without its pid: no memory
    assert "2 x no prediction within 60 s" in " ".join(table.notes)
    assert "crowd" in run_all.BENCHMARKS and "--visitors" in run_all.BENCHMARKS["crowd"].args  # a small run


def test_poisoned_feedback_reads_both_json_lines_and_makes_one_row_per_run():
    stdout = "progress\n" + json.dumps(POISONED_SUMMARY) + "\n" + json.dumps({"runs": POISONED_RUNS}) + "\n"
    result = run_all.last_json(stdout)
    assert result["base"] == "default-x" and len(result["runs"]) == 3
    rows = rows_of(run_all.table_of("poisoned_feedback", result))
    assert [r["attack"] for r in rows] == ["none (clean)", "random", "random"]
    assert rows[1]["flagged (precision / recall)"] == "180 (98% / 98%)"
    assert rows[2]["flagged (precision / recall)"] == "-" and rows[2]["checks"] == "off"
    assert [r["gate"] for r in rows] == ["promoted", "refused", "refused"]
    assert rows[0]["unseen writers: current -> candidate"] == "98.95% -> 98.95%"
    assert rows[0]["feedback held-out (n): current -> candidate"] == "-"  # older runs did not report it
    result["runs"][0] = POISONED_RUNS[0] | {"feedback_holdout": {"n": 150, "current": 0.9733, "candidate": 0.98}}
    rows = rows_of(run_all.table_of("poisoned_feedback", result))
    assert rows[0]["feedback held-out (n): current -> candidate"] == "(150) 97.33% -> 98.00%"


def test_last_json_refuses_output_without_json():
    with pytest.raises(ValueError):
        run_all.last_json("done\n")


def test_honest_answers_table_has_a_row_per_set():
    rows = rows_of(run_all.table_of("honest_answers", HONEST_RESULT))
    assert [r["set"] for r in rows] == [
        "MNIST test",
        "pen digits",
        "non-digits dev, all",
        "non-digits dev, latin",
        "generated, validation glyphs",
    ]
    assert rows[0]["ECE after"] == "0.15%" and rows[1]['answered "not a digit"'] == "5.22%"
    assert rows[0]["n"] == "10,000" and rows[2]["accuracy"] == ""


def test_honest_answers_table_reports_the_rule_judged_leave_one_site_out():
    fold = {"n": 692, "threshold": 0.9854, "digits": 0.0101, "non_digits_dev": 0.9525}
    judged = {
        "rate": 0.01,
        "floor": 0.5867,
        "sites": {"apa": fold, "art": {**fold, "threshold": 0.9842}},
        "digits": {"mean": 0.0129, "worst": 0.0235},
        "non_digits_dev": {"mean": 0.9533, "worst": 0.9525},
    }
    held_out_fonts = {"n": 2000, "rejected": 0.866}
    result = HONEST_RESULT | {"generated_held_out_fonts": held_out_fonts, "leave_one_site_out": judged}
    table = run_all.table_of("honest_answers", result)
    assert rows_of(table)[-1]["set"] == "generated, held-out fonts"
    (note,) = [n for n in table.notes if n.startswith("Leave one site out")]
    assert "pen digits answered not a digit mean 1.29%, worst 2.35%" in note
    assert "at most 1%, floor 0.5867" in note and "apa 0.9854, art 0.9842" in note


def test_a_benchmark_without_a_layout_gets_a_figure_value_table():
    table = run_all.table_of("something_new", {"rows": 3, "seconds": 1.5, "detail": {"x": 1}})
    assert table.columns == ["figure", "value"] and table.rows == [["rows", 3], ["seconds", 1.5]]


def report_with(sections):
    return run_all.report("AMD EPYC (2 threads), no GPU", sections)


def test_the_report_names_the_machine_once_and_has_one_table_per_benchmark():
    fresh = {
        "crowd": run_all.new_section("crowd", run_all.table_of("crowd", CROWD_RESULT), "crowd cmd", "2026-12-01", 1.5),
        "honest_answers": run_all.new_section(
            "honest_answers", run_all.table_of("honest_answers", HONEST_RESULT), "honest cmd", "2026-12-01", None
        ),
    }
    text = report_with(fresh)
    assert text.count("AMD EPYC") == 1 and text.count("2026-12-01") == 2
    assert text.index("## honest_answers") < text.index("## crowd")  # the order benchmarks run in
    assert sum(line.startswith("| --- |") for line in text.splitlines()) == 2  # one table each
    assert "Command: `crowd cmd`. Date: 2026-12-01. Load average at start: 1.50." in text
    assert "| protocol | 50 | 48/50 |" in text


def test_rerunning_one_benchmark_keeps_the_other_sections_and_hand_written_ones(tmp_path):
    out = tmp_path / "benchmarks.md"
    honest = run_all.table_of("honest_answers", HONEST_RESULT)
    first = {"honest_answers": run_all.new_section("honest_answers", honest, "honest cmd", "2026-11-30", None)}
    written = run_all.report("Intel Xeon (2 threads), no GPU", first)
    out.write_text(written + "\n## Notes by hand\n\nKept as written.\n")
    crowd = run_all.table_of("crowd", CROWD_RESULT)
    fresh = {"crowd": run_all.new_section("crowd", crowd, "crowd cmd", "2026-12-01", 0.5)}
    text = run_all.update_report(out, "AMD EPYC (2 threads), no GPU", fresh)
    assert "## crowd" in text and "## honest_answers" in text and "Kept as written.\n" in text
    assert text.index("## crowd") < text.index("## Notes by hand")  # hand-written sections after the tables
    assert "Machine: AMD EPYC (2 threads), no GPU (every section unless it names another)." in text
    # the honest_answers figures were measured on the earlier machine: their section says so
    assert "Date: 2026-11-30. Machine: Intel Xeon (2 threads), no GPU." in text
    out.write_text(text)
    again = run_all.update_report(out, "AMD EPYC (2 threads), no GPU", fresh)
    assert again == text  # stable: nothing added on a second write
    # Back on the first machine: its sections need no note of their own, the report names it once.
    out.write_text(text)
    back = run_all.update_report(out, "Intel Xeon (2 threads), no GPU", {})
    assert back.count("Machine: Intel Xeon (2 threads), no GPU") == 1
    assert "Date: 2026-12-01. Load average at start: 0.50. Machine: AMD EPYC (2 threads), no GPU." in back


def test_every_benchmark_script_exists_and_takes_the_arguments_run_all_gives():
    for name, benchmark in run_all.BENCHMARKS.items():
        source = (config.PROJ_ROOT / "benchmarks" / benchmark.script).read_text()
        for option in (a for a in benchmark.args if a.startswith("--")):
            assert f'"{option}"' in source, f"{name}: {benchmark.script} takes no {option}"
        assert name in run_all.TABLES, f"{name} has no table layout"


def test_skip_long_leaves_out_the_benchmarks_that_train(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--list", "--skip-long"])
    run_all.main()
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert "train_speed" not in listed and "poisoned_feedback" not in listed
    assert {"drawn_digits", "honest_answers", "crowd", "replicas"} <= listed


def test_the_committed_report_is_in_the_form_run_all_writes():
    text = (config.REPORTS_DIR / "benchmarks.md").read_text()
    machine, sections = run_all.parse_report(text)
    assert machine and text.count(f"Machine: {machine}") == 1
    assert run_all.report(machine, sections) == text  # parsing and writing it again changes nothing
    for name, section in sections.items():
        tables = sum(line.startswith("| --- |") for line in section.body.splitlines())
        assert tables == 1 or name not in run_all.BENCHMARKS, f"{name}: {tables} tables"
