#!/usr/bin/env python3
"""A small CNN with BatchNorm on 8x8 digit images, trained by an institution's Quorate node.

Write the consortium's initial model once (every member then starts from this file; the plan
pins its digest):

  python3 pytorch_cnn.py --init initial.safetensors --seed 0

(`--channels 32 --hidden 288` makes a larger network, 151,082 values instead of 1,402; give the
same two options to the trainer's command.)

Run by the node, in per-round or persistent mode (node.toml):

  [source]
  kind = "external"
  mode = "persistent"
  command = ["python3", "../trainers/pytorch_cnn.py", "--data", "data.csv"]
  initial_model = "../initial.safetensors"

The data is a CSV file with a header, 64 pixel columns and a class column (`--target`, 0..9),
as configs/data/digits.csv. The rows never leave this process; the node encrypts the update.
Needs torch and safetensors (scripts/setup-pytorch installs a CPU-only build).
"""

import argparse
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quorate_trainer  # noqa: E402


def network(channels=8, hidden=0):
    """The CNN: `channels` convolution filters, then a hidden layer of `hidden` units if not 0
    (8 and 0: 1,402 federated values; 32 and 288: 151,082)."""
    head = (
        [torch.nn.Linear(channels * 4 * 4, 10)]
        if hidden == 0
        else [
            torch.nn.Linear(channels * 4 * 4, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10),
        ]
    )
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1),
        torch.nn.BatchNorm2d(channels),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        *head,
    )


def load_rows(path, target):
    """The rows as images, scaled by a function of the request in hand: with the consortium's
    pooled scaling when the node hands one over ([source.pooled_scaling]), else by a fixed
    scale (pixels are 0..16 in the shipped digits), the same at every institution."""
    x, y, columns = quorate_trainer.load_csv(path, target, columns=True)
    if x.shape[1] != 64:
        sys.exit(f"{path}: {x.shape[1]} pixel columns, this network takes 64 (8x8)")
    fixed = (x / 16.0).reshape(-1, 1, 8, 8)

    def images():
        if quorate_trainer.scaling() is None:
            return fixed
        return quorate_trainer.scale(x, columns).reshape(-1, 1, 8, 8)

    return images, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", metavar="FILE", help="write the initial model and exit")
    parser.add_argument("--data")
    parser.add_argument("--target", default="label")
    parser.add_argument("--test-data", help="held-out rows: the global model is measured on them")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=8, help="convolution filters")
    parser.add_argument("--hidden", type=int, default=0, help="units of a hidden layer (0: none)")
    parser.add_argument("--keep-updates", metavar="DIR", help="also keep a copy of each update")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.init:
        torch.manual_seed(args.seed)
        save_file(network(args.channels, args.hidden).state_dict(), args.init)
        return
    if not args.data:
        parser.error("--data is required (or --init)")
    images, y = load_rows(args.data, args.target)
    model = network(args.channels, args.hidden)

    def train(model, round_number):
        torch.manual_seed(args.seed * 1_000_003 + round_number)
        model.train()
        optimiser = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9)
        quorate_trainer.fit(model, images(), y, optimiser, args.epochs, args.batch)
        return len(y)

    evaluate = None
    if args.test_data:
        test_images, test_y = load_rows(args.test_data, args.target)

        def evaluate(model):
            model.eval()
            out = model(test_images())
            return {
                "accuracy": (out.argmax(1) == test_y).float().mean().item(),
                "loss": torch.nn.functional.cross_entropy(out, test_y).item(),
                "rows": len(test_y),
            }

    quorate_trainer.run(model, train, evaluate=evaluate, keep_updates=args.keep_updates)


if __name__ == "__main__":
    main()
