"""Sizing the Fashion-MNIST scenario's teacher: which WRN-16-k, how many images and epochs fit 15 minutes here.

Adversarial training of a source model on Fashion-MNIST classes 0-4 (28×28 grey, ε = 0.1, PGD-7 with step
ε/4 as the preset would use), on this machine's CPU with the default threads: for each width, the images per
second of the kit's ``adversarial_step`` over ``--batches`` batches of 64 (after one warm-up batch), measured
in alternation ``--repeats`` times; then the image budget of a ``--minutes`` teacher (the median rate × time
× 0.85, a margin for the epoch's bookkeeping and a busier machine) and what it buys at 6, 8 and 10 epochs.
An FDM teacher costs about one more forward pass per step than AT: its budget is the rate × 0.8 (measured by
``bench/at_step.py`` on the quick preset, not here).

Writes bench/results/fashion_sizing.json and prints the table.

    .venv/bin/python bench/fashion_sizing.py --repeats 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WIDTHS = ("wrn16_1", "wrn16_4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="timed batches of 64 per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=15.0, help="the teacher's time budget")
    parser.add_argument("--widths", nargs="+", default=list(WIDTHS), choices=WIDTHS)
    args = parser.parse_args()

    from cartl_kit import AttackConfig, adversarial_step, create_model
    from cartl_kit.data import dataset_stats, load_dataset
    data = load_dataset("fashion[0-4]", split="train")
    mean, std = dataset_stats("fashion")
    x = data.images[: 64 * args.batches].float() / 255
    y = data.labels[: 64 * args.batches]
    step = adversarial_step(attack=AttackConfig(eps=0.1, step_size=0.025, steps=7))

    def trainer(arch: str):
        torch.manual_seed(0)
        model = create_model(arch, num_classes=5, in_channels=1, mean=mean, std=std).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def one_pass() -> None:
            for i in range(args.batches):
                optimizer.zero_grad(set_to_none=True)
                loss, _ = step(model, x[64 * i: 64 * (i + 1)], y[64 * i: 64 * (i + 1)])
                loss.backward()
                optimizer.step()
        return one_pass

    seconds = common.interleaved({arch: trainer(arch) for arch in args.widths}, repeats=args.repeats)
    rows = []
    for arch in args.widths:
        rate = 64 * args.batches / common.median(seconds[arch])
        budget = rate * args.minutes * 60 * 0.85
        rows.append({"arch": arch, "img/s (median)": round(rate, 1),
                     "runs (img/s)": [round(64 * args.batches / s, 1) for s in seconds[arch]],
                     f"AT images in {args.minutes:g} min": int(budget),
                     **{f"per class at {e} epochs": int(budget / e / 5) for e in (6, 8, 10)}})
    print(common.table(rows, ["arch", "img/s (median)", f"AT images in {args.minutes:g} min",
                              "per class at 6 epochs", "per class at 8 epochs", "per class at 10 epochs"]))
    path = common.write("fashion_sizing", {"command": "python bench/fashion_sizing.py " + " ".join(sys.argv[1:]),
                                           "machine": common.machine(), "threads": torch.get_num_threads(),
                                           "rows": rows})
    print(f"\n{path}")


if __name__ == "__main__":
    main()
