"""Why the training loop is set up as it is: images/s of one vggbn training step per setting.

Times forward, backward and an AdamW step on a fixed batch (no data loading or augmentation)
for each memory format, thread count and precision, on the device the training would pick.
The training loop uses channels_last, all cores and `precision=auto`; this shows what each buys.

    .venv/bin/python benchmarks/train_step_options.py [--batch-size 128] [--steps 40] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import torch

from digitlib.modeling.models import build_model
from digitlib.modeling.train import TrainConfig, build_optimizer, cpu_multiplies_bf16, pick_device, training_step

FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def images_per_second(device, memory_format, bf16: bool, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model("vggbn").to(device).to(memory_format=memory_format)
    opt = build_optimizer(TrainConfig(), model)  # the training loop's optimizer and step
    x = torch.randn(batch_size, 1, 28, 28, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        training_step(model, opt, x, y, bf16)

    for _ in range(5):  # warm-up: kernel choice, allocator
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    device = pick_device()
    cores = os.cpu_count() or 1
    threads = sorted({1, cores}) if device.type == "cpu" else [torch.get_num_threads()]
    rows = []
    for (name, fmt), n_threads, precision in itertools.product(FORMATS.items(), threads, ("fp32", "bf16")):
        torch.set_num_threads(n_threads)
        speed = images_per_second(device, fmt, precision == "bf16", args.batch_size, args.steps)
        rows.append({"memory_format": name, "threads": n_threads, "precision": precision, "images_per_second": speed})
        print(f"{name:<14} {n_threads:>2} threads  {precision}  {speed:8.0f} images/s", flush=True)
    report = {
        "device": str(device),
        "cpu_has_bf16_instructions": cpu_multiplies_bf16(),
        "batch_size": args.batch_size,
        "rows": [{**r, "images_per_second": round(r["images_per_second"])} for r in rows],
    }
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
