"""What the studies' nuisance spaces share: the learning rate (log-uniform) and the local epochs."""
from __future__ import annotations

import optuna


def lr_and_epochs(lr_range: tuple[float, float], max_local_epochs: int) -> dict[str, optuna.distributions.BaseDistribution]:
    space: dict[str, optuna.distributions.BaseDistribution] = {
        "optimizer.lr": optuna.distributions.FloatDistribution(*lr_range, log=True)}
    if max_local_epochs > 1:
        space["local_epochs"] = optuna.distributions.IntDistribution(1, max_local_epochs)
    return space
