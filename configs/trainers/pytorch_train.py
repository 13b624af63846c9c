#!/usr/bin/env python3
"""An institution's own PyTorch training of logistic regression or an MLP, run by its node.

Configure the node with (node.toml):

  [source]
  kind = "external"
  mode = "persistent"            # or "per-round": a new process every round
  command = ["python3", "trainers/pytorch_train.py", "--data", "data/hospital-a.csv",
             "--target", "benign", "--classes", "2"]
  initial_model = "initial.safetensors"
  # The consortium's pooled feature scaling (the plan takes 4 x features + 1 more values):
  pooled_scaling = { data = "data/hospital-a.csv", target = "benign" }

The initial model comes from `quorate model init --model logistic --features 30 --classes 2
--out initial.safetensors` (or `--model mlp --hidden 16`, whose tensor names this script's
network shares). quorate_trainer.py, beside this file, loads the global model, runs `train`
and writes the update in either mode. The data never leaves this process; only the update,
which the node clips, encodes and encrypts, does. Needs torch and safetensors
(scripts/setup-pytorch installs a CPU-only build).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quorate_trainer  # noqa: E402


def network(features, classes, hidden):
    if hidden == 0:
        return torch.nn.Linear(features, classes)
    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--hidden", type=int, default=0, help="0: logistic regression")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    raw, y, columns = quorate_trainer.load_csv(args.data, args.target, columns=True)
    # Without the consortium's pooled scaling, this institution's own statistics: nothing
    # about them leaves here, but they differ between institutions whose data differ.
    mean, std = raw.mean(0), raw.std(0, unbiased=False).clamp_min(1e-6)
    local = (raw - mean) / std

    def features():
        if quorate_trainer.scaling() is None:
            return local
        return quorate_trainer.scale(raw, columns)

    model = network(raw.shape[1], args.classes, args.hidden)

    def train(model, round_number):
        torch.manual_seed(args.seed * 1_000_003 + round_number)
        optimiser = torch.optim.SGD(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
        quorate_trainer.fit(model, features(), y, optimiser, args.epochs, args.batch)
        return len(y)

    quorate_trainer.run(model, train)


if __name__ == "__main__":
    main()
