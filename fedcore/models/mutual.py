"""Two models side by side, for Federated Mutual Learning: a shared ("meme") model, the one the
server aggregates and the one evaluated, and a private model that stays with its client.
forward() is the shared model's prediction; the private one is read through `.private`."""
from __future__ import annotations

import torch
from torch import nn


class MutualPair(nn.Module):
    def __init__(self, shared: nn.Module, private: nn.Module):
        super().__init__()
        self.shared, self.private = shared, private

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.shared(batch)
