"""The open method registry: a method = config dataclass + injector.

Register your own::

    @dataclass
    class MyConfig:
        width: int = field(default=64, metadata={"help": "bottleneck width"})

    @register_method("my-method", MyConfig, family="adapter", paper="...")
    def apply_my_method(model, config):  # add modules to model.backbone.slots, freeze/unfreeze
        ...

Config fields become keyword options of ``build_model`` and ``--flags`` of the
CLI (``width`` -> ``--width``); an option goes to every chosen method that has
a field of that name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    apply: Callable[[Any, Any], None]
    family: str
    paper: str
    help: str
    aliases: tuple[str, ...] = ()
    claims: tuple[str, ...] = ()   # exclusive resources (e.g. "readout"); two methods may not share one
    merge: Optional[Callable[[Any, Any], None]] = None  # folds the method into the frozen weights, in place
    needs_text: bool = False       # uses the CLIP text tower (class names -> text classifier)


_METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register_method(
    name: str,
    config_cls: type,
    *,
    family: str,
    paper: str = "",
    help: str = "",
    aliases: tuple[str, ...] = (),
    claims: tuple[str, ...] = (),
    merge: Optional[Callable[[Any, Any], None]] = None,
    needs_text: bool = False,
):
    """Decorator registering ``apply(model, config)`` under ``name`` (and ``aliases``).

    ``merge(model, config)``, for methods that can be folded into the frozen
    weights, does that in place and removes the method's modules. ``needs_text`` marks methods that use
    the CLIP text tower (they need a CLIP backbone and the class names).
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"method {name!r}: config_cls must be a dataclass")

    def wrap(apply):
        for key in (name, *aliases):
            if key in _METHODS or key in _ALIASES:
                raise ValueError(f"method name {key!r} is already registered")
        spec = MethodSpec(name, config_cls, apply, family, paper, help or (apply.__doc__ or "").strip().split("\n")[0],
                          aliases, claims, merge, needs_text)
        _METHODS[name] = spec
        for alias in aliases:
            _ALIASES[alias] = name
        return apply

    return wrap


def get_method(name: str) -> MethodSpec:
    key = _ALIASES.get(name, name)
    if key not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))} (adaptvid list shows them)")
    return _METHODS[key]


def list_methods() -> dict[str, MethodSpec]:
    return dict(_METHODS)


def method_fields(spec: MethodSpec) -> list[dataclasses.Field]:
    return list(dataclasses.fields(spec.config_cls))


def split_method_names(method: str | list[str] | tuple[str, ...]) -> list[str]:
    names = method.split(",") if isinstance(method, str) else list(method)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("no method given; e.g. method='st-adapter' or 'frozen'")
    return names


def make_configs(names: list[str], options: dict[str, Any]) -> list[tuple[MethodSpec, Any]]:
    """Route keyword options to every chosen method that has a field of that name."""
    specs = [get_method(n) for n in names]
    chosen = [spec.name for spec in specs]
    for name in set(chosen):
        if chosen.count(name) > 1:
            raise ValueError(f"method {name!r} is listed twice")
    claimed: dict[str, str] = {}
    for spec in specs:
        for claim in spec.claims:
            if claim in claimed:
                raise ValueError(
                    f"methods {claimed[claim]!r} and {spec.name!r} both claim the model's {claim}; "
                    "choose one of them"
                )
            claimed[claim] = spec.name
    used = set()
    configs = []
    for spec in specs:
        valid = {f.name for f in method_fields(spec)}
        kwargs = {k: v for k, v in options.items() if k in valid}
        used.update(kwargs)
        configs.append((spec, spec.config_cls(**kwargs)))
    unknown = set(options) - used
    if unknown:
        valid = sorted({f.name for s in specs for f in method_fields(s)})
        raise ValueError(
            f"option(s) {', '.join(sorted(unknown))} do not belong to method(s) {', '.join(names)}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    return configs


def config_from_dict(spec: MethodSpec, values: dict[str, Any]):
    valid = {f.name for f in method_fields(spec)}
    return spec.config_cls(**{k: v for k, v in values.items() if k in valid})
