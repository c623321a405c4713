"""Metrics with the definitions pinned in DESIGN.md (accuracies are fractions in [0, 1]).

Client level (over ALL clients, not only this round's cohort): acc_k on client k's test split;
mean_client_acc (unweighted mean), worst_client_acc (min), gap = mean - worst, spread = best -
worst, client_acc_std (population std), bottom10_client_acc (mean of the lowest ceil(10%) of
clients). A client whose test split is empty has no accuracy: it is left out of these and counted
in `clients_without_test`.

Class level, on the global test set (class-balanced where the source's test split is, as for
AG News and synthetic:topics): global_acc, balanced_acc (mean class accuracy, which is global_acc
on a balanced set and its balanced counterpart otherwise), class_acc/<c>, balancedness =
min over classes of class accuracy (worst-class accuracy), balance_ratio = min / max, and
many_acc / medium_acc / few_acc, the mean class accuracy over classes grouped by their global
training count (> many_min, few_max < n <= many_min, <= few_max): the class's count in the whole
training pool (FederatedData.train_class_counts), not what is left after the local hold-outs. A
group with no class is NaN.

Domain level, where the data carries domains (LoRA-FAIR's table): domain_acc/<name>, the accuracy
on the global test set's samples of that domain, and domain_avg_acc, their unweighted mean.

Pooled over clients (LOCAL_KEYS): the class metrics over the union of all clients' test splits,
each sample predicted by its own client's evaluated model (the personalized one for FedPuReL).
The zero-shot row (TEACHER_KEYS, where a run has a teacher): the frozen teacher's global and
per-class accuracy, balancedness and Many/Medium/Few on the test set, and its client and pooled
metrics on the clients' test splits. GLOBAL_CLIENT_KEYS: for a personalizing method, the global
model's mean and worst client accuracy on the same splits.
"""
from __future__ import annotations

import math

import numpy as np
import torch

CLIENT_KEYS = ("mean_client_acc", "worst_client_acc", "gap", "spread", "client_acc_std",
               "bottom10_client_acc", "best_client_acc")
CLASS_KEYS = ("global_acc", "balancedness", "balance_ratio", "many_acc", "medium_acc", "few_acc")
# class accuracy over all clients' test splits pooled (each client's prediction by the evaluated model)
LOCAL_KEYS = ("local_balancedness", "local_many_acc", "local_medium_acc", "local_few_acc")
# the zero-shot baseline row: the teacher on the global test set and on the clients' test splits
TEACHER_KEYS = ("teacher_acc", "teacher_balancedness", "teacher_many_acc", "teacher_medium_acc", "teacher_few_acc",
                "teacher_mean_client_acc", "teacher_worst_client_acc", *(f"teacher_{k}" for k in LOCAL_KEYS))
# a personalizing method: the global model alone on the clients' test splits
GLOBAL_CLIENT_KEYS = ("gm_mean_client_acc", "gm_worst_client_acc")


def client_accuracies(correct_per_client: list[np.ndarray]) -> np.ndarray:
    """acc_k for each client from boolean arrays of per-sample correctness (NaN if empty)."""
    return np.array([c.mean() if len(c) else np.nan for c in correct_per_client], dtype=np.float64)


def client_summary(acc: np.ndarray) -> dict[str, float]:
    valid = np.sort(acc[~np.isnan(acc)])
    out: dict[str, float] = {"clients_without_test": float(np.isnan(acc).sum()),
                             "num_eval_clients": float(len(valid))}
    if len(valid) == 0:
        return {**out, **{k: math.nan for k in CLIENT_KEYS}}
    mean, worst, best = float(valid.mean()), float(valid[0]), float(valid[-1])
    tail = max(1, math.ceil(0.1 * len(valid)))
    out.update(mean_client_acc=mean, worst_client_acc=worst, best_client_acc=best, gap=mean - worst,
               spread=best - worst, client_acc_std=float(valid.std()),
               bottom10_client_acc=float(valid[:tail].mean()))
    return out


def class_accuracies(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    correct = np.bincount(labels, weights=(preds == labels).astype(np.float64), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def class_summary(preds: np.ndarray, labels: np.ndarray, num_classes: int, train_counts: np.ndarray,
                  many_min: int = 100, few_max: int = 20) -> dict[str, float]:
    acc = class_accuracies(preds, labels, num_classes)
    present = acc[~np.isnan(acc)]
    out: dict[str, float] = {"global_acc": float((preds == labels).mean()) if len(labels) else math.nan,
                             "balanced_acc": float(present.mean()) if len(present) else math.nan}
    if len(present):
        lo, hi = float(present.min()), float(present.max())
        out["balancedness"] = lo
        out["balance_ratio"] = lo / hi if hi > 0 else 0.0
    else:
        out["balancedness"] = out["balance_ratio"] = math.nan
    groups = {"many_acc": train_counts > many_min,
              "medium_acc": (train_counts > few_max) & (train_counts <= many_min),
              "few_acc": train_counts <= few_max}
    for key, mask in groups.items():
        vals = acc[mask & ~np.isnan(acc)]
        out[key] = float(vals.mean()) if len(vals) else math.nan
    for c in range(num_classes):
        out[f"class_acc/{c}"] = float(acc[c])
    return out


def local_class_summary(preds: np.ndarray, labels: np.ndarray, num_classes: int, train_counts: np.ndarray,
                        many_min: int = 100, few_max: int = 20) -> dict[str, float]:
    """LOCAL_KEYS from the clients' test predictions pooled (classes absent from them are left out)."""
    s = class_summary(preds, labels, num_classes, train_counts, many_min, few_max)
    return {"local_balancedness": s["balancedness"], "local_many_acc": s["many_acc"],
            "local_medium_acc": s["medium_acc"], "local_few_acc": s["few_acc"]}


def teacher_summary(test: dict[str, float], client_acc: np.ndarray, local: dict[str, float]) -> dict[str, float]:
    """TEACHER_KEYS from the teacher's class_summary on the test set, its per-client accuracies and its
    local_class_summary."""
    c = client_summary(client_acc)
    return {"teacher_acc": test["global_acc"], "teacher_balancedness": test["balancedness"],
            "teacher_many_acc": test["many_acc"], "teacher_medium_acc": test["medium_acc"],
            "teacher_few_acc": test["few_acc"], "teacher_mean_client_acc": c["mean_client_acc"],
            "teacher_worst_client_acc": c["worst_client_acc"], **{f"teacher_{k}": v for k, v in local.items()},
            **{f"teacher_{k}": v for k, v in test.items() if k.startswith("class_acc/")}}


def domain_summary(preds: np.ndarray, labels: np.ndarray, domains: np.ndarray, names: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d, name in enumerate(names):
        sel = domains == d
        out[f"domain_acc/{name}"] = float((preds[sel] == labels[sel]).mean()) if sel.any() else math.nan
    vals = [v for v in out.values() if not math.isnan(v)]
    out["domain_avg_acc"] = float(np.mean(vals)) if vals else math.nan
    return out


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain fixed-width table for terminal output."""
    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def lora_round_metrics(fed, updates, prev_global, prev_ranks, prev_server=None) -> dict[str, float]:
    """Rank-collapse and communication metrics of a LoRA round (DESIGN.md, METHODS.md 4.2).

    The global update of layer l is everything the federation has added to its frozen base weight:
    s_max * B_g A_g (the global adapter after aggregation) plus, for a method that merges updates
    into the base (FLoRA: `frozen_delta/` in its server state), the deltas merged so far. The same
    cumulative quantity for every method. Its energy inside the smallest client rank
    (`energy_shared`), outside it (`energy_outside_shared`), in each partition between consecutive
    distinct ranks (`energy_partition/<m>`, m = 1 the shared part) and its effective rank, averaged
    over layers; `energy_outside_shared_layer0` is the first LoRA layer alone.
    `round_energy_outside_shared` is the same share for this round's increment of the global update
    (what the round added; for FLoRA the increment it merged). Bytes count LoRA factors up to each
    client's rank."""
    from fedcore import lora

    lcfg = fed.cfg.model.lora
    ranks = sorted({int(r) for r in fed.server_state["ranks"].tolist()})
    s_max = lora.scale(lcfg.alpha, lcfg.resident_rank)
    layers = lora.lora_layers(fed.global_state)

    def total(state, server, prefix, a, b):
        delta = lora.product(state[a], state[b], s_max)
        merged = (server or {}).get(f"frozen_delta/{lora.base_weight_key(prefix)}")
        return delta if merged is None else delta + merged.to(torch.float64)

    fractions, eff, increments = [], [], []
    for prefix, (a, b) in layers.items():
        delta = total(fed.global_state, fed.server_state, prefix, a, b)
        s2 = torch.linalg.svdvals(delta) ** 2  # one SVD for both: they are on every LoRA round's path
        fractions.append(lora.energy_fractions(delta, ranks, s2))
        eff.append(lora.effective_rank(delta, s2))
        step = delta - total(prev_global, prev_server, prefix, a, b)
        increments.append(lora.energy_fractions(step, ranks[:1])[1])
    out: dict[str, float] = {}
    if fractions:
        f = np.array(fractions)  # layers x (len(ranks) + 1)
        mean = np.nanmean(f, axis=0) if not np.isnan(f).all() else f[0]
        out["energy_shared"] = float(mean[0])
        out["energy_outside_shared"] = float(1 - mean[0])
        out["energy_outside_shared_layer0"] = float(1 - f[0][0])
        for m in range(len(ranks)):
            out[f"energy_partition/{m + 1}"] = float(mean[m])
        out["effective_rank"] = float(np.nanmean(eff)) if not np.isnan(eff).all() else math.nan
        out["round_energy_outside_shared"] = float(np.nanmean(increments)) if not np.isnan(increments).all() \
            else math.nan

    def sent(state, rank):
        return lora.nbytes(state, {k: rank for k in state if "lora_" in k} if rank else None)

    out["comm_bytes_up"] = float(sum(sent(u.state, u.rank) for u in updates))
    out["comm_bytes_down"] = float(sum(sent(prev_global, int(prev_ranks[u.client])) for u in updates))
    return out
