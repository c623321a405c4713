"""Search-space distributions written as text, in Ray Tune's vocabulary, read into Optuna's.

    uniform(0.0, 1.0)        a float in [low, high]
    loguniform(1e-4, 1e-2)   a float, log-uniform in [low, high]
    quniform(0, 1, 0.1)      a float in [low, high] on a grid of step q
    randint(1, 4)            an integer in [low, high), high excluded as in tune.randint: 1, 2 or 3
    lograndint(8, 65)        an integer, log-uniform in [low, high)
    qrandint(8, 64, 8)       an integer in [low, high] on a grid of step q (high included, as in Tune)
    choice([sgd, adamw])     one of the listed values

The same text is accepted by `--space KEY=DIST` on the command line and in a study file, and
`format_distribution` writes an Optuna distribution back in this form (--print-study, --dry-run).
"""
from __future__ import annotations

import math
import re
from typing import Any

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

ARITY = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2, "lograndint": 2, "qrandint": 3}
NAMES = (*ARITY, "choice")
_CALL = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.S)


class DistributionError(ValueError):
    pass


def is_distribution_text(value: Any) -> bool:
    """Whether a value reads as one of the distribution calls above (else it is a fixed value)."""
    m = _CALL.match(value) if isinstance(value, str) else None
    return bool(m) and m.group(1) in NAMES


def parse_distribution(text: str, key: str = "") -> BaseDistribution:
    """`loguniform(1e-4, 1e-2)` -> FloatDistribution(1e-4, 1e-2, log=True); DistributionError, naming
    `key` and what is allowed, otherwise."""
    where = f"{key}: " if key else ""
    m = _CALL.match(text) if isinstance(text, str) else None
    if not m or m.group(1) not in NAMES:
        # YAML's flow style ({k: randint(1, 6)}) splits an unquoted call at its comma
        hint = (" (inside {...} or [...] in YAML, quote it: 'randint(1, 6)')"
                if isinstance(text, str) and "(" in text and ")" not in text else "")
        raise DistributionError(f"{where}{text!r} is not a distribution{hint}; allowed: "
                                + ", ".join(f"{n}(...)" for n in NAMES) + ", e.g. loguniform(1e-4, 1e-2)")
    name, inner = m.groups()
    try:
        args = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError:
        raise DistributionError(f"{where}cannot read the arguments of {text!r}") from None
    args = [_number(a) for a in args]  # YAML 1.1 reads 1e-3 (no dot) as a string
    if name == "choice":
        values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        if not values:
            raise DistributionError(f"{where}choice() needs at least one value")
        return CategoricalDistribution(values)
    if len(args) != ARITY[name] or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        shape = "low, high, q" if ARITY[name] == 3 else "low, high"
        raise DistributionError(f"{where}{name} takes {ARITY[name]} numbers ({shape}), got {text!r}")
    low, high = args[0], args[1]
    try:
        if name in ("uniform", "loguniform", "quniform"):
            if not low < high:
                raise ValueError(f"low {low} must be below high {high}")
            return FloatDistribution(float(low), float(high), log=name == "loguniform",
                                     step=float(args[2]) if name == "quniform" else None)
        if not all(float(a).is_integer() for a in args):
            raise ValueError("its bounds and step must be integers")
        low, high = int(low), int(high)
        if name == "qrandint":
            return IntDistribution(low, high, step=int(args[2]))
        if high - 1 < low:
            raise ValueError(f"[{low}, {high}) is empty (high is excluded)")
        return IntDistribution(low, high - 1, log=name == "lograndint")
    except ValueError as e:
        raise DistributionError(f"{where}{text}: {e}") from None


def _number(value: Any) -> Any:
    if isinstance(value, list):
        return [_number(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _num(x: float) -> str:
    return repr(int(x)) if isinstance(x, int) else (f"{x:g}" if math.isfinite(x) else repr(x))


def format_distribution(d: BaseDistribution) -> str:
    """The text form of an Optuna distribution (parse_distribution reads it back)."""
    if isinstance(d, FloatDistribution):
        if d.step is not None:
            return f"quniform({_num(d.low)}, {_num(d.high)}, {_num(d.step)})"
        return f"{'loguniform' if d.log else 'uniform'}({_num(d.low)}, {_num(d.high)})"
    if isinstance(d, IntDistribution):
        if d.step != 1:
            return f"qrandint({d.low}, {d.high}, {d.step})"
        return f"{'lograndint' if d.log else 'randint'}({d.low}, {d.high + 1})"
    if isinstance(d, CategoricalDistribution):
        return "choice(" + yaml.safe_dump(list(d.choices), default_flow_style=True).strip() + ")"
    raise DistributionError(f"cannot write {type(d).__name__} as text")


def parse_space_items(items: list[str]) -> dict[str, BaseDistribution]:
    """`--space KEY=DIST` items -> {dotted key: distribution}."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise DistributionError(f"--space expects KEY=DISTRIBUTION, e.g. optimizer.lr='loguniform(1e-4, 1e-2)', "
                                    f"got {item!r}")
        out[key.strip()] = parse_distribution(text, key.strip())
    return out


__all__ = ["DistributionError", "format_distribution", "is_distribution_text", "parse_distribution",
           "parse_space_items"]
