import json
import subprocess
import sys

import pytest
import torch

from digitlib.dataset import normalise, train_val_split
from digitlib.modeling.checkpoint import build_for, load_model
from digitlib.modeling.models import build_model
from digitlib.modeling.predict import evaluate
from digitlib.modeling.train import (
    TrainConfig,
    evaluate_loss_accuracy,
    hardware_name,
    pick_device,
    save_training,
    train,
)


def small_config(**kw):
    return TrainConfig(**{"epochs": 1, "train_subset": 5000, "augment": "none", "seed": 0, **kw})


@pytest.fixture(scope="module")
def small_run(mnist_train):
    train_digits, val_digits = train_val_split(mnist_train, 1000)
    return train(small_config(), train_digits, val_digits, progress=False)


@pytest.mark.slow
def test_short_training_clearly_learns(small_run, mnist_test):
    result = evaluate(small_run.as_loaded(), mnist_test.head(2000))
    assert result.accuracy >= 0.90, result.accuracy


@pytest.mark.slow
def test_history_has_one_record_per_epoch(small_run):
    (record,) = small_run.history
    assert record["epoch"] == 1 and record["val_accuracy"] > 0.85
    assert record["train_loss"] > 0 and record["images_per_second"] > 0


@pytest.mark.slow
def test_training_is_reproducible_with_a_seed(mnist_train):
    digits = mnist_train.head(600)
    cfg = small_config(train_subset=None, augment="draw", batch_size=100)
    a = train(cfg, digits, progress=False).model.state_dict()
    b = train(cfg, digits, progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_early_stop_on_target(mnist_train):
    train_digits, val_digits = train_val_split(mnist_train.head(3000), 500)
    result = train(small_config(epochs=5, target_accuracy=0.5), train_digits, val_digits, progress=False)
    assert result.stopped_early and len(result.history) == 1


@pytest.mark.slow
def test_all_schedules_and_optimizers_run(mnist_train):
    digits = mnist_train.head(256)
    for schedule, optimizer in [("step", "adam"), ("cosine", "sgd"), ("constant", "adamw")]:
        result = train(
            small_config(schedule=schedule, optimizer=optimizer, arch="seed", train_subset=None), digits, progress=False
        )
        assert len(result.history) == 1


@pytest.mark.parametrize("images", [64, 320, 640])  # 1, 5 and 10 steps of 64
def test_onecycle_runs_however_few_the_steps(mnist_train, images):
    # 5 steps once crashed OneCycleLR (a one-step warm-up divides by zero).
    result = train(
        small_config(train_subset=None, arch="seed", batch_size=64, negatives=0, redraw=0, stroke_digits=0),
        mnist_train.head(images),
        progress=False,
    )
    assert len(result.history) == 1 and result.history[0]["train_loss"] > 0


@pytest.mark.slow
def test_the_gpu_bf16_autocast_path_learns_on_cpu(mnist_train, mnist_test):
    # precision="bf16" is what "auto" picks on CUDA: the same autocast code, run here.
    result = train(small_config(train_subset=2000, precision="bf16", batch_size=64), mnist_train, progress=False)
    assert result.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # autocast leaves weights in fp32
    assert evaluate(result.as_loaded(), mnist_test.head(1000)).accuracy > 0.85


@pytest.mark.slow
def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_it(mnist_train, monkeypatch):
    from digitlib.modeling import train as training

    digits = mnist_train.head(256)
    for has_bf16, expected in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(training, "cpu_multiplies_bf16", lambda has_bf16=has_bf16: has_bf16)
        assert train(small_config(train_subset=None), digits, progress=False).precision == expected
    assert train(small_config(train_subset=None, precision="fp32"), digits, progress=False).precision == "fp32"


def test_auto_precision_on_a_gpu_is_bf16_only_from_ampere_on(monkeypatch):
    from digitlib.modeling import train as training

    asked = []
    for native, expected in [(True, True), (False, False)]:  # A100/H100; T4/V100 only emulate bf16
        monkeypatch.setattr(
            torch.cuda,
            "is_bf16_supported",
            lambda including_emulation, n=native: asked.append(including_emulation) or n,
        )
        assert training._uses_bf16("auto", torch.device("cuda")) is expected
    assert asked == [False, False]  # emulated bf16 does not count
    assert training._uses_bf16("fp32", torch.device("cuda")) is False


@pytest.mark.slow
def test_bad_options_are_refused(mnist_train):
    with pytest.raises(ValueError, match="schedule"):
        train(small_config(schedule="wavy"), mnist_train.head(100), progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train(small_config(epochs=0), mnist_train.head(100), progress=False)
    with pytest.raises(ValueError, match="precision"):
        train(small_config(precision="fp8"), mnist_train.head(100), progress=False)


def test_validation_accuracy_is_the_top_digit_class_as_on_the_test_set(mnist_test):
    digits = mnist_test.head(200)
    model = build_for("seed", {}, outputs=11).eval()
    with torch.no_grad():
        model[-1].bias[10] = 1e3  # the raw "not a digit" output always on top
        top_digit = model(normalise(digits.images))[:, :10].argmax(1)
    _, accuracy = evaluate_loss_accuracy(model, digits)
    assert accuracy == (top_digit == digits.labels).sum().item() / len(digits) > 0


def test_hardware_name_is_the_gpu_or_the_cpu_model(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert hardware_name(torch.device("cuda")) == "NVIDIA H100 80GB HBM3"
    cpu = hardware_name(torch.device("cpu"))
    assert cpu.endswith(f"({torch.get_num_threads()} threads)") and not cpu.startswith("(")


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}


@pytest.mark.slow
def test_saved_training_reloads_with_its_record(small_run, tmp_path, mnist_test):
    save_training(small_run, tmp_path / "m", {"data_checksum": "abc"})
    loaded = load_model(tmp_path / "m")
    assert loaded.metadata["training"]["train_subset"] == 5000
    assert loaded.metadata["history"] == small_run.history
    assert loaded.metadata["hardware"] == hardware_name(torch.device("cpu")) and "threads" in small_run.hardware
    before = evaluate(small_run.as_loaded(), mnist_test.head(500)).accuracy
    assert evaluate(loaded, mnist_test.head(500)).accuracy == before


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "digitlib", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_train_then_evaluate_json(tmp_path):
    out = tmp_path / "cli-model"
    done = run_cli(
        "train",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--train-subset",
        "2000",
        "--augment",
        "none",
        "--arch",
        "seed",
        "--precision",
        "fp32",
        *("--negatives", "0", "--redraw", "0", "--stroke-digits", "0"),  # MNIST only: the CLI round trip is the point
        "--json",
    )
    assert done.returncode == 0, done.stderr
    trained = json.loads(done.stdout.strip().splitlines()[-1])
    assert trained["model"] == str(out) and 0.7 < trained["test_accuracy"] <= 1 and trained["precision"] == "fp32"
    done = run_cli("evaluate", "--json", "--model", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == 10_000 and result["accuracy"] == pytest.approx(trained["test_accuracy"])
    assert len(result["per_class_accuracy"]) == 10


def test_cli_evaluate_default_model_json():
    done = run_cli("evaluate", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == 10_000 and result["accuracy"] >= 0.995


def test_cli_reports_missing_model_clearly(tmp_path):
    done = run_cli("evaluate", "--json", "--model", str(tmp_path / "none"))
    assert done.returncode == 2 and "no model at" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_pen_redraw_and_stroke_digits_reach_the_batches(mnist_train, monkeypatch, tmp_path):
    from digitlib import config
    from digitlib.modeling import train as train_module
    from digitlib.pen_style import redraw_images

    monkeypatch.setattr(config, "DATA_DIR", tmp_path)  # caches go to tmp_path/cache
    digits = mnist_train.head(200)
    seen = []
    real = train_module._to_model_input
    monkeypatch.setattr(
        train_module, "_to_model_input", lambda images, *a: seen.append(images.clone()) or real(images, *a)
    )
    cfg = small_config(train_subset=None, batch_size=500, redraw=1.0, stroke_digits=0.5, negatives=0.0)
    result = train(cfg, digits, progress=False)
    assert result.images_seen == 300  # 200 MNIST digits + 100 stroke digits
    batch = seen[0]
    redrawn = torch.from_numpy(redraw_images(digits.images.numpy(), 0, tmp_path / "cache"))
    # Every MNIST digit in the batch is its pen re-drawing (redraw=1.0), never the scan itself.
    matches = [any(torch.equal(image, r) for r in redrawn) for image in batch]
    originals = [any(torch.equal(image, d) for d in digits.images) for image in batch]
    assert sum(matches) == 200 and not any(originals)


def test_recipes():
    from digitlib.modeling.train import RECIPES, recipe

    assert recipe("default") == TrainConfig()
    seed = recipe("seed", epochs=2)
    assert (seed.arch, seed.optimizer, seed.lr, seed.augment, seed.epochs) == ("seed", "adam", 1e-3, "none", 2)
    assert RECIPES["seed"].epochs == 5  # overrides never change the recipe itself
    assert (RECIPES["default"].redraw, RECIPES["default"].stroke_digits) > (0, 0)  # pen-like data for drawn digits
    for speed in ("fast", "sprint", "fast-gpu", "seed"):  # MNIST alone: their figures are MNIST figures
        assert RECIPES[speed].redraw == RECIPES[speed].stroke_digits == RECIPES[speed].negatives == 0, speed
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("turbo")


@pytest.mark.slow
def test_compiled_training_learns_and_saves_plain_weights(mnist_train, tmp_path):
    # torch.compile (inductor, C++ on CPU) is the GPU path's option; the same code runs here.
    result = train(
        small_config(train_subset=None, epochs=2, batch_size=256, compile=True), mnist_train.head(1024), progress=False
    )
    assert result.history[-1]["train_accuracy"] > 0.6
    save_training(result, tmp_path / "compiled")
    reloaded = load_model(tmp_path / "compiled").model.state_dict()
    assert reloaded.keys() == build_model("vggbn").state_dict().keys()  # no torch.compile prefix
