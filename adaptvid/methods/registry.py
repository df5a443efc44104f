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

Composition does not depend on the order the methods are given in: ``make_configs``
applies them in one canonical order, by ``stage`` (see ``STAGES``) and then by name,
so ``"atp,st-adapter"`` and ``"st-adapter,atp"`` build the same model. The stages
put what a later method depends on first: the tower's modules and the readout they
prefer (an adapter's pooling, whether to project), then learned text prompts, then
the one method that owns the readout (a temporal aggregator, decoder or video
encoder), which is built for the readout width the earlier ones settled, and last
what only changes how the finished model is trained. A combination that cannot
work is refused when it is built, with the reason.

Besides ``claims``, a config may describe how it depends on the clip length, with two optional
methods (plain methods, so not options): ``reframes()`` -> what the method does to the frames the tower
sees (e.g. "trains on 1 random frame(s) of each clip"), and ``clip_bound()`` -> what in the method is
built for whole clips of the model's ``num_frames`` frames (e.g. "aim's temporal embedding"), or a
false value. A method that reframes is refused with one whose modules are clip-bound.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ._readout import settle_head


# The order methods are applied in (then by name within a stage):
# "tower"   — modules in the image tower, tower parameters unfrozen, a preferred readout (pool, projection);
# "prompt"  — learned text prompts that make the text classifier (CoOp, Vita-CLIP);
# "readout" — the model's one readout owner: a temporal aggregator over frame embeddings, a decoder or a
#             video encoder; its modules are sized for the readout the earlier stages chose;
# "training" — what changes how the finished model is trained (Singularity's training-frame subsampler),
#             which checks what every other method built.
STAGES = ("tower", "prompt", "readout", "training")

# What each exclusive resource is, for the refusal message when two methods claim it (any other name works too).
CLAIMS = {
    "readout": "readout (what turns the tower's outputs into the video embedding: a temporal aggregator, a "
               "decoder or a video encoder)",
    "frames": "frames (which frames of a clip the tower runs on, and how: a method that subsamples them or "
              "runs the tower itself)",
    "attention": "attention (the blocks' self-attention, which one method at most replaces)",
}


# Methods whose modules read the patch tokens as a full grid (or aligned across frames), so random token
# dropping (TrainConfig.token_drop) would break them: name -> what needs the grid.
FULL_GRID_USES = {
    "st-adapter": "its depthwise 3D convolution over the (T, H, W) patch grid",
    "aim": "its temporal attention between the same patch position of every frame",
    "evl": "its decoder's relative positions over the patch grid",
    "dist": "its integration branch over the patch grid",
    "dualpath": "its grid framesets, which tile frames into the patch grid",
    "side4video": "its side network's position embedding of the patch grid",
    "uniformerv2": "its local MHRA convolutions over the patch grid",
    "zeroi2v": "its head shift, which mixes the same token position across frames",
}


def check_token_drop(names: list[str], fraction: float) -> None:
    """Refuse token dropping (``fraction > 0``) with a method that needs the full patch grid, naming it."""
    if fraction <= 0:
        return
    for name in names:
        spec = get_method(name)
        why = FULL_GRID_USES.get(spec.name)
        if why:
            raise ValueError(f"token_drop={fraction} cannot be used with method {spec.name!r}: {why} needs every "
                             "patch token; set token_drop to 0 (--token-drop 0) or choose another method")


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
    stage: str = "tower"           # when it is applied among the chosen methods (STAGES)


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
    stage: Optional[str] = None,
):
    """Decorator registering ``apply(model, config)`` under ``name`` (and ``aliases``).

    ``merge(model, config)``, for methods that can be folded into the frozen
    weights, does that in place and removes the method's modules. ``needs_text`` marks methods that use
    the CLIP text tower (they need a CLIP backbone and the class names). ``stage`` (one of ``STAGES``)
    places it in the canonical application order; by default "readout" for a method that claims the
    readout and "tower" otherwise.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"method {name!r}: config_cls must be a dataclass")
    if stage is None:
        stage = "readout" if "readout" in claims else "tower"
    if stage not in STAGES:
        raise ValueError(f"method {name!r}: stage must be one of {STAGES}, got {stage!r}")

    def wrap(apply):
        for key in (name, *aliases):
            if key in _METHODS or key in _ALIASES:
                raise ValueError(f"method name {key!r} is already registered")
        summary = help or (apply.__doc__ or "").strip().split("\n")[0]
        spec = MethodSpec(name, config_cls, _settled(apply), family, paper, summary, aliases, claims, merge,
                          needs_text, stage)
        _METHODS[name] = spec
        for alias in aliases:
            _ALIASES[alias] = name
        return apply

    return wrap


def _settled(apply: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``apply``, then ``settle_head``: head-only tower parameters the readout (as it now stands) does not
    use are frozen, so composed methods leave no dead weights (see ``methods/_readout.py``)."""
    @functools.wraps(apply)
    def apply_and_settle(model, config) -> None:
        apply(model, config)
        settle_head(model)

    return apply_and_settle


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


def application_order(specs: list[MethodSpec]) -> list[MethodSpec]:
    """The specs in the canonical order they are applied in: by stage (``STAGES``), then by name."""
    return sorted(specs, key=lambda spec: (STAGES.index(spec.stage), spec.name))


def make_configs(names: list[str], options: dict[str, Any]) -> list[tuple[MethodSpec, Any]]:
    """Route keyword options to every chosen method that has a field of that name.

    The pairs come back in the canonical application order (``application_order``), whatever order
    ``names`` gives, so the same set of methods always builds the same model.
    """
    specs = [get_method(n) for n in names]
    chosen = [spec.name for spec in specs]
    for name in set(chosen):
        if chosen.count(name) > 1:
            raise ValueError(f"method {name!r} is listed twice")
    claimed: dict[str, str] = {}
    for spec in application_order(specs):   # the same message in whatever order the methods are given
        for claim in spec.claims:
            if claim in claimed:
                what = CLAIMS.get(claim, claim)
                raise ValueError(
                    f"methods {claimed[claim]!r} and {spec.name!r} both claim the model's {what}; "
                    "only one method can own it: choose one of them"
                )
            claimed[claim] = spec.name
    used = set()
    configs = []
    for spec in application_order(specs):
        valid = {f.name for f in method_fields(spec)}
        kwargs = {k: v for k, v in options.items() if k in valid}
        used.update(kwargs)
        configs.append((spec, spec.config_cls(**kwargs)))
    check_clip_length(configs)
    unknown = set(options) - used
    if unknown:
        valid = sorted({f.name for s in specs for f in method_fields(s)})
        raise ValueError(
            f"option(s) {', '.join(sorted(unknown))} do not belong to method(s) {', '.join(names)}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    return configs


def _described(config, what: str) -> str:
    describe = getattr(config, what, None)
    return (describe() or "") if callable(describe) else ""


def check_clip_length(configs: list[tuple[MethodSpec, Any]]) -> None:
    """Refuse a method that changes the frames the tower sees (``config.reframes()``) together with one
    whose modules are built for whole ``num_frames``-frame clips (``config.clip_bound()``)."""
    for spec, config in configs:
        how = _described(config, "reframes")
        if not how:
            continue
        for other, other_config in configs:
            what = _described(other_config, "clip_bound")
            if other is not spec and what:
                raise ValueError(
                    f"{spec.name} {how}, but whole clips of the model's num_frames frames are needed by {what}: "
                    f"methods {spec.name!r} and {other.name!r} cannot be combined; choose one of them")


def config_from_dict(spec: MethodSpec, values: dict[str, Any]):
    valid = {f.name for f in method_fields(spec)}
    return spec.config_cls(**{k: v for k, v in values.items() if k in valid})
