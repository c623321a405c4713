"""Metrics with the definitions of docs/metrics.md (accuracies are fractions in [0, 1]).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: the reports read this schema without loading torch
    from fedcore.config import LoraConfig
    from fedcore.methods.base import ClientPlan, ClientUpdate, ServerState, State


@dataclass(frozen=True)
class Metric:
    """One row of docs/metrics.md: the keys it covers (space-separated in the schema; `<c>`, `<k>`,
    `<d>` and `<m>` stand for one key per class, client, domain and rank partition), the table it is
    in, its definition, and for the metrics a sweep may rank trials by, which way is better."""
    keys: tuple[str, ...]
    group: str
    definition: str
    method: str | None = None  # the method that reports it (group "method")
    better: str | None = None  # "higher" (allowed as an objective) or "lower"
    label: str | None = None  # its short name in tables, plots and the console

    def __init__(self, keys: str, group: str, definition: str, method: str | None = None, better: str | None = None,
                 label: str | None = None):
        for name, value in (("keys", tuple(keys.split())), ("group", group), ("definition", definition),
                            ("method", method), ("better", better), ("label", label)):
            object.__setattr__(self, name, value)


# Every metric a run reports, declared once: evaluation, the placeholder row of the rounds before the
# first evaluation, the objectives a study may name and docs/metrics.md's tables all come from here.
# A new metric is one entry here plus the function that computes it.
SCHEMA: tuple[Metric, ...] = (
    Metric('mean_client_acc', 'client', 'unweighted mean of acc_k over all clients that have a test split', better="higher", label="mean acc"),
    Metric('worst_client_acc', 'client', 'min_k acc_k', better="higher", label="worst acc"),
    Metric('gap', 'client', "`mean_client_acc` − `worst_client_acc`: the FM Fairness Paradox paper's worst-client gap (mean minus worst, not best minus worst)", better="lower", label="gap"),
    Metric('best_client_acc', 'client', 'max_k acc_k'),
    Metric('spread', 'client', 'best − worst', better="lower"),
    Metric('client_acc_std', 'client', 'population standard deviation of acc_k', better="lower"),
    Metric('bottom10_client_acc', 'client', 'mean of the lowest ⌈10%⌉ of the acc_k (at least one client)'),
    Metric('client_acc/<k>', 'client', 'acc_k of client k, under its number in the partition (numbers of dropped empty clients are skipped, not reused)'),
    Metric('num_eval_clients', 'client', 'clients that have a test split'),
    Metric('clients_without_test', 'client', 'clients whose test split is empty: left out of every metric above, and counted here'),
    Metric('global_acc', 'class', 'accuracy on the global test set', better="higher", label="global acc"),
    Metric('balanced_acc', 'class', 'mean of the class accuracies (equal to `global_acc` on a balanced test set)', better="higher"),
    Metric('class_acc/<c>', 'class', "accuracy on the test samples of class c (c the class index, in the data's class order)"),
    Metric('balancedness', 'class', "min over classes of the class accuracy: the worst class's accuracy", better="higher", label="balancedness"),
    Metric('balance_ratio', 'class', 'min / max class accuracy (0 where the best class is at 0)', better="higher"),
    Metric('many_acc', 'class', 'mean class accuracy over the classes whose training count is > `eval.many_min` (default 100)', better="higher"),
    Metric('medium_acc', 'class', 'the same over the classes with a count in (`eval.few_max`, `eval.many_min`], default (20, 100]', better="higher"),
    Metric('few_acc', 'class', 'the same over the classes with a count ≤ `eval.few_max` (default 20)', better="higher"),
    Metric('local_balancedness', 'local', "the worst class's accuracy over the pooled client test splits", better="higher"),
    Metric('local_many_acc', 'local', 'mean class accuracy of the Many classes over the same', better="higher"),
    Metric('local_medium_acc', 'local', 'the same for the Medium classes', better="higher"),
    Metric('local_few_acc', 'local', 'the same for the Few classes', better="higher"),
    Metric('gm_mean_client_acc', 'personal', "mean over clients of the global model's accuracy on their test splits", better="higher"),
    Metric('gm_worst_client_acc', 'personal', 'the minimum of the same', better="higher"),
    Metric('teacher_acc', 'teacher', "the teacher's accuracy on the global test set"),
    Metric('teacher_class_acc/<c>', 'teacher', 'its accuracy on class c'),
    Metric('teacher_balancedness', 'teacher', 'its worst-class accuracy'),
    Metric('teacher_many_acc teacher_medium_acc teacher_few_acc', 'teacher', 'its Many / Medium / Few accuracies, with the groups above'),
    Metric('teacher_mean_client_acc teacher_worst_client_acc', 'teacher', "its mean and worst accuracy on the clients' test splits"),
    Metric('teacher_local_balancedness teacher_local_many_acc teacher_local_medium_acc teacher_local_few_acc', 'teacher', "its pooled class metrics over the clients' test splits"),
    Metric('tkl_to_zero_shot', 'teacher', "mean over the global test set of the temperature-aligned KL from the global model to the teacher (FedPuReL's analysis metric, KL(softmax(f/tau_f) ‖ softmax(z/tau_z)), [methods.md](methods.md#fedpurel))"),
    Metric('domain_acc/<d>', 'domain', "accuracy on the global test set's samples of domain d (by name)"),
    Metric('domain_avg_acc', 'domain', 'unweighted mean over domains: LoRA-FAIR\'s "Avg" column', better="higher"),
    Metric('energy_shared', 'lora', 'share of the energy inside the smallest client rank, ρ_rmin'),
    Metric('energy_outside_shared', 'lora', "1 − ρ_rmin: energy beyond the smallest rank (raFLoRA's measure of rank collapse)"),
    Metric('energy_outside_shared_layer0', 'lora', 'the same for the first LoRA layer alone'),
    Metric('energy_partition/<m>', 'lora', 'share in rank partition m, between consecutive distinct client ranks (m = 1 is the shared part, (0, r_min])'),
    Metric('effective_rank', 'lora', 'exp of the entropy of the normalised σ_i², averaged over layers'),
    Metric('round_energy_outside_shared', 'lora', "the share outside r_min of this round's increment of the global update alone (for FLoRA, the increment it merged)"),
    Metric('comm_bytes_up', 'lora', "bytes the round's clients sent: their trainable tensors, LoRA factors counted only up to each client's rank"),
    Metric('comm_bytes_down', 'lora', "bytes the server sent them: the previous global state, counted the same way at each receiver's rank"),
    Metric('purified_fraction', 'method', 'share of (client, step, parameter tensor) task gradients that conflicted with the alignment gradient and were projected; sample-weighted over the cohort', method='fedpurel'),
    Metric('cos_ideal_avg', 'method', "cosine of the plain average's product B̄Ā to the ideal update Σ p_k s_k B_k A_k, mean over layers", method='lora_fair'),
    Metric('cos_ideal_corrected', 'method', "the same after the server's correction, (B̄ + ΔB)Ā", method='lora_fair'),
    Metric('cos_Bprime_Bbar', 'method', 'cosine between the corrected and the plain B̄', method='lora_fair'),
    Metric('server_objective_start server_objective_end server_steps_run', 'method', 'the server objective before and after its solve, and the steps it took', method='lora_fair'),
    Metric('round', 'round', 'the round number, from 1'),
    Metric('cohort_size', 'round', 'clients trained this round'),
    Metric('train_loss', 'round', "the cohort's sample-weighted mean local task loss (FedProx's proximal term is not in it)"),
    Metric('num_clients min_client_size max_client_size', 'round', 'active clients (after empty ones are dropped) and the smallest and largest training split'),
    Metric('executor_batched', 'round', '1 where the round ran on the batched executor ([performance.md](performance.md#executors))'),
    Metric('evaluated', 'round', '1 in a round that evaluated (see the conventions above)'),
    Metric('seconds', 'round', 'wall time of the round, evaluation included'),
    Metric('train_seconds', 'round', 'the part before evaluation: local training, aggregation and the LoRA figures'),
    Metric('diverged', 'round', 'in Tune trials: 0, or 1 in the last report of a trial whose loss or aggregated weights stopped being finite (its accuracies are then NaN; the sweep goes on)'),
)
GROUPS = {"client": "Clients", "class": "Classes", "local": "Pooled over clients", "personal": "Personalization",
          "teacher": "The zero-shot row", "domain": "Domains", "lora": "LoRA rounds", "method": "Method figures",
          "round": "Round bookkeeping"}
# the groups an evaluation reports, and which runs report each: every run, or those with a teacher,
# with domains, with a personalizing method
EVALUATED = {"client": "always", "class": "always", "local": "always", "teacher": "teacher", "domain": "domains",
             "personal": "personalizes"}

# the keys the code names
WORST_CLIENT_ACC, MEAN_CLIENT_ACC, GAP, BALANCEDNESS, GLOBAL_ACC = (
    "worst_client_acc", "mean_client_acc", "gap", "balancedness", "global_acc")
# the headline figures a launch's table, its MLflow summary and the generic report lead with
SUMMARY_KEYS = (MEAN_CLIENT_ACC, WORST_CLIENT_ACC, GAP, BALANCEDNESS, GLOBAL_ACC)


def keys_of(group: str) -> tuple[str, ...]:
    """The group's keys in schema order (families as written, e.g. "class_acc/<c>")."""
    return tuple(k for m in SCHEMA if m.group == group for k in m.keys)


def scalar_keys(group: str) -> tuple[str, ...]:
    return tuple(k for k in keys_of(group) if "<" not in k)


LABELS = {k: m.label for m in SCHEMA if m.label for k in m.keys}  # key -> short name
OBJECTIVES = tuple(k for m in SCHEMA if m.better == "higher" for k in m.keys)  # maximised by a sweep
LOWER_IS_BETTER = tuple(k for m in SCHEMA if m.better == "lower" for k in m.keys)
CLIENT_KEYS = tuple(k for k in scalar_keys("client") if k not in ("num_eval_clients", "clients_without_test"))
CLASS_KEYS = tuple(k for k in scalar_keys("class") if k != "balanced_acc")
LOCAL_KEYS = scalar_keys("local")
TEACHER_KEYS = tuple(k for k in scalar_keys("teacher") if k != "tkl_to_zero_shot")
GLOBAL_CLIENT_KEYS = scalar_keys("personal")


def placeholder_row(num_classes: int, client_ids: list[int], domain_names: list[str] | None = None,
                    teacher: bool = False, personalizes: bool = False) -> dict[str, float]:
    """Every key an evaluation of such a run reports, all NaN: what rounds before the first report."""
    applies = {"always": True, "teacher": teacher, "domains": bool(domain_names), "personalizes": personalizes}
    families = {"<c>": [str(c) for c in range(num_classes)], "<k>": [str(k) for k in client_ids],
                "<d>": list(domain_names or ())}
    out: dict[str, float] = {}
    for group, when in EVALUATED.items():
        if not applies[when]:
            continue
        for key in keys_of(group):
            mark = next((f for f in families if f in key), None)
            for name in ([key] if mark is None else [key.replace(mark, v) for v in families[mark]]):
                out[name] = math.nan
    return out


def markdown_table(group: str) -> str:
    """The group's table as docs/metrics.md shows it (tests/test_metrics.py keeps the two equal)."""
    rows = [m for m in SCHEMA if m.group == group]
    if group == "method":
        lines = ["| key | method | definition |", "|---|---|---|"]
        lines += [f"| {', '.join(f'`{k}`' for k in m.keys)} | `{m.method}` | {m.definition} |" for m in rows]
    else:
        lines = ["| key | definition |", "|---|---|"]
        lines += [f"| {', '.join(f'`{k}`' for k in m.keys)} | {m.definition} |" for m in rows]
    return "\n".join(lines)


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
            "teacher_few_acc": test["few_acc"], "teacher_mean_client_acc": c[MEAN_CLIENT_ACC],
            "teacher_worst_client_acc": c[WORST_CLIENT_ACC], **{f"teacher_{k}": v for k, v in local.items()},
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


def lora_round_metrics(lcfg: LoraConfig, global_state: State, server_state: ServerState, updates: list[ClientUpdate],
                       prev_global: State, plans: list[ClientPlan], prev_server: ServerState | None = None
                       ) -> dict[str, float]:
    """Rank-collapse and communication metrics of a LoRA round (docs/metrics.md "LoRA rounds"; docs/methods.md "raFLoRA").

    The global update of layer l is everything the federation has added to its frozen base weight:
    s_max * B_g A_g (the global adapter after aggregation) plus, for a method that merges updates
    into the base (FLoRA: its server state's `frozen_delta`), the deltas merged so far. The same
    cumulative quantity for every method. Its energy inside the smallest client rank
    (`energy_shared`), outside it (`energy_outside_shared`), in each partition between consecutive
    distinct ranks (`energy_partition/<m>`, m = 1 the shared part) and its effective rank, averaged
    over layers; `energy_outside_shared_layer0` is the first LoRA layer alone.
    `round_energy_outside_shared` is the same share for this round's increment of the global update
    (what the round added; for FLoRA the increment it merged). Bytes count LoRA factors up to each
    client's rank: an update's own (`rank`, after the round), what it was sent at the rank of its
    `ClientPlan` (`plans`, the round's, one per update)."""
    import torch  # here: the reports read this schema without loading torch

    from fedcore import lora

    ranks = sorted({int(r) for r in server_state.ranks.tolist()})
    s_max = lora.scale(lcfg.alpha, lcfg.resident_rank)
    layers = lora.lora_layers(global_state)

    def total(state, server, prefix, a, b):
        delta = lora.product(state[a], state[b], s_max)
        merged = server.frozen_delta.get(lora.base_weight_key(prefix)) if server is not None else None
        return delta if merged is None else delta + merged.to(torch.float64)

    fractions, eff, increments = [], [], []
    for prefix, (a, b) in layers.items():
        delta = total(global_state, server_state, prefix, a, b)
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
    out["comm_bytes_down"] = float(sum(sent(prev_global, p.rank) for p in plans))
    return out


if __name__ == "__main__":  # python -m fedcore.metrics: the tables of docs/metrics.md, from SCHEMA
    for group, title in GROUPS.items():
        print(f"{title}\n\n{markdown_table(group)}\n")
