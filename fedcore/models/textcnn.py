"""TextCNN (Kim 2014) and a small MLP for feature vectors."""
from __future__ import annotations

import torch
from torch import nn

from fedcore.sparse_rows import RowSparseEmbedding


class TextCNN(nn.Module):
    """Embedding -> parallel 1-D convolutions -> max over time -> dropout -> linear.

    Defaults (vocab 20,000, embedding 128, 100 filters of widths 3/4/5) give the ~2.7M
    parameters of the FM Fairness Paradox paper's TextCNN.
    """

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 128,
                 num_filters: int = 100, kernel_sizes: tuple[int, ...] = (3, 4, 5), dropout: float = 0.5):
        super().__init__()
        # an nn.Embedding whose SGD updates touch only looked-up rows (same result: fedcore/sparse_rows.py)
        self.embedding = RowSparseEmbedding(vocab_size, embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, num_filters, k) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_filters * len(kernel_sizes), num_classes)
        self.min_len = max(kernel_sizes)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        if ids.shape[1] < self.min_len:  # a batch trimmed below the widest kernel
            ids = nn.functional.pad(ids, (0, self.min_len - ids.shape[1]))
        x = self.embedding(ids).transpose(1, 2)
        # windows that start past a text's last token see only padding: leave them out of the
        # max, so that a prediction does not depend on how long its batch neighbours are
        length = (ids != 0).sum(1, keepdim=True).clamp(min=self.min_len)
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))
            valid = torch.arange(h.shape[2], device=ids.device) <= length - conv.kernel_size[0]
            pooled.append(h.masked_fill(~valid.unsqueeze(1), 0.0).amax(dim=2))
        return self.classifier(self.dropout(torch.cat(pooled, dim=1)))


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch["x"])
