"""A launch's data checked before Ray starts.

Every distinct data section of the plan (cells of one dataset share one) is loaded once, without
tensorizing, and each cell is checked against it as its trials would be: the model's input kind,
the partition at the config's seed, and class names that a zero-shot head or a teacher reads as
prompts. A missing column, a class-name mismatch, an empty file or an unreadable archive is then
one ValueError naming the cell, instead of one failed trial per configuration.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class DataInfo:
    name: str
    class_names: tuple[str, ...]
    n_train: int
    n_test: int
    kind: str
    synthetic: bool

    @property
    def bare_numbers(self) -> bool:
        """Classes named only by their ids (no class_names given): nothing a prompt can use."""
        return all(re.fullmatch(r"-?\d+", n) for n in self.class_names)

    def line(self) -> str:
        names = ", ".join(self.class_names[:6]) + (f", ... ({len(self.class_names)} in all)" if len(self.class_names) > 6 else "")
        return (f"{self.name}: {self.n_train} train / {self.n_test} test samples ({self.kind}), "
                f"{len(self.class_names)} classes ({names})")


def data_key(cfg) -> str:
    return json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)


def check_data(entries: list[dict], hub_optional: bool = False) -> dict[str, DataInfo | None]:
    """{cell name: its data's summary} for plan entries (each with its validated probe config under
    "cfg"); raises ValueError with one line where a cell's data or partition would fail.
    hub_optional (a dry run): hub data that cannot be reached from here is said in a note and its
    cells get None, since the plan may be meant for a machine that reaches the hub."""
    from fedcore.data import DataSourceError, check_data as check_cell, load_raw
    from fedcore.data.partition import PartitionError

    loaded: dict[str, tuple] = {}
    out: dict[str, DataInfo | None] = {}
    for e in entries:
        cfg, key = e["cfg"], data_key(e["cfg"])
        if key not in loaded:
            try:
                ds = load_raw(cfg)
            except DataSourceError as err:
                if hub_optional and cfg.data.source.startswith("hf:"):
                    note(f"data {cfg.data.source!r} is not in the local datasets cache, which is all a dry run reads "
                         f"of the hub; it was not checked")
                    loaded[key] = (None, None)
                else:
                    raise ValueError(f"cell {e['name']}: data {cfg.data.source!r}: {_one_line(err)}") from None
            except (ValueError, OSError) as err:
                raise ValueError(f"cell {e['name']}: data {cfg.data.source!r}: {_one_line(err)}") from None
            else:
                info = DataInfo(ds.name, tuple(ds.class_names), len(ds.train), len(ds.test), ds.kind, ds.synthetic)
                loaded[key] = (ds, info)
        ds, info = loaded[key]
        if ds is None:
            out[e["name"]] = None
            continue
        try:
            check_cell(cfg, ds)
        except (DataSourceError, PartitionError, ValueError) as err:
            raise ValueError(f"cell {e['name']}: {_one_line(err)}") from None
        out[e["name"]] = info
    return out


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)
