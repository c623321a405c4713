"""Seeds derived, not carried: every random draw of a run comes from its seed and a named purpose.

The engine's draws take `derive_seed(run seed, round, client, purpose)`; the data layer's take a
numpy generator of `[seed, salt]` (or `[seed, salt, client]`). Both kinds of purpose are named in
`Purpose`, so that a new draw picks a value no other draw uses. The values are those the draws
have always used: changing one changes every result that depends on it.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class Purpose(IntEnum):
    # engine draws: derive_seed(seed, round, client, purpose)
    LOCAL_TRAINING = 1  # a client's batch order and dropout in a round (both executors)
    MODEL_INIT = 2  # the model's initial weights (round 0)
    COHORT = 3  # the clients a round samples
    PERSONALIZE = 4  # stage 2 of a personalizing method (FedPuReL), per client and round
    PASS_DROPOUT = 5  # the batched executor: dropout masks of one pass (rounds >= 1)
    # the same value as PASS_DROPOUT (an alias): the rank assignment draws at round 0 and passes at
    # rounds >= 1, so the two never derive the same seed; kept so that earlier runs reproduce
    RANK_ASSIGNMENT = 5  # which client gets which rank of a rank profile
    FLORA_ROUND = 7  # FLoRA's server draws of a round
    LORA_FAIR_ROUND = 11  # LoRA-FAIR's server draws of a round (delta_init)
    # data-layer salts: numpy.random.default_rng([seed, salt, ...])
    CLASS_ASSIGNMENT = 0xC1A55  # which classes each client holds (class-per-client schemes)
    CLASS_SPLIT = 0x5A3E  # splitting a class's samples over its clients
    SHARDS = 0x5BA2D  # shard partitioning
    POOLED_HIERARCHICAL = 0x9001  # the pooled (coarse, fine) Dirichlet partition
    LOCAL_TEST = 0x7E57  # a client's local test hold-out (per client)
    STRATIFIED_SUBSAMPLE = 0x5AB  # a class-stratified subsample of a pool
    CLIENT_CAP = 0xCA9  # a client's cap on its training samples (per client)
    TEACHER_DRAW = 0x7EAC4  # each client's teacher, drawn from teacher.per_client
    TEACHER_HEAD = 0xF17E  # a client's fine-tuned teacher head (per client)
    LONG_TAIL = 0x17  # which samples of each class a long-tailed pool keeps
    DERIVED_DOMAINS = 0xD0  # which images get which derived domain (style) of an image source


def derive_seed(seed: int, round_: int, client: int, purpose: Purpose) -> int:
    """A 63-bit seed from (trial seed, round, client, purpose), stable across runs and platforms."""
    parts = (seed, round_, client, purpose)
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)
