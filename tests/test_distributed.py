"""Multi-process training with torch.distributed (gloo on CPU), as torchrun launches it."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from digitlib.modeling.checkpoint import load_model

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

WORKER = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    from digitlib.dataset import load_mnist
    from digitlib.modeling.train import TrainConfig, train
    dist.init_process_group("gloo")
    cfg = TrainConfig(arch="seed", epochs=1, batch_size=50, augment="draw", train_subset=1000, threads=1, negatives=0.0,
                      redraw=0.0, stroke_digits=0.0)
    result = train(cfg, load_mnist("train"), progress=False)
    rank = dist.get_rank()
    torch.save(result.model.state_dict(), f"{sys.argv[1]}/rank{rank}.pt")
    # A file per rank: both processes share one stdout, where their lines interleave.
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
        json.dump({"epochs": len(result.history), "images_seen": result.images_seen}, f)
    dist.destroy_process_group()
    """
)


def test_two_processes_keep_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = subprocess.run([*TORCHRUN, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged across processes
    # Each process saw its half: together one epoch of the 1,000 images (digits only: nothing generated).
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"epochs": 1, "images_seen": 1000}


def test_cli_under_torchrun_saves_once(tmp_path):
    out = tmp_path / "ddp-model"
    args = [
        "-m",
        "digitlib",
        "train",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--train-subset",
        "4000",
        "--arch",
        "seed",
        "--augment",
        "none",
        "--precision",
        "fp32",  # the same arithmetic on every CPU: auto would pick bf16 on some runners only
        *("--negatives", "0", "--redraw", "0", "--stroke-digits", "0"),  # digits only: this is about saving once
        "--json",
    ]
    done = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["test_accuracy"] > 0.7  # one report, from rank 0
    assert load_model(out).metadata["history"][0]["epoch"] == 1
