"""A study declared in one YAML file (docs/studies.md describes every key).

    study: fedprox_mu_vs_alpha                # the MLflow experiment
    summary: FedProx's mu against Dirichlet alpha on scikit-learn's digits
    base:                                     # the run config every trial shares (fedcore.run's keys)
      data: {source: "sklearn:digits"}
      model: {name: mlp}
      rounds: 5
    factors:                                  # the design: every combination is a cell
      method: {key: method.name, values: [fedavg, fedprox]}
      alpha: {key: partition.alpha, values: [0.1, 1.0]}
    space:                                    # tuned inside every cell, in Ray Tune's words
      optimizer.lr: loguniform(1e-3, 3e-1)
      method.params.mu: {dist: loguniform(1e-3, 1.0), where: {method: fedprox}}
    objectives: [worst_client_acc, balancedness]
    budget: {num_samples: 4, seeds: 3}
    profiles:                                 # overlays, merged over the file; the first is the default
      smoke: {budget: {num_samples: 2, seeds: 2}, base: {rounds: 3}}

A factor is either `key` + `values` (each value set at one config field) or `levels` (each level
a name and the dotted fields it sets). `exclude` drops cells, `cells` adds settings to the cells it
matches, a `where` matches factor levels (a list matches any of them), `vars` are substituted for
`${name}` in strings, `controls` is an overlay that --controls merges in. An overlay merges dicts
key by key, replaces everything else, and `null` deletes a key; a mapping tagged `!replace`
replaces instead of merging (a profile's own factor levels or space, in its own order).
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedcore.config import TextLoader
from fedcore.metrics import (BALANCEDNESS, GAP, GLOBAL_ACC, LOWER_IS_BETTER, MEAN_CLIENT_ACC, OBJECTIVES,
                             WORST_CLIENT_ACC)
from search_spaces.distributions import DistributionError, parse_distribution

# objectives are maximised: only metrics where higher is better (fedcore/metrics.py's schema says which)
# what a report may tabulate or contrast beyond those: raFLoRA's rank-collapse measure
REPORT_METRICS = (*OBJECTIVES, *LOWER_IS_BETTER, "energy_outside_shared")


class StudyFileError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Level(_Strict):
    set: dict[str, Any] = Field(default_factory=dict)  # the dotted config fields the level sets
    cell: dict[str, Any] | None = None  # what the cell records for it (MLflow tags cell.*); {factor: level} if None
    name: str | None = None  # its part of the cell's name; the level itself if None


class Factor(_Strict):
    key: str | None = None  # the dotted config field the values go to
    values: list[Any] | None = None
    # level name -> the dotted fields it sets, or {set: fields, cell: what the cell records}
    levels: dict[str, Level | dict[str, Any] | None] | None = None
    from_: str | None = Field(None, alias="from")  # "datasets": one level per dataset of the profile

    @model_validator(mode="after")
    def _one_form(self):
        forms = [self.values is not None, self.levels is not None, self.from_ is not None]
        if sum(forms) != 1:
            raise ValueError("give one of: key and values, levels, or from: datasets")
        if self.values is not None and not self.key:
            raise ValueError("values need the key (the dotted config field) they are set at")
        if self.from_ is not None and self.from_ != "datasets":
            raise ValueError(f"from: {self.from_!r}; allowed: datasets")
        if not (self.values or self.levels or self.from_):
            raise ValueError("a factor needs at least one level")
        return self

    def level_items(self, datasets: dict[str, dict[str, Any]] | None = None) -> list[tuple[Any, Level]]:
        """(level label, the level), in file order."""
        if self.from_ is not None:
            return [(name, Level(set=fields)) for name, fields in (datasets or {}).items()]
        if self.levels is not None:
            return [(k, v if isinstance(v, Level) else _level(v or {})) for k, v in self.levels.items()]
        return [(v, Level(set={self.key: v})) for v in self.values]


def _level(v: dict[str, Any]) -> Level:
    # the full form names only set/cell; anything else is the short form, the dotted fields themselves
    return Level(**v) if v and set(v) <= {"set", "cell", "name"} else Level(set=v)


class SpaceEntry(_Strict):
    dist: str
    where: dict[str, Any] = Field(default_factory=dict)


class CellRule(_Strict):
    where: dict[str, Any] = Field(default_factory=dict)
    set: dict[str, Any]


class Scheduler(_Strict):
    metric: str | None = None  # ASHA's metric; the first objective by default
    grace_period: int = Field(2, ge=1)  # in rounds


class Budget(_Strict):
    num_samples: int = Field(4, ge=1)  # Optuna trials per cell
    seeds: int = Field(3, ge=1)  # re-runs of each cell's best configuration
    max_concurrent: int | None = Field(None, ge=1)


class Resources(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)


class Cost(_Strict):
    """A measured cost, from which --dry-run estimates a launch's time for its plan."""
    seconds_per_trial_round: float | None = Field(None, gt=0)  # wall seconds of a launch / its trial-rounds
    measured: str = ""  # where and how: machine, concurrency, command


class Report(_Strict):
    """What the generic report (python -m sweeps.report) tabulates and plots."""
    metrics: list[str] = Field(default_factory=lambda: [MEAN_CLIENT_ACC, WORST_CLIENT_ACC, GAP, BALANCEDNESS,
                                                        GLOBAL_ACC])  # the table's columns; the first three plotted
    plot_against: str | None = None  # the numeric factor on the x axis (every numeric factor if None)


class ContrastSpec(_Strict):
    """A comparison the report resolves (sweeps/contrasts.py): the cells matching `a` minus those matching `b`."""
    name: str | None = None  # the table's heading for it; '<a> minus <b>' if None
    a: dict[str, Any] = Field(min_length=1)  # {factor: level, or [levels], or {not: ...}}
    b: dict[str, Any] = Field(min_length=1)
    metrics: list[str] = Field(default_factory=lambda: [WORST_CLIENT_ACC], min_length=1)
    within: list[str] | None = None  # factors an a-cell and a b-cell must agree on; all others if None
    interaction: str | None = None  # a factor: (a - b) at its smallest level minus at its largest


class DataDir(_Strict):
    """What --data-dir holds for this profile (sweeps/studies.py LAYOUTS)."""
    layout: str = "ag_news"
    names: list[str] = Field(default_factory=list)  # text_corpora: which of ag_news, dbpedia14
    name: str | None = None  # image_classes: the dataset's name
    files: list[str] | None = None  # image_classes: what the folder must hold
    extra: dict[str, Any] = Field(default_factory=dict)  # dotted fields per dataset (ag_news: the fields)


class StudyFile(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    summary: str = ""  # the study, one line (--list)
    description: str = ""  # what this profile runs and what it costs (the launch's header)
    notes: list[str] = Field(default_factory=list)
    zero_shot: str | None = None  # a foundation model whose zero-shot head every trial scores (a report row)
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name -> dotted data fields
    data_dir: DataDir = DataDir()
    vars: dict[str, Any] = Field(default_factory=dict)
    base: dict[str, Any] = Field(default_factory=dict)
    factors: dict[str, Factor] = Field(min_length=1)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    cell_name: str | None = None  # e.g. "{method}-a{alpha}"; the levels joined by '-' otherwise
    cells: list[CellRule] = Field(default_factory=list)
    space: dict[str, str | SpaceEntry | list[SpaceEntry]] = Field(default_factory=dict)
    objectives: list[str] = Field(default_factory=lambda: [WORST_CLIENT_ACC, BALANCEDNESS], min_length=1)
    scheduler: Scheduler = Scheduler()
    budget: Budget = Budget()
    resources: Resources = Resources()
    cost: Cost = Cost()
    report: Report = Report()
    contrasts: list[ContrastSpec] = Field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    controls: dict[str, Any] = Field(default_factory=dict)

    @field_validator("objectives")
    @classmethod
    def _maximised(cls, v: list[str]) -> list[str]:
        for name in v:
            if name in LOWER_IS_BETTER:
                raise ValueError(f"{name!r} is better when lower and objectives are maximised; use e.g. "
                                 f"worst_client_acc or balancedness")
            if name not in OBJECTIVES:
                raise ValueError(f"unknown metric {name!r}{_nearest(name, OBJECTIVES)}; allowed: {', '.join(OBJECTIVES)}")
        return v


def _nearest(name: str, allowed) -> str:
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _errors(err: ValidationError, where: str) -> str:
    """pydantic's errors as one line each, unknown keys with the nearest allowed one."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "str", "list[", "SpaceEntry")))
        if e["type"] == "extra_forbidden":
            model, parts = StudyFile, [str(p) for p in e["loc"]]
            for p in parts[:-1]:
                ann = model.model_fields[p].annotation if p in model.model_fields else None
                model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
                if model is None:
                    break
            allowed = list(model.model_fields) if model else []
            lines.append(f"{loc}: unknown key{_nearest(parts[-1], allowed)}; allowed: {', '.join(allowed)}")
        else:
            lines.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return f"{where}: " + "; ".join(lines)


class Replace(dict):
    """A mapping tagged !replace in a study file: an overlay puts it in place of the one it meets."""


class _Loader(TextLoader):  # dates stay strings, as in a run's config
    pass


_Loader.add_constructor("!replace", lambda loader, node: Replace(loader.construct_mapping(node, deep=True)))


def merge(doc: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` over `doc`: dicts merged key by key (a Replace put in place), anything else
    replaced, None deletes."""
    out = dict(doc)
    for k, v in overlay.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Replace):
            out[k] = dict(v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    """${name} in strings replaced by vars[name] (a whole-string ${name} keeps the var's type)."""
    if isinstance(value, dict):
        return {k: substitute(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if not isinstance(value, str):
        return value
    for name in _VAR.findall(value):
        if name not in variables:
            raise StudyFileError(f"{where}: ${{{name}}} is not in vars{_nearest(name, variables)}; vars are "
                                 f"{', '.join(variables) or 'none'}")
    whole = _VAR.fullmatch(value)
    if whole:
        return variables[whole.group(1)]
    return _VAR.sub(lambda m: str(variables[m.group(1)]), value)


def read(path: str | Path) -> tuple[dict[str, Any], str]:
    """The file's mapping and its content hash."""
    p = Path(path)
    if not p.is_file():
        raise StudyFileError(f"study file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        doc = yaml.load(text, Loader=_Loader)  # safe_load's loader, dates as text, plus !replace
    except yaml.YAMLError as e:
        raise StudyFileError(f"study file {p}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise StudyFileError(f"study file {p}: must hold a mapping (study:, base:, factors:, ...)")
    return doc, hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve(doc: dict[str, Any], profile: str | None, controls: bool, where: str) -> tuple[StudyFile, str]:
    """The validated study for one profile (None: the first the file lists, or the file as it is)."""
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise StudyFileError(f"{where}: profiles must map names to overlays")
    name = profile or next(iter(profiles), "default")
    allowed = list(profiles) or ["default"]  # a file without profiles is its one profile
    if name not in allowed:
        raise StudyFileError(f"unknown profile {name!r} for {doc.get('study', where)}{_nearest(name, allowed)}; "
                             f"allowed: {', '.join(allowed)}")
    merged = merge(doc, profiles.get(name) or {})
    if controls:
        if not merged.get("controls"):
            raise StudyFileError(f"{where}: --controls, but the study has no controls: section")
        merged = merge(merged, merged["controls"])
    variables = merged.get("vars") or {}
    body = {k: v for k, v in merged.items() if k not in ("profiles", "controls", "vars")}
    body = substitute(body, variables, where)
    try:
        sf = StudyFile.model_validate({**body, "profiles": profiles, "controls": merged.get("controls") or {},
                                       "vars": variables})
    except ValidationError as e:
        raise StudyFileError(_errors(e, where)) from None
    check_references(sf, where)
    return sf, name


def _options(wanted: Any) -> tuple[list[Any], bool]:
    """A where-value as (levels, negated): x, [x, y], {not: x} or {not: [x, y]}."""
    negated = isinstance(wanted, dict)
    if negated:
        wanted = wanted["not"]
    return (wanted if isinstance(wanted, list) else [wanted]), negated


def _matches(cell: dict[str, Any], where: dict[str, Any]) -> bool:
    def same(level, wanted) -> bool:
        options, negated = _options(wanted)
        return any(level == w or str(level) == str(w) for w in options) != negated
    return all(same(cell[k], v) for k, v in where.items())


def check_references(sf: StudyFile, where: str) -> None:
    """Every factor and level a where/exclude/cell_name/report names exists."""
    factors = sf.factors

    def check(cond: dict[str, Any], what: str) -> None:
        for k, v in cond.items():
            if k not in factors:
                raise StudyFileError(f"{where}: {what}: unknown factor {k!r}{_nearest(k, factors)}; factors are "
                                     f"{', '.join(factors)}")
            if factors[k].from_ is not None:
                continue  # the profile's datasets, known once --data-dir is
            labels = [lab for lab, _ in factors[k].level_items()]
            if isinstance(v, dict) and set(v) != {"not"}:
                raise StudyFileError(f"{where}: {what}: {k}: a mapping here is {{not: level}} or {{not: [levels]}}")
            for w in _options(v)[0]:
                if not any(w == lab or str(w) == str(lab) for lab in labels):
                    raise StudyFileError(f"{where}: {what}: {k} has no level {w!r}{_nearest(w, labels)}; levels are "
                                         f"{', '.join(map(str, labels))}")
    for i, ex in enumerate(sf.exclude):
        check(ex, f"exclude[{i}]")
    for i, rule in enumerate(sf.cells):
        check(rule.where, f"cells[{i}].where")
    level_keys = {k for f in factors.values() for _, level in f.level_items() for k in level.set}
    for key, entry in sf.space.items():
        if key in level_keys:  # a cell's level fixes it: tuning it too would merge cells
            raise StudyFileError(f"{where}: space.{key}: a factor's level sets it; tune it or make it a factor")
        for j, e in enumerate(space_entries(entry)):
            check(e.where, f"space.{key}")
            try:
                parse_distribution(e.dist, f"space.{key}")
            except DistributionError as err:
                raise StudyFileError(f"{where}: {err}") from None
    if sf.cell_name:
        for name in re.findall(r"\{([^}:!]+)", sf.cell_name):
            if name not in factors:
                raise StudyFileError(f"{where}: cell_name: unknown factor {name!r}{_nearest(name, factors)}")
    if sf.report.plot_against and sf.report.plot_against not in factors:
        name = sf.report.plot_against
        raise StudyFileError(f"{where}: report.plot_against: unknown factor {name!r}{_nearest(name, factors)}")
    for name in sf.report.metrics:
        if name not in (*OBJECTIVES, *LOWER_IS_BETTER):
            raise StudyFileError(f"{where}: report.metrics: unknown metric {name!r}"
                                 f"{_nearest(name, (*OBJECTIVES, *LOWER_IS_BETTER))}")
    for i, c in enumerate(sf.contrasts):
        what = f"contrasts[{i}]" + (f" ({c.name})" if c.name else "")
        check(c.a, f"{what}.a")
        check(c.b, f"{what}.b")
        for name in [*(c.within or []), *([c.interaction] if c.interaction else [])]:
            if name not in factors:
                raise StudyFileError(f"{where}: {what}: unknown factor {name!r}{_nearest(name, factors)}")
        for name in c.metrics:
            if name not in REPORT_METRICS:
                raise StudyFileError(f"{where}: {what}.metrics: unknown metric {name!r}{_nearest(name, REPORT_METRICS)}")
    if sf.scheduler.metric and sf.scheduler.metric not in OBJECTIVES:
        raise StudyFileError(f"{where}: scheduler.metric: unknown metric {sf.scheduler.metric!r}"
                             f"{_nearest(sf.scheduler.metric, OBJECTIVES)}")


def space_entries(entry) -> list[SpaceEntry]:
    if isinstance(entry, str):
        return [SpaceEntry(dist=entry)]
    return list(entry) if isinstance(entry, list) else [entry]


def _fragment(label: Any, level: Level) -> str:
    if level.name is not None:
        return level.name
    return f"{label:g}" if isinstance(label, float) else str(label)


class Design:
    """The cells of a resolved study file: each cell is the dict it records (MLflow's cell.* tags);
    its factor levels, name and config fields are looked up by that dict."""

    def __init__(self, sf: StudyFile, datasets: dict[str, dict[str, Any]] | None = None):
        self.sf, self.datasets = sf, datasets or {}
        if not self.datasets and any(f.from_ is not None for f in sf.factors.values()):
            raise StudyFileError(f"study {sf.study}: a factor is from: datasets, but there are none: name them "
                                 f"under datasets:, or give --data-dir or --data")
        self.by_record: dict[str, dict[str, tuple[Any, Level]]] = {}
        self.order: list[dict[str, Any]] = []
        names = list(sf.factors)
        for combo in itertools.product(*(sf.factors[n].level_items(self.datasets) for n in names)):
            levels = dict(zip(names, combo))
            labels = {n: lab for n, (lab, _) in levels.items()}
            if any(_matches(labels, ex) for ex in sf.exclude):
                continue
            record: dict[str, Any] = {}
            for n, (lab, level) in levels.items():
                record.update(level.cell if level.cell is not None else {n: lab})
            key = self.key(record)
            if key in self.by_record:
                raise StudyFileError(f"study {sf.study}: cells {self.name(record)} and "
                                     f"{'-'.join(map(str, labels.values()))} record the same factors; give their "
                                     f"levels distinct cell: entries")
            self.by_record[key] = levels
            self.order.append(record)

    @staticmethod
    def key(record: dict[str, Any]) -> str:
        return repr(sorted((k, repr(v)) for k, v in record.items()))

    def levels(self, record: dict[str, Any]) -> dict[str, tuple[Any, Level]]:
        return self.by_record[self.key(record)]

    def labels(self, record: dict[str, Any]) -> dict[str, Any]:
        return {n: lab for n, (lab, _) in self.levels(record).items()}

    def name(self, record: dict[str, Any]) -> str:
        parts = {n: _fragment(lab, level) for n, (lab, level) in self.levels(record).items()}
        if self.sf.cell_name:
            return self.sf.cell_name.format(**parts)
        return "-".join(p for p in parts.values() if p)

    def design(self, record: dict[str, Any]) -> dict[str, Any]:
        """The dotted fields the cell's levels set."""
        out: dict[str, Any] = {}
        for _, level in self.levels(record).values():
            out.update(level.set)
        return out

    def overrides(self, record: dict[str, Any]) -> dict[str, Any]:
        """The cell's levels, then the `cells` rules it matches, in file order."""
        out, labels = self.design(record), self.labels(record)
        for rule in self.sf.cells:
            if _matches(labels, rule.where):
                out.update(rule.set)
        return out

    def space(self, record: dict[str, Any]) -> dict[str, Any]:
        """{dotted key: Optuna distribution} of the entries whose `where` the cell matches (the
        first matching entry of a key's list)."""
        out, labels = {}, self.labels(record)
        for key, entry in self.sf.space.items():
            for e in space_entries(entry):
                if _matches(labels, e.where):
                    out[key] = parse_distribution(e.dist, key)
                    break
        return out


def is_study_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name


def load_study(path: str | Path, profile: str | None = None, controls: bool = False):
    """The Study of a study file, for one profile (None: its first) and --controls; its one profile
    is study.profiles[name]."""
    from fedcore.config import RunConfig, set_dotted
    from sweeps.studies import Profile, Study, layout_fields

    path = Path(path).expanduser().resolve()
    doc, sha = read(path)
    sf, name = resolve(doc, profile, controls, f"study file {path}")
    for other in doc.get("profiles") or {}:  # a typo in another profile is caught now, not when it runs
        for with_controls in (False, True) if doc.get("controls") else (False,):
            resolve(doc, other, with_controls, f"study file {path}, profile {other}"
                    + (" with --controls" if with_controls else ""))
    base: dict[str, Any] = {}
    for key, value in sf.base.items():  # dotted and nested keys alike
        for k, v in (_flatten(value, key) if isinstance(value, dict) and "." not in key else {key: value}).items():
            set_dotted(base, k, v)
    rounds = int(base.get("rounds", RunConfig.model_fields["rounds"].default))
    has_datasets = any(f.from_ is not None for f in sf.factors.values())
    prof = Profile(name, sf.description or sf.summary or f"study file {path.name}", base=base,
                   foundation_model=sf.zero_shot or "", rounds=rounds,
                   num_samples=sf.budget.num_samples, seeds=sf.budget.seeds, grace_rounds=sf.scheduler.grace_period,
                   cpus_per_trial=sf.resources.cpus_per_trial, gpus_per_trial=sf.resources.gpus_per_trial,
                   options={"max_concurrent": sf.budget.max_concurrent, "report": sf.report.model_dump(),
                            "contrasts": [c.model_dump(exclude_none=True) for c in sf.contrasts],
                            "cost": sf.cost.model_dump()},
                   **layout_fields(sf.data_dir, sf.datasets if has_datasets else None))
    current: dict[str, Design] = {}

    def design_of(p) -> Design:
        current["design"] = Design(sf, p.options.get("datasets"))
        return current["design"]
    return Study(
        sf.study, sf.summary, {name: prof},
        cells=lambda p: design_of(p).order, cell_name=lambda cell: current["design"].name(cell),
        cell_overrides=lambda cell, p: current["design"].overrides(cell),
        space=lambda cell: current["design"].space(cell),
        objectives=tuple(sf.objectives), asha_metric=sf.scheduler.metric or sf.objectives[0], notes=tuple(sf.notes),
        zero_shot_row=sf.zero_shot is not None, design_keys=lambda cell, p: set(current["design"].design(cell)),
        labels=lambda cell: current["design"].labels(cell),
        source=str(path), sha=sha)


def _flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        # a method's params and a model's lora section are config mappings, not further sections
        if isinstance(v, dict) and v and not key.endswith(".params"):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
