"""The round loop: sample a cohort, run its local updates, aggregate, evaluate all clients,
and save/restore everything a round depends on.

Randomness is derived, not carried: the partition from the partition seed, the cohort of round t
from (seed, t), and each client's shuffling and dropout from (seed, t, client). A run restored
after round t therefore continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from fedcore.config import RunConfig
from fedcore.assembly import load_data
from fedcore.data import FederatedData, take
from fedcore.executors import choose_executor
from fedcore.params import load_state, snapshot
from fedcore.seeds import Purpose, derive_seed
from fedcore.local import DivergedError, autocast, make_optimizer
from fedcore.methods import get_method
from fedcore.alignment import tkl
from fedcore.methods.base import client_state
from fedcore.metrics import (class_summary, client_accuracies, client_summary, domain_summary, local_class_summary,
                             lora_round_metrics, placeholder_row, teacher_summary)
from fedcore.models import build_model, count_params, is_transformer
from fedcore.ranks import client_ranks


STATE_VERSION = 1


def running_stats(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, buffer) of the running mean and variance of every batch-norm layer with trainable weights."""
    out = []
    for prefix, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats \
                and any(p.requires_grad for p in m.parameters(recurse=False)):
            out += [(f"{prefix}.{b}" if prefix else b, getattr(m, b)) for b in ("running_mean", "running_var")]
    return out


class Federation:
    def __init__(self, cfg: RunConfig, data: FederatedData | None = None):
        self.cfg = cfg
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.data = data if data is not None else load_data(cfg)
        self.method = get_method(cfg.method.name, cfg.method.params)
        self.method.seed = cfg.seed
        torch.manual_seed(derive_seed(cfg.seed, 0, 0, Purpose.MODEL_INIT))
        self.model = self.method.build_model(lambda: build_model(
            cfg.model, self.data.num_classes, self.data.vocab_size, self.data.in_features,
            self.data.class_names)).to(cfg.device)
        # what clients train and the server aggregates: the trainable parameters, and the running
        # statistics of normalisation layers whose weights train (BatchNorm's mean and variance
        # travel with its weights, as in FedAvg of the full model)
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad] + running_stats(self.model)
        # torch's first optimizer imports torch._dynamo (~2 s once per process): pay it here, not
        # in round 1's timing
        make_optimizer(cfg.optimizer, [torch.zeros(1, requires_grad=True)])
        self.lora = cfg.model.tuning == "lora" and is_transformer(cfg.model.name)
        if self.lora:
            self.method.lora_alpha = cfg.model.lora.alpha
        self.global_state = snapshot(self.params)
        self.initial_state = self.global_state  # what a client-held copy starts from (never changed in place)
        self.server_state = self.method.init_server_state(self.global_state)
        if self.lora:  # each client's rank (zero beyond it in the r_max model); methods may lower them
            ranks = client_ranks(cfg.model.lora, cfg.partition.num_clients, cfg.seed)
            self.server_state["ranks"] = torch.tensor([ranks[c] for c in self.data.client_ids], dtype=torch.long)
        self._frozen = dict(self.model.named_parameters())
        self._frozen_init: dict[str, torch.Tensor] = {}
        self.executor, self.executor_reason = choose_executor(self)
        self.round = 0
        self.history: list[dict[str, float]] = []
        self.total_params, self.trainable_params = count_params(self.model)
        self._train_counts = self.data.train_class_counts()
        self._sizes = np.array([len(i) for i in self.data.client_train])
        self._last_eval: dict[str, float] | None = None

    def nan_eval_metrics(self) -> dict[str, float]:
        """The evaluation keys, all NaN: what rounds before the first evaluation report."""
        d = self.data
        return placeholder_row(d.num_classes, d.client_ids, d.domain_names, "teacher_logits" in d.test_inputs,
                               self.method.personalizes)

    # --- one round ---------------------------------------------------------------------------
    def sample_clients(self, round_: int) -> list[int]:
        n, m = self.data.num_clients, self.cfg.clients_per_round
        if m is None or m >= n:
            return list(range(n))
        rng = np.random.default_rng(derive_seed(self.cfg.seed, round_, 0, Purpose.COHORT))
        return sorted(rng.choice(n, size=m, replace=False).tolist())

    def run_round(self) -> dict[str, float]:
        t0 = time.perf_counter()
        round_ = self.round + 1
        cohort = self.sample_clients(round_)
        updates = self.executor.run(self, cohort, round_)
        new_global, new_server = self.method.aggregate(self.global_state, self.server_state, updates)
        bad = [k for k, v in new_global.items() if not torch.isfinite(v).all()]
        if bad:
            raise DivergedError(f"round {round_}: aggregated weights are not finite ({bad[0]})")
        new_server = dict(new_server)
        method_metrics = {k.split("/", 1)[1]: float(new_server.pop(k)) for k in list(new_server)
                          if k.startswith("metric/")}
        if "ranks" in self.server_state:
            ranks = self.server_state["ranks"].clone()
            for u in updates:
                ranks[u.client] = u.rank
            new_server["ranks"] = ranks
        prev_global, prev_ranks, prev_server = self.global_state, self.server_state.get("ranks"), self.server_state
        self.global_state, self.server_state, self.round = new_global, new_server, round_
        self._apply_frozen()
        if self.method.personalizes:  # stage 2, on the just-aggregated global branch
            self.server_state = {**self.server_state, **self.executor.personalize(self, cohort, round_)}
        n = np.array([u.num_samples for u in updates], dtype=np.float64)
        losses = np.array([u.metrics["train_loss"] for u in updates])
        metrics: dict[str, float] = {"round": float(round_), "cohort_size": float(len(cohort)),
                                     "train_loss": float((losses * n).sum() / n.sum()),
                                     "num_clients": float(self.data.num_clients),
                                     "min_client_size": float(self._sizes.min()),
                                     "max_client_size": float(self._sizes.max())}
        metrics.update(method_metrics)
        metrics["executor_batched"] = float(self.executor.name == "batched")
        for key in (k for k in updates[0].metrics if k.startswith("metric/")):  # a method's client-side figures
            metrics[key.split("/", 1)[1]] = float(np.average([u.metrics[key] for u in updates], weights=n))
        if self.lora:
            metrics.update(lora_round_metrics(self, updates, prev_global, prev_ranks, prev_server))
        t_train = time.perf_counter() - t0
        evaluated = round_ % self.cfg.eval.every == 0 or round_ == self.cfg.rounds
        if evaluated:
            self._last_eval = self.evaluate()
        # every key in every round (schedulers read them): between evaluations, the last values
        metrics.update(self._last_eval or self.nan_eval_metrics())
        metrics["evaluated"] = float(evaluated)
        metrics["seconds"] = time.perf_counter() - t0
        metrics["train_seconds"] = t_train
        self.history.append(metrics)
        return metrics

    # --- evaluation --------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, inputs: dict[str, torch.Tensor], rows: np.ndarray | None = None) -> torch.Tensor:
        """The resident model's logits (eval mode, on the CPU) of each row (all rows when `rows` is
        None), in the order given."""
        self.model.eval()
        n = len(next(iter(inputs.values()))) if rows is None else len(rows)
        rows_t = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        order = torch.arange(n)
        if "lengths" in inputs and n:  # batch similar lengths together: less padding
            order = torch.argsort(inputs["lengths"][rows_t], stable=True)
        out = None
        for start in range(0, n, self.cfg.eval.batch_size):
            sel = order[start:start + self.cfg.eval.batch_size]
            batch = {k: v.to(self.cfg.device) for k, v in take(inputs, rows_t[sel]).items()}
            with autocast(self.cfg.precision, self.cfg.device):
                z = self.model(batch).float().cpu()
            if out is None:
                out = torch.empty(n, z.shape[-1])
            out[sel] = z
        return out if out is not None else torch.zeros(0, self.data.num_classes)

    def predict(self, inputs: dict[str, torch.Tensor], rows: np.ndarray | None = None) -> np.ndarray:
        """Predicted class of each row (all rows when `rows` is None), in the order given."""
        return self.logits(inputs, rows).argmax(-1).numpy()

    def evaluate(self) -> dict[str, float]:
        """Metrics of the global model for ALL clients and on the balanced global test set (each
        client's personalized model on its own test split, for a method that personalizes)."""
        load_state(self.params, self.global_state)
        d = self.data
        test_logits = self.logits(d.test_inputs)
        test_pred = test_logits.argmax(-1).numpy()
        test_y = d.test_labels.numpy()
        counts = self._train_counts
        out = class_summary(test_pred, test_y, d.num_classes, counts, self.cfg.eval.many_min, self.cfg.eval.few_max)
        inputs, labels = (d.test_inputs, test_y) if d.client_test_on == "test" else (d.train_inputs, d.train_labels.numpy())
        rows = np.concatenate(d.client_test) if d.client_test else np.zeros(0, np.int64)
        splits = np.cumsum([len(i) for i in d.client_test])[:-1]
        global_pred = test_pred[rows] if d.client_test_on == "test" else self.predict(inputs, rows)
        if "teacher_logits" in d.test_inputs:  # the zero-shot baseline row, on the same test sets
            t_pred = d.test_inputs["teacher_logits"].argmax(-1).numpy()
            t = class_summary(t_pred, test_y, d.num_classes, counts, self.cfg.eval.many_min, self.cfg.eval.few_max)
            t_local = inputs["teacher_logits"][rows].argmax(-1).numpy()
            out.update(teacher_summary(t, client_accuracies(np.split(t_local == labels[rows], splits)),
                                       local_class_summary(t_local, labels[rows], d.num_classes, counts,
                                                           self.cfg.eval.many_min, self.cfg.eval.few_max)))
            out["tkl_to_zero_shot"] = float(tkl(test_logits, d.test_inputs["teacher_logits"]).mean()) if len(test_y) else math.nan
        if d.domain_names and d.test_domains is not None:
            out.update(domain_summary(test_pred, test_y, d.test_domains, d.domain_names))
        pred = global_pred
        if self.method.personalizes:
            gm = client_summary(client_accuracies(np.split(global_pred == labels[rows], splits)))
            out.update({f"gm_{k}": gm[k] for k in ("mean_client_acc", "worst_client_acc")})
            pred = self.personal_predictions(inputs, d.client_test)
        hit = pred == labels[rows]
        acc = client_accuracies(np.split(hit, splits))
        out.update(client_summary(acc))
        out.update({f"client_acc/{k}": float(a) for k, a in zip(d.client_ids, acc)})
        out.update(local_class_summary(pred, labels[rows], d.num_classes, counts, self.cfg.eval.many_min,
                                       self.cfg.eval.few_max))
        return out

    def personal_predictions(self, inputs: dict[str, torch.Tensor], client_rows: list[np.ndarray]) -> np.ndarray:
        """Each client's personalized prediction (global + private branch) on its rows, concatenated."""
        names = [n for n, _ in self.params]
        global_logits = [self.logits(inputs, r) for r in client_rows]
        preds = []
        for k, (r, lg) in enumerate(zip(client_rows, global_logits)):
            load_state(self.params, client_state(self.server_state, k, names, self.initial_state))
            preds.append(self.method.personal_logits(lg, self.logits(inputs, r)).argmax(-1).numpy())
        load_state(self.params, self.global_state)
        return np.concatenate(preds) if preds else np.zeros(0, np.int64)

    @property
    def client_acc(self) -> np.ndarray:
        """acc_k of every active client at the last evaluation (NaN before the first)."""
        last = self._last_eval or {}
        return np.array([last.get(f"client_acc/{k}", math.nan) for k in self.data.client_ids])

    # --- the whole run -----------------------------------------------------------------------
    def run(self, rounds: int | None = None, on_round=None) -> list[dict[str, float]]:
        target = self.cfg.rounds if rounds is None else rounds
        while self.round < target:
            m = self.run_round()
            if on_round is not None:
                on_round(m)
        return self.history

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.cfg.fingerprint(),
            "round": self.round,
            # on the CPU, so that a state saved on a GPU node restores anywhere
            "global": {k: v.detach().cpu().clone() for k, v in self.global_state.items()},
            "server": {k: v.detach().cpu().clone() for k, v in self.server_state.items()},
            "history": [dict(h) for h in self.history],
            "last_eval": dict(self._last_eval) if self._last_eval else {},
            "rng": {"torch": torch.get_rng_state(), "numpy": torch.as_tensor(np.random.get_state()[1].astype(np.int64)),
                    "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])},
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("version") != STATE_VERSION:
            raise ValueError(f"state version {sd.get('version')} is not {STATE_VERSION}")
        if sd["fingerprint"] != self.cfg.fingerprint():
            raise ValueError("this state was saved by a run with a different config; refusing to restore it")
        missing = set(self.global_state) - set(sd["global"])
        if missing:
            raise ValueError(f"state lacks weights {sorted(missing)[:3]}")
        self.round = int(sd["round"])
        self.global_state = {k: v.to(self.cfg.device) for k, v in sd["global"].items()}
        self.server_state = {k: v.to(self.cfg.device) for k, v in sd["server"].items()}
        self.history = [dict(h) for h in sd["history"]]
        self._last_eval = dict(sd["last_eval"]) or None
        rng = sd["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0))
        random.setstate((3, tuple(rng["python"]), None))
        load_state(self.params, self.global_state)
        self._apply_frozen()

    @torch.no_grad()
    def _apply_frozen(self) -> None:
        """Set frozen parameters to their initial value plus the server's "frozen_delta/<name>"
        (FLoRA merges each round's stacked adapters into the base weights)."""
        for key, delta in self.server_state.items():
            if key.startswith("frozen_delta/"):
                name = key.split("/", 1)[1]
                if name not in self._frozen_init:
                    self._frozen_init[name] = self._frozen[name].detach().clone()
                self._frozen[name].copy_(self._frozen_init[name] + delta.to(self._frozen[name].dtype))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)
        return path

    def restore(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True))
