#!/usr/bin/env python3
"""An institution's own PyTorch training, run by its Quorate node once per round.

The node starts this command with three environment variables:

  QUORATE_MODEL   a safetensors file holding the global model (float32 tensors named as in
                  the node's `[source] tensors`, here PyTorch's own state_dict names)
  QUORATE_UPDATE  where to write the update: the same tensors, holding trained minus global,
                  with the number of training rows as the metadata key "samples"
  QUORATE_ROUND   the round number

Configure the node with (node.toml):

  [source]
  kind = "external"
  command = ["python3", "trainers/pytorch_train.py", "--data", "data/hospital-a.csv",
             "--target", "benign", "--classes", "2"]
  tensors = [{ name = "weight", shape = [2, 30] }, { name = "bias", shape = [2] }]
  # MLP (--hidden 16): "0.weight" [16, 30], "0.bias" [16], "2.weight" [2, 16], "2.bias" [2],
  # and an agreed `initial_model`, since a network of zeros cannot learn.

Needs: pip install torch safetensors. The data never leaves this process; only the update,
which the node clips, encodes and encrypts, does.
"""

import argparse
import csv
import os
import sys

import torch
from safetensors.torch import load_file, save_file


def load_rows(path, target):
    """Features and labels from a CSV file with a header and a class-index column."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if target not in header:
            sys.exit(f"{path}: no column named {target!r}")
        t = header.index(target)
        features, labels = [], []
        for row_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                sys.exit(f"{path}, row {row_number}: {len(row)} fields, the header has {len(header)}")
            try:
                labels.append(int(row[t]))
                features.append([float(v) for i, v in enumerate(row) if i != t])
            except ValueError as e:
                sys.exit(f"{path}, row {row_number}: {e}")
    return torch.tensor(features), torch.tensor(labels)


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

    round_number = int(os.environ["QUORATE_ROUND"])
    torch.manual_seed(args.seed * 1_000_003 + round_number)

    x, y = load_rows(args.data, args.target)
    # Standardise with this institution's own statistics: nothing about them leaves here.
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std

    model = network(x.shape[1], args.classes, args.hidden)
    global_model = load_file(os.environ["QUORATE_MODEL"])
    model.load_state_dict(global_model)  # fails loudly if the tensors do not match

    optimiser = torch.optim.SGD(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), args.batch):
            batch = order[start : start + args.batch]
            optimiser.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()

    trained = model.state_dict()
    update = {name: (trained[name] - global_model[name]).contiguous() for name in global_model}
    save_file(update, os.environ["QUORATE_UPDATE"], metadata={"samples": str(len(y))})


if __name__ == "__main__":
    main()
