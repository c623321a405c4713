"""`synthetic:topics`: a generated, deterministic text-classification corpus.

SYNTHETIC DATA. Each class is a topic with its own list of real English words; a document mixes
topic words with words shared by every class (and a few words of another topic), so the task is
learnable but not trivial. It exists so that a fresh offline clone has something real-shaped to
run; no result on it says anything about real text. Class names carry a `synthetic-` prefix so
that tables and plots say what they show.
"""
from __future__ import annotations

import numpy as np

TOPICS: dict[str, str] = {
    "world": "government minister election parliament president treaty border embassy war peace "
    "nation capital refugee diplomat summit protest sanctions troops vote coalition rebel "
    "ceasefire province mayor referendum alliance ambassador military crisis",
    "sports": "match team coach season league goal player score championship victory defeat "
    "tournament stadium referee striker pitcher inning quarterback medal olympic race "
    "sprint tennis football basketball baseball soccer goalkeeper playoff",
    "business": "market stock shares profit revenue company investor bank merger earnings "
    "quarter economy inflation price dollar trade retail sales growth billion debt "
    "acquisition dividend consumer industry factory oil export",
    "science": "software computer internet research scientist space planet satellite physics "
    "biology genome chip processor network data laboratory experiment telescope robot "
    "energy climate species vaccine algorithm battery orbit microscope",
    "health": "doctor patient hospital disease treatment medicine nurse clinic symptom therapy "
    "surgery diet virus infection cancer heart blood pharmacy diagnosis fitness sleep "
    "allergy injury recovery prescription pain fever nutrition",
    "arts": "film movie actor actress director music album song concert painting museum novel "
    "author poetry theater festival gallery orchestra singer dance sculpture stage "
    "premiere audience critic drama comedy opera",
}

COMMON = (
    "the a an of to in on for with and or but said says after before new old year week day "
    "people group report today yesterday according official first last time city country "
    "world state plan major small large early late week month could would will may also "
    "over under about more most many some other local national announced expected"
).split()


def generate_topics(
    n_train: int = 4000,
    n_test: int = 800,
    classes: int = 4,
    seed: int = 0,
    signal: float = 0.3,
    confuse: float = 0.08,
    min_len: int = 10,
    max_len: int = 30,
) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str]]:
    """Return (train_texts, train_labels, test_texts, test_labels, class_names).

    Both splits are class-balanced. `signal` is the probability that a word comes from the
    document's own topic, `confuse` that it comes from another topic.
    """
    names = list(TOPICS)[:classes]
    if classes < 2 or classes > len(TOPICS):
        raise ValueError(f"synthetic:topics classes must be in 2..{len(TOPICS)}, got {classes}")
    vocab = [TOPICS[n].split() for n in names]
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[list[str], np.ndarray]:
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        texts = []
        for y in labels:
            length = int(rng.integers(min_len, max_len + 1))
            kind = rng.random(length)
            words = []
            for k in kind:
                if k < signal:
                    words.append(vocab[y][rng.integers(len(vocab[y]))])
                elif k < signal + confuse:
                    other = int(rng.integers(classes - 1))
                    other += other >= y
                    words.append(vocab[other][rng.integers(len(vocab[other]))])
                else:
                    words.append(COMMON[rng.integers(len(COMMON))])
            texts.append(" ".join(words))
        return texts, labels.astype(np.int64)

    tr_x, tr_y = make(n_train)
    te_x, te_y = make(n_test)
    return tr_x, tr_y, te_x, te_y, [f"synthetic-{n}" for n in names]
