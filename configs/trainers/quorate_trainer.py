"""Helpers for an institution's own PyTorch trainer run by a Quorate node.

A trainer is a function from the global model to a trained model:

    import quorate_trainer

    def train(model, round_number):
        # model holds the consortium's global model; train it on this institution's rows
        ...
        return len(rows), {"accuracy": 0.97, "loss": 0.08, "rows": 120}   # metrics optional

    quorate_trainer.run(model, train)

`run` serves both of the node's modes (`mode` in the node's [source]):
- per-round: the node starts the script each round; `run` loads the global model from
  $QUORATE_MODEL, calls `train` once and writes the update to $QUORATE_UPDATE;
- persistent: the node starts the script once and sends one request per round on standard
  input; `run` answers each on standard output (anything the trainer prints goes to standard
  error, so a stray print cannot be taken for an answer).

What is federated: every floating-point tensor of the state_dict, parameters and buffers alike,
so BatchNorm's running_mean and running_var are averaged like weights. Integer buffers
(num_batches_tracked) are not: the node hands them back unchanged with every model, and the
update leaves them out. Tensors are exchanged as float32; the update is trained minus global,
which the node clips to the plan's clip (the plan's `clip`, 1.0 by default) before encoding.

Pooled scaling (`[source.pooled_scaling]` in the node's configuration): the node computes this
institution's feature statistics itself, the first round pools them under encryption (the
trainer is not asked that round), and every later request carries the consortium's mean and
standard deviation per feature. `scale(features, columns)` applies them; `scaling()` gives them.
"""

import json
import os
import shutil
import sys
import time

import torch
from safetensors.torch import load_file, save_file


def load_csv(path, target, columns=False):
    """Features (float32) and labels (class indices) from a CSV file with a header and a
    class-index column named `target`; a bad row ends the trainer naming file and row. With
    `columns=True`, also the feature columns' names (for `scale`)."""
    import csv

    with open(path, newline="") as f:
        reader = csv.reader(f)
        # As the node reads a header: names trimmed, so the columns compare equal.
        header = [h.strip() for h in next(reader)]
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
    x, y = torch.tensor(features), torch.tensor(labels)
    if columns:
        return x, y, [h for i, h in enumerate(header) if i != t]
    return x, y


# The consortium's pooled scaling in force, from the node's latest request.
_scaling = None


# The formula `scale` applies, as the node names it in the scaling file.
_FORMULA = "(sign(x) ln(1 + |x|) - scaling.mean) / scaling.std"


def _load_scaling(path):
    global _scaling
    if not path:
        return
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("scaling") != _FORMULA:
            raise ValueError(
                f"{path}: scaling {metadata.get('scaling')!r}, this helper applies {_FORMULA!r}"
            )
        loaded = {
            "mean": f.get_tensor("scaling.mean"),
            "std": f.get_tensor("scaling.std"),
            "columns": json.loads(metadata.get("columns", "[]")),
        }
    changed = _scaling is None or not (
        torch.equal(loaded["mean"], _scaling["mean"]) and torch.equal(loaded["std"], _scaling["std"])
    )
    _scaling = loaded
    if changed:
        print(
            f"quorate_trainer: the consortium's pooled scaling of {len(loaded['columns'])} "
            "features is in force",
            file=sys.stderr,
            flush=True,
        )


def scaling():
    """The consortium's pooled scaling in force: {"mean", "std"} (a float32 tensor each, one
    value per feature) and "columns" (the features' names, in order), or None without one."""
    return _scaling


def scale(features, columns=None):
    """`features` (rows x features, as load_csv reads them) scaled as the whole consortium
    scales them: (sign(x) ln(1 + |x|) - mean) / std. Give the `columns` load_csv read, and a
    file whose features are not the ones the node computed the statistics from is refused."""
    if _scaling is None:
        raise RuntimeError(
            "no pooled scaling in force: the node's [source] has no pooled_scaling table"
        )
    mean, std = _scaling["mean"], _scaling["std"]
    if columns is not None and list(columns) != _scaling["columns"]:
        raise ValueError(
            f"the features {list(columns)} are not those of the pooled scaling "
            f"{_scaling['columns']}: the node's pooled_scaling must read the trainer's file"
        )
    if features.shape[-1] != mean.shape[0]:
        raise ValueError(
            f"{features.shape[-1]} features, the pooled scaling has {mean.shape[0]}"
        )
    return (torch.sign(features) * torch.log1p(features.abs()) - mean) / std


def fit(model, x, y, optimiser, epochs, batch):
    """Cross-entropy minibatch training of `model` on rows `x` and class indices `y`, the rows
    shuffled each epoch with torch's generator (seed it first for the same bits each run)."""
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for start in range(0, len(y), batch):
            rows = order[start : start + batch]
            optimiser.zero_grad()
            loss_fn(model(x[rows]), y[rows]).backward()
            optimiser.step()


def load_global(path):
    """The global model in a safetensors file, as a state_dict (float32, integer buffers as
    they were)."""
    return load_file(path)


def _federated(name, tensor):
    return tensor.is_floating_point()


def save_update(model, global_state, path, samples, metrics=None):
    """Writes trained minus global for every floating-point tensor of `model`'s state_dict,
    with the number of training rows (`samples`, the update's weight) and optional metrics
    (numbers: accuracy, loss, rows; `run` adds seconds, the time `train` took) in the file's
    metadata."""
    if samples <= 0:
        raise ValueError(f"samples = {samples}: an update stands for at least one row")
    trained = model.state_dict()
    update = {}
    for name, value in trained.items():
        if not _federated(name, value):
            continue
        if name not in global_state:
            raise KeyError(f"{name} is in the model but not in the global model")
        update[name] = (value.detach().float() - global_state[name].float()).contiguous()
    metadata = {"samples": str(int(samples))}
    for key, value in (metrics or {}).items():
        metadata[f"metric.{key}"] = repr(float(value))
    save_file(update, path, metadata=metadata)


def _one_round(model, train, model_path, update_path, round_number, keep_updates):
    global_state = load_global(model_path)
    # Strict: a tensor missing on either side is a different model, said at once.
    model.load_state_dict(global_state, strict=True)
    started = time.monotonic()
    result = train(model, round_number)
    samples, metrics = result if isinstance(result, tuple) else (result, None)
    metrics = dict(metrics or {}, seconds=time.monotonic() - started)
    save_update(model, global_state, update_path, samples, metrics)
    if keep_updates:
        os.makedirs(keep_updates, exist_ok=True)
        shutil.copyfile(update_path, os.path.join(keep_updates, f"update-{round_number}.safetensors"))


def _evaluate(model, evaluate, path, scaling_path):
    if evaluate is None:
        return {"ok": True}
    try:
        _load_scaling(scaling_path)
        model.load_state_dict(load_global(path), strict=True)
        with torch.no_grad():
            metrics = evaluate(model)
        return {
            "ok": True,
            "metrics": {
                "accuracy": float(metrics["accuracy"]),
                "loss": float(metrics["loss"]),
                "rows": int(metrics["rows"]),
            },
        }
    except Exception as e:
        print(f"evaluation: {e!r}", file=sys.stderr, flush=True)
        return {"error": f"{type(e).__name__}: {e}"}


def run(model, train, evaluate=None, keep_updates=None):
    """Serves the node: once (per-round mode) or for every request (persistent mode).
    `evaluate(model)`, if given, measures a model on the institution's held-out rows and returns
    {"accuracy": a, "loss": l, "rows": n}: a persistent trainer is asked after every decrypted
    round, and the node's round report carries the answer. `keep_updates` names a directory
    that keeps a copy of every update written."""
    mode = os.environ.get("QUORATE_TRAINER_MODE", "per-round")
    if mode == "per-round":
        _load_scaling(os.environ.get("QUORATE_SCALING"))
        _one_round(
            model,
            train,
            os.environ["QUORATE_MODEL"],
            os.environ["QUORATE_UPDATE"],
            int(os.environ["QUORATE_ROUND"]),
            keep_updates,
        )
        return
    if mode != "persistent":
        sys.exit(f"QUORATE_TRAINER_MODE = {mode!r}: per-round or persistent")
    answers = sys.stdout
    sys.stdout = sys.stderr
    print(f"quorate_trainer: serving requests (pid {os.getpid()})", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if "evaluate" in request:
            answer = _evaluate(model, evaluate, request["evaluate"], request.get("scaling"))
        else:
            try:
                _load_scaling(request.get("scaling"))
                _one_round(
                    model, train, request["model"], request["update"], int(request["round"]),
                    keep_updates,
                )
                answer = {"ok": True}
            except Exception as e:  # the node logs it and sits the round out; the next may work
                print(f"round {request.get('round')}: {e!r}", file=sys.stderr, flush=True)
                answer = {"error": f"{type(e).__name__}: {e}"}
        # The node takes only the answer that names its request.
        answer["id"] = request.get("id")
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
