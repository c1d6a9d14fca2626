"""The retriever's training log: one JSON line per logged step, kept across resumes, and the
learning-curve figure drawn from it (training loss, validation Recall/NDCG@K against step)."""
from __future__ import annotations

import json
import os

import matplotlib

from rqsid_jax import workdir as wd

matplotlib.use("Agg")  # headless: CI and TPU VMs have no display
import matplotlib.pyplot as plt  # noqa: E402


def append(path: str, record: dict) -> None:
    """Appends one record; the file survives a kill, so a resumed run keeps its earlier curve."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read(path: str) -> tuple[list[dict], list[dict]]:
    """(training records, validation records), each sorted by step. Steps redone after a resume
    appear twice in the file; the later line wins. A torn last line (killed mid-write) is skipped."""
    train, val = {}, {}
    if not os.path.exists(path):
        return [], []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            (val if any(k.startswith("val_") for k in rec) else train)[rec["step"]] = rec
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


def learning_curve_figure(train: list[dict], val: list[dict], path: str, title: str = "",
                          loss_label: str = "training loss (per SID token)") -> str:
    """Left: training loss per logged step. Right: validation Recall@K / NDCG@K per evaluation."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        a.plot([r["step"] for r in train], [r["train_loss"] for r in train], color="C0")
    a.set_xlabel("step")
    a.set_ylabel(loss_label)
    a.grid(alpha=0.3)
    keys = sorted({k for r in val for k in r if k.startswith(("val_recall@", "val_ndcg@"))},
                  key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
    for i, k in enumerate(keys):
        b.plot([r["step"] for r in val], [r[k] for r in val], marker="o", color=f"C{i}",
               label=k[len("val_"):])
    b.set_xlabel("step")
    b.set_ylabel("validation")
    b.grid(alpha=0.3)
    if keys:
        b.legend()
    fig.suptitle(title or "retriever learning curve")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finish(model_dir: str, title: str, loss_label: str = "training loss (per SID token)") -> tuple[list, list]:
    """A trained model's curve from `<model_dir>/log.jsonl`: writes history.json (the validation
    records) and the learning-curve figure; returns (training records, validation records)."""
    train, history = read(os.path.join(model_dir, wd.TRAIN_LOG))
    wd.write_json(os.path.join(model_dir, wd.HISTORY), history)
    if train or history:
        learning_curve_figure(train, history, os.path.join(model_dir, wd.LEARNING_CURVE), title, loss_label)
    return train, history
