"""Methods defined outside fedcore (docs/plugins.md), found by the name a config gives:

- a name that is not a built-in's is looked up among the entry points of the group `fedcore.methods`
  (entry point name = method name, value `pkg.module:Class`), loading only that one entry point;
- a name with a colon, `pkg.module:Class`, is imported as it stands.

Either way the class passes `check_method_class`, the same checks every built-in passes at import, and
may not take a built-in's name. A failure is a `PluginError` (a ValueError, so the config reports it
as one `method.name: ...` line) naming the entry point or module and the reason. Nothing here runs
for a built-in name, so a broken plugin only matters to a config that names it.
"""
from __future__ import annotations

import dataclasses

import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from typing import Mapping

from pydantic import BaseModel, ValidationError

from fedcore.methods.base import Method

GROUP = "fedcore.methods"
NAME = re.compile(r"[a-z][a-z0-9_]*")  # what the built-ins are called; safe in trial names and paths
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
PATH = re.compile(rf"({_DOTTED}):({_DOTTED})")
FLAGS = ("requires_lora", "needs_teacher", "personalizes", "handles_mixed_ranks", "distils_client_teachers")

_resolved: dict[str, type[Method]] = {}  # name -> class, so a config's several look-ups import once


class PluginError(ValueError):
    def __init__(self, name: str, origin: str, reason: str):
        self.name, self.origin, self.reason = name, origin, reason
        super().__init__(f"method.name: cannot use method {name!r} ({origin}): {reason}")


def check_method_class(cls: object, where: str) -> str | None:
    """Why `cls` (found at `where`) cannot be a method, or None: what the config and the engine rely on."""
    if not isinstance(cls, type):
        return f"{where} is a {type(cls).__name__}, not a class"
    if not issubclass(cls, Method):
        return f"{where} is not a subclass of fedcore.methods.Method"
    if cls is Method:
        return f"{where} is fedcore's base class Method itself, not a method"
    if "name" not in cls.__dict__:
        # a subclass of FedAvg that forgets its name would otherwise run as a second 'fedavg'
        inherited = getattr(cls, "name", None)
        return f"{where} does not set its own `name`" + (f" (it inherits {inherited!r})" if inherited else "")
    if not isinstance(cls.name, str) or not NAME.fullmatch(cls.name):
        return f"{where}.name is {cls.name!r}; allowed: lower-case letters, digits and '_', starting with a letter"
    if not isinstance(getattr(cls, "summary", None), str) or not cls.summary.strip():
        return f"{where} has no `summary` (the one line --list-methods prints)"
    params = cls.Params
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        return f"{where}.Params is not a pydantic BaseModel subclass"
    if params.model_config.get("extra") != "forbid" or not params.model_config.get("frozen"):
        # a typo in method.params must be refused, and hyperparameters must not change during a run
        return (f"{where}.Params must refuse unknown fields and be frozen, like every built-in's: "
                f"model_config = ConfigDict(extra='forbid', frozen=True)")
    try:
        params.model_validate({})  # a config that sets no method.params must be valid
    except ValidationError as err:
        field = ".".join(str(p) for p in err.errors()[0]["loc"])
        return f"{where}.Params has no default for {field!r}; every parameter needs one"
    for flag in FLAGS:
        value = getattr(cls, flag, False)
        if type(value) is not bool:
            return f"{where}.{flag} is {value!r}; allowed: True or False"
    if not isinstance(cls.mixed_ranks_refusal, str) or not cls.mixed_ranks_refusal.strip():
        return f"{where}.mixed_ranks_refusal is not a sentence (the config quotes it when it refuses mixed ranks)"
    record = cls.Record
    if not (dataclasses.is_dataclass(record) and isinstance(record, type)
            and record.__dataclass_params__.frozen):
        return f"{where}.Record is not a frozen dataclass (the method's server record: @dataclass(frozen=True))"
    missing = [f.name for f in dataclasses.fields(record)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        return f"{where}.Record has no default for {missing[0]!r}; every field needs one (its value before round 1)"
    if cls.aggregate is Method.aggregate:
        return f"{where} does not implement aggregate()"
    if cls.personalizes and cls.personal_loss is Method.personal_loss:
        return f"{where} personalizes but does not implement personal_loss()"
    if cls.personalizes and cls.personal_stage is Method.personal_stage:
        return f"{where} personalizes but does not implement personal_stage() (its stage-2 optimizer and epochs)"
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _import(module: str, attr: str) -> object:
    """module.attr, or a reason string (an exception) why not."""
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            raise LookupError(f"cannot import module {module!r}: no module named {err.name!r}") from None
        raise LookupError(f"importing module {module!r} failed: {_one_line(err)}") from None
    except Exception as err:  # the plugin's own code raised while importing: say what, not a traceback
        raise LookupError(f"importing module {module!r} failed: {_one_line(err)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LookupError(f"module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _checked(cls: object, where: str, builtins: Mapping[str, type[Method]]) -> type[Method]:
    reason = check_method_class(cls, where)
    if reason is None and cls.name in builtins:
        b = builtins[cls.name]
        reason = (f"its name {cls.name!r} clashes with the built-in method {cls.name!r} "
                  f"({b.__module__}.{b.__qualname__}); a plugin needs a name of its own")
    if reason is not None:
        raise LookupError(reason)
    return cls


def _distribution(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return (dist.metadata["Name"] if dist is not None else None) or "unknown distribution"


def _origin(ep: importlib.metadata.EntryPoint) -> str:
    return f"entry point {ep.name} = {ep.value} of {_distribution(ep)}"


def _from_entry_points(name: str, eps: list, builtins: Mapping[str, type[Method]]) -> type[Method]:
    """The class behind entry point(s) `eps`, all named `name`; PluginError naming the entry point."""
    ep = eps[0]
    origin = _origin(ep)
    if len(eps) > 1:
        raise PluginError(name, f"group {GROUP}", f"{len(eps)} distributions provide it "
                                                  f"({', '.join(sorted(_distribution(e) for e in eps))}); keep one")
    if name in builtins:  # never loaded: the built-in is what the name means
        raise PluginError(name, origin, f"clashes with the built-in method {name!r}, which that name always means")
    if not NAME.fullmatch(name):
        raise PluginError(name, origin, "not a method name; allowed: lower-case letters, digits and '_', "
                                        "starting with a letter")
    if not ep.attr:
        raise PluginError(name, origin, f"its value {ep.value!r} names a module; allowed: 'module:Class'")
    try:
        cls = _checked(_import(ep.module, ep.attr), ep.value, builtins)
    except LookupError as err:
        raise PluginError(name, origin, str(err)) from None
    if cls.name != name:
        raise PluginError(name, origin, f"its class's name is {cls.name!r}, not the entry point's name {name!r}")
    return cls


def _entry_points(name: str | None = None) -> list:
    eps = importlib.metadata.entry_points(group=GROUP)
    return list(eps if name is None else eps.select(name=name))


def plugin_names() -> list[str]:
    """Every entry point name of the group (nothing is loaded)."""
    return sorted({ep.name for ep in _entry_points()})


def resolve(name: str, builtins: Mapping[str, type[Method]]) -> type[Method]:
    """The plugin class `name` means (an entry point name or 'module:Class'); ValueError if none."""
    if name in _resolved:
        return _resolved[name]
    if ":" in name:
        m = PATH.fullmatch(name)
        if m is None:
            raise PluginError(name, "module:Class", "not a 'module:Class' path, e.g. 'mylab.methods:FedFoo'")
        try:
            cls = _checked(_import(m[1], m[2]), name, builtins)
        except LookupError as err:
            raise PluginError(name, "module:Class", str(err)) from None
    else:
        eps = _entry_points(name)
        if not eps:
            allowed = ", ".join(sorted({*builtins, *plugin_names()}))
            raise ValueError(f"method.name: unknown method {name!r}; allowed: {allowed}, "
                             f"or a method class as 'module:Class'")
        cls = _from_entry_points(name, eps, builtins)
    _resolved[name] = cls
    return cls


def clear_cache() -> None:
    """Forget resolved plugins (after sys.path or the installed distributions changed)."""
    _resolved.clear()


@dataclass(frozen=True)
class Listed:
    """One method as --list-methods shows it: its class, or why it cannot be used."""
    name: str
    origin: str  # "built-in", "plugin: <distribution> (<value>)" or "module:Class"
    cls: type[Method] | None = None
    reason: str | None = None


def list_plugins(builtins: Mapping[str, type[Method]]) -> list[Listed]:
    """Every entry point of the group, loaded and checked; a broken one is listed with its reason."""
    by_name: dict[str, list] = {}
    for ep in _entry_points():
        by_name.setdefault(ep.name, []).append(ep)
    out = []
    for name in sorted(by_name):
        eps = by_name[name]
        origin = f"plugin: {', '.join(sorted(_distribution(e) for e in eps))} ({eps[0].value})"
        try:
            out.append(Listed(name, origin, cls=_from_entry_points(name, eps, builtins)))
        except PluginError as err:
            out.append(Listed(name, origin, reason=err.reason))
    return out
