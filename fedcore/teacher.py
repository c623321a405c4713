"""A frozen zero-shot teacher's logits over a dataset, computed once and cached by content hash.

Used by methods that distil a foundation model (Fed-LPFM: `needs_teacher`) or align with it
(FedPuReL), and for the zero-shot baseline row: the teacher's accuracy on the global test set and on
the clients' test splits is reported with every evaluation (`teacher_acc`, ...), so each study that
uses a foundation model carries it. Text teachers are the sentence-embedding heads of
fedcore/models/zero_shot.py (MiniLM offline); image teachers are CLIP's (fedcore/models/clip.py:
tiny-clip offline, clip:<arch>/<tag> pretrained).

Fed-LPFM's teacher ablations (TeacherConfig.per_client, .finetune_epochs; both off by default) give
each client its own teacher: `client_teacher_logits` rewrites the rows of client k's training data
with the logits of client k's teacher (a name drawn from the list, and/or a head fine-tuned on
those rows). Every other row (held-out local test rows, dropped clients) and the test set keep the
zero-shot logits of `teacher.name`, so the zero-shot row of the metrics is always that prior.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedcore.data.tokenize import cache_dir, cached, content_hash
from fedcore.seeds import Purpose

FINETUNE_BATCH = 32  # samples per step when a client fine-tunes its teacher's head


def _check_kind(name: str, kind: str, field: str = "teacher.name") -> None:
    from fedcore.models import is_clip

    if is_clip(name) != (kind == "image"):
        raise ValueError(f"{field}: {name!r} is a {'CLIP (image)' if is_clip(name) else 'text'} "
                         f"zero-shot head but the data gives {kind}; allowed: "
                         f"{'tiny-clip or clip:<arch>/<tag>' if kind == 'image' else 'a text encoder such as minilm-l6'}")


def _template(tcfg, kind: str) -> str:
    if kind == "image":
        from fedcore.models.clip import DEFAULT_PROMPT

        return tcfg.template or DEFAULT_PROMPT
    from fedcore.models.zero_shot import DEFAULT_TEMPLATE

    return tcfg.template or DEFAULT_TEMPLATE


def teacher_logits(tcfg, train, test, class_names: list[str], kind: str,
                   cache: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train logits, test logits) of the teacher over two splits (fedcore.data.sources.Split)."""
    _check_kind(tcfg.name, kind)
    template = _template(tcfg, kind)
    if kind == "image":
        from fedcore.models.clip import ImageZeroShot

        key = content_hash("zero-shot-image-v1", tcfg.name, template, tcfg.scale, class_names, train.images, test.images)

        def build() -> dict[str, torch.Tensor]:
            head = ImageZeroShot(tcfg.name, template, tcfg.scale)
            pixels = [torch.as_tensor(s.images).permute(0, 3, 1, 2) for s in (train, test)]
            return {"train": head.logits(pixels[0], class_names), "test": head.logits(pixels[1], class_names)}
    else:
        from fedcore.models.zero_shot import TextZeroShot

        key = content_hash("zero-shot-v1", tcfg.name, template, tcfg.scale, tcfg.max_len, class_names,
                           train.texts, test.texts)

        def build() -> dict[str, torch.Tensor]:
            head = TextZeroShot(tcfg.name, template, tcfg.scale, tcfg.max_len)
            return {"train": head.logits(train.texts, class_names), "test": head.logits(test.texts, class_names)}

    t = cached(key, cache_dir(cache), build)
    return t["train"], t["test"]


def teacher_features(name: str, tcfg, split, class_names: list[str], kind: str,
                     cache: str | None = None) -> dict[str, torch.Tensor]:
    """The zero-shot head `name`'s factors over a split, {"x": N x d, "classes": C x d}, both L2-normalised
    (fedcore.models.zero_shot.zero_shot_features), cached by content hash."""
    from fedcore.models.zero_shot import zero_shot_features

    _check_kind(name, kind, "teacher.per_client" if tcfg.per_client else "teacher.name")
    template = _template(tcfg, kind)
    content = split.images if kind == "image" else split.texts
    key = content_hash("zero-shot-features-v1", kind, name, template, tcfg.max_len, class_names, content)
    return cached(key, cache_dir(cache),
                  lambda: zero_shot_features(name, template, tcfg.max_len, split, class_names, kind))


def client_teachers(tcfg, num_clients: int, seed: int) -> list[str]:
    """The teacher of each client number: `name` for all, or with `per_client` a uniform seeded draw
    (with replacement) from that list."""
    if tcfg.per_client is None:
        return [tcfg.name] * num_clients
    picks = np.random.default_rng([seed, Purpose.TEACHER_DRAW]).integers(len(tcfg.per_client), size=num_clients)
    return [tcfg.per_client[i] for i in picks]


def finetune_head(x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, scale: float, epochs: int,
                  lr: float, seed: int) -> torch.Tensor:
    """A zero-shot head fine-tuned on (x, y): the class embedding matrix W, initialised at the prompt
    embeddings and trained with Adam on CE(scale * x @ normalize(W).T, y), the backbone (x) frozen.
    Kept a cosine classifier (rows renormalised), as the zero-shot head is. Returns normalize(W)."""
    w = classes.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # callers may sit inside inference_mode (teacher builds)
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=gen).split(FINETUNE_BATCH):
                loss = F.cross_entropy(scale * x[batch] @ F.normalize(w, dim=-1).T, y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return F.normalize(w.detach(), dim=-1)


def _client_seed(seed: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, Purpose.TEACHER_HEAD, client]).generate_state(1)[0])


def client_teacher_logits(tcfg, train, test, class_names: list[str], kind: str, clients: list[np.ndarray],
                          client_ids: list[int], num_clients: int, seed: int, base: torch.Tensor,
                          cache: str | None = None) -> torch.Tensor:
    """The training pool's teacher logits with the rows of each client's training data (`clients[k]`,
    client number `client_ids[k]`) from that client's teacher (client_teachers), fine-tuned on those
    rows when tcfg.finetune_epochs > 0; the other rows keep `base` (the zero-shot logits of `name`)."""
    names = client_teachers(tcfg, num_clients, seed)
    for name in tcfg.per_client or ():
        _check_kind(name, kind, "teacher.per_client")
    labels = torch.as_tensor(train.labels).long()
    out, memo = base.clone(), {}
    for rows, cid in zip(clients, client_ids):
        name, rows = names[cid], torch.as_tensor(rows, dtype=torch.long)
        if not len(rows):
            continue
        if tcfg.finetune_epochs == 0:  # a drawn zero-shot teacher: its cached logits over the pool
            if name not in memo:
                one = tcfg.model_copy(update={"name": name, "per_client": None})
                memo[name] = teacher_logits(one, train, test, class_names, kind, cache)[0]
            out[rows] = memo[name][rows]
            continue
        if name not in memo:
            memo[name] = teacher_features(name, tcfg, train, class_names, kind, cache)
        x, classes = memo[name]["x"][rows], memo[name]["classes"]
        head = finetune_head(x, labels[rows], classes, tcfg.scale, tcfg.finetune_epochs, tcfg.finetune_lr,
                             _client_seed(seed, cid))
        out[rows] = (tcfg.scale * x @ head.T).to(out.dtype)
    return out


def attach_teacher(cfg, pool, data) -> None:
    """Add the teacher's logits ("teacher_logits") to `data`'s train and test inputs, for a config
    with a teacher (Fed-LPFM's distillation and zero-shot row): over the pool's raw splits
    (fedcore.data.Pool), with each client's rows from its own teacher where the config says so."""
    from fedcore.data.sources import DataSourceError

    t, ds = cfg.teacher, pool.ds
    if ds.kind == "features":
        raise DataSourceError(f"teacher: {t.name!r} needs text or images but {cfg.data.source!r} gives feature vectors")
    train, test = teacher_logits(t, ds.train, ds.test, ds.class_names, ds.kind, cfg.cache_dir)
    if t.per_client_heads:  # Fed-LPFM's ablations: client k's training rows from its own teacher
        names = client_teachers(t, cfg.partition.num_clients, cfg.partition_seed)
        which = (", ".join(f"client {k} {names[k]}" for k in pool.part.client_ids) if t.per_client is not None
                 else f"{t.name} on every client")
        how = f", each fine-tuned for {t.finetune_epochs} epochs on its client's training data" if t.finetune_epochs else ""
        data.notes.append(f"distillation teachers: {which}{how}; the zero-shot row is {t.name}'s")
        train = client_teacher_logits(t, ds.train, ds.test, ds.class_names, ds.kind, pool.client_train,
                                      pool.part.client_ids, cfg.partition.num_clients, cfg.partition_seed, train,
                                      cfg.cache_dir)
    data.train_inputs["teacher_logits"], data.test_inputs["teacher_logits"] = train, test
