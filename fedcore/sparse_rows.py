"""Row-sparse SGD for embedding tables: the same update as dense SGD, bit for bit, touching only rows.

A TextCNN step looks up a few thousand of its 20,000 embedding rows, yet dense training zeroes a
20,000 x 128 gradient, runs the embedding backward into it and moves momentum and weights for every
row: about a fifth of a W1 step (benchmarks/). Here the embedding output is a leaf whose gradient
is summed into the looked-up rows with index_add_ (the accumulation order of torch's dense
embedding backward, so the row gradients are bitwise those of the dense path), and SGD with
momentum updates only the rows touched so far by this optimizer: a row never looked up has zero
momentum and keeps its weight exactly, as it does under dense SGD.

Exact only for plain SGD (momentum, no weight decay, no dampening or Nesterov) and when nothing
else reads or changes the embedding's .grad; `make_optimizer` uses it only then (otherwise the
embedding trains densely as any other parameter).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RowSparseEmbedding(nn.Embedding):
    """nn.Embedding (same weights, same state_dict keys) that, while `collect` is on, hands its rows'
    gradients to a RowSparseSGD instead of building a dense .grad."""

    collect = False

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (self.collect and torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(ids)
        out = F.embedding(ids, self.weight.detach(), self.padding_idx).requires_grad_()
        flat = ids.reshape(-1)

        def rows_grad(grad: torch.Tensor) -> None:
            if self._pending is not None:
                raise RuntimeError("RowSparseEmbedding: looked up twice in one step; train it densely")
            keep = flat != self.padding_idx if self.padding_idx is not None else torch.ones_like(flat, dtype=torch.bool)
            rows, inverse = torch.unique(flat[keep], return_inverse=True)
            g = torch.zeros(len(rows), self.embedding_dim, dtype=grad.dtype, device=grad.device)
            self._pending = (rows, g.index_add_(0, inverse, grad.reshape(-1, self.embedding_dim)[keep]))

        out.register_hook(rows_grad)
        return out

    _pending: tuple[torch.Tensor, torch.Tensor] | None = None


class RowSparseSGD:
    """torch SGD (foreach, momentum, no weight decay) over the dense parameters, and the same
    momentum update restricted to touched rows for each RowSparseEmbedding."""

    def __init__(self, dense: torch.optim.Optimizer, embeddings: list[RowSparseEmbedding], lr: float, momentum: float):
        self.dense, self.embeddings, self.lr, self.momentum = dense, embeddings, lr, momentum
        self.buf = [torch.zeros_like(e.weight) for e in embeddings]
        self.touched = [torch.zeros(e.num_embeddings, dtype=torch.bool, device=e.weight.device) for e in embeddings]
        self.steps = 0
        for e in embeddings:
            e.collect, e._pending = True, None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        for e in self.embeddings:
            e._pending = None

    @torch.no_grad()
    def step(self) -> None:
        self.dense.step()
        for e, buf, touched in zip(self.embeddings, self.buf, self.touched):
            if e._pending is None:
                continue
            rows, g = e._pending
            touched[rows] = True
            live = touched.nonzero().squeeze(1)
            b = buf.index_select(0, live)
            grad = torch.zeros_like(b)
            grad.index_copy_(0, torch.searchsorted(live, rows), g)
            if self.steps and self.momentum:  # torch SGD: the first step's buffer is the gradient itself
                b.mul_(self.momentum).add_(grad)
            else:
                b = grad
            buf.index_copy_(0, live, b)
            w = e.weight.index_select(0, live).add_(b, alpha=-self.lr)
            e.weight.index_copy_(0, live, w)
            e._pending = None
        self.steps += 1

    def close(self) -> None:
        """Back to dense lookups (evaluation, another optimizer)."""
        for e in self.embeddings:
            e.collect, e._pending = False, None


def row_sparse_embeddings(model: nn.Module) -> list[RowSparseEmbedding]:
    return [m for m in model.modules() if isinstance(m, RowSparseEmbedding) and m.weight.requires_grad]
