"""Scoring a run: the resident model's logits, and the metrics of an evaluation over ALL clients
and the global test set (each client's personalized model, for a method that personalizes)."""
from __future__ import annotations

import math

import numpy as np
import torch

from fedcore.alignment import tkl
from fedcore.assembly import Resident
from fedcore.data import take
from fedcore.local import autocast
from fedcore.methods.base import ServerState, State
from fedcore.metrics import (MEAN_CLIENT_ACC, WORST_CLIENT_ACC, class_summary, client_accuracies, client_summary,
                             domain_summary, local_class_summary, placeholder_row, teacher_summary)
from fedcore.params import load_state


class Evaluator:
    def __init__(self, res: Resident):
        self.res = res
        self.train_counts = res.data.train_class_counts()

    def placeholder(self) -> dict[str, float]:
        """The evaluation keys, all NaN: what rounds before the first evaluation report."""
        d = self.res.data
        return placeholder_row(d.num_classes, d.client_ids, d.domain_names, "teacher_logits" in d.test_inputs,
                               self.res.method.personalizes)

    @torch.inference_mode()
    def logits(self, inputs: dict[str, torch.Tensor], rows: np.ndarray | None = None) -> torch.Tensor:
        """The resident model's logits (eval mode, on the CPU) of each row (all rows when `rows` is
        None), in the order given."""
        cfg, model = self.res.cfg, self.res.model
        model.eval()
        n = len(next(iter(inputs.values()))) if rows is None else len(rows)
        rows_t = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        order = torch.arange(n)
        if "lengths" in inputs and n:  # batch similar lengths together: less padding
            order = torch.argsort(inputs["lengths"][rows_t], stable=True)
        out = None
        for start in range(0, n, cfg.eval.batch_size):
            sel = order[start:start + cfg.eval.batch_size]
            batch = {k: v.to(cfg.device) for k, v in take(inputs, rows_t[sel]).items()}
            with autocast(cfg.precision, cfg.device):
                z = model(batch).float().cpu()
            if out is None:
                out = torch.empty(n, z.shape[-1])
            out[sel] = z
        return out if out is not None else torch.zeros(0, self.res.data.num_classes)

    def predict(self, inputs: dict[str, torch.Tensor], rows: np.ndarray | None = None) -> np.ndarray:
        """Predicted class of each row (all rows when `rows` is None), in the order given."""
        return self.logits(inputs, rows).argmax(-1).numpy()

    def evaluate(self, global_state: State, server_state: ServerState, initial_state: State) -> dict[str, float]:
        """Metrics of the global model for ALL clients and on the balanced global test set (each
        client's personalized model on its own test split, for a method that personalizes)."""
        res = self.res
        ecfg = res.cfg.eval
        load_state(res.params, global_state)
        d = res.data
        test_logits = self.logits(d.test_inputs)
        test_pred = test_logits.argmax(-1).numpy()
        test_y = d.test_labels.numpy()
        counts = self.train_counts
        out = class_summary(test_pred, test_y, d.num_classes, counts, ecfg.many_min, ecfg.few_max)
        inputs, labels = (d.test_inputs, test_y) if d.client_test_on == "test" else (d.train_inputs, d.train_labels.numpy())
        rows = np.concatenate(d.client_test) if d.client_test else np.zeros(0, np.int64)
        splits = np.cumsum([len(i) for i in d.client_test])[:-1]
        global_pred = test_pred[rows] if d.client_test_on == "test" else self.predict(inputs, rows)
        if "teacher_logits" in d.test_inputs:  # the zero-shot baseline row, on the same test sets
            t_pred = d.test_inputs["teacher_logits"].argmax(-1).numpy()
            t = class_summary(t_pred, test_y, d.num_classes, counts, ecfg.many_min, ecfg.few_max)
            t_local = inputs["teacher_logits"][rows].argmax(-1).numpy()
            out.update(teacher_summary(t, client_accuracies(np.split(t_local == labels[rows], splits)),
                                       local_class_summary(t_local, labels[rows], d.num_classes, counts,
                                                           ecfg.many_min, ecfg.few_max)))
            out["tkl_to_zero_shot"] = float(tkl(test_logits, d.test_inputs["teacher_logits"]).mean()) if len(test_y) else math.nan
        if d.domain_names and d.test_domains is not None:
            out.update(domain_summary(test_pred, test_y, d.test_domains, d.domain_names))
        pred = global_pred
        if res.method.personalizes:
            gm = client_summary(client_accuracies(np.split(global_pred == labels[rows], splits)))
            out.update({f"gm_{k}": gm[k] for k in (MEAN_CLIENT_ACC, WORST_CLIENT_ACC)})
            pred = self.personal_predictions(inputs, d.client_test, global_state, server_state, initial_state)
        hit = pred == labels[rows]
        acc = client_accuracies(np.split(hit, splits))
        out.update(client_summary(acc))
        out.update({f"client_acc/{k}": float(a) for k, a in zip(d.client_ids, acc)})
        out.update(local_class_summary(pred, labels[rows], d.num_classes, counts, ecfg.many_min, ecfg.few_max))
        return out

    def personal_predictions(self, inputs: dict[str, torch.Tensor], client_rows: list[np.ndarray], global_state: State,
                             server_state: ServerState, initial_state: State) -> np.ndarray:
        """Each client's personalized prediction (global + private branch) on its rows, concatenated."""
        res = self.res
        names = res.names()
        global_logits = [self.logits(inputs, r) for r in client_rows]
        preds = []
        for k, (r, lg) in enumerate(zip(client_rows, global_logits)):
            load_state(res.params, server_state.held_state(k, names, initial_state))
            preds.append(res.method.personal_logits(lg, self.logits(inputs, r)).argmax(-1).numpy())
        load_state(res.params, global_state)
        return np.concatenate(preds) if preds else np.zeros(0, np.int64)
