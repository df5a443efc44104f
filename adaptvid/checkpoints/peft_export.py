"""A LoRA model's adapter as a standard PEFT adapter folder, and such a folder back into a LoRA model.

The folder is what ``peft.PeftModel.save_pretrained`` writes for the backbone's library tower
(``model.backbone.tower``: a timm ``VisionTransformer``, the vision half of a transformers
``CLIPModel``, an open_clip ``VisionTransformer``)::

    adapter_config.json         peft's ``LoraConfig``, as ``LoraConfig.save_pretrained`` writes it
                                (sorted keys, ``inference_mode`` true, ``task_type`` null, ``auto_mapping``)
    adapter_model.safetensors   the LoRA factors under the names ``peft.get_peft_model_state_dict``
                                gives them: relative to the tower, with peft's ``base_model.model.``
                                prefix and without the adapter name, e.g.
                                ``base_model.model.blocks.0.attn.qkv.lora_A.weight``

so that, on the same frozen weights, ``peft.PeftModel.from_pretrained(tower, folder)`` computes
what the adaptvid model's tower computes. Only the LoRA part of a model is exported: other methods
(their slot modules, readouts, heads, text prompts) have no PEFT equivalent and stay out; the frozen
weights are never written.

Refused (``ValueError``, with the reason): a model without LoRA, a model whose LoRA was merged,
a model whose tower weights are not the library's (trained, merged or taken from another
checkpoint: an adapter over them would be applied to the wrong base; ``allow_modified_base=True``
writes it anyway), and what peft cannot reproduce: LoRA layers other than peft's own linear one
with one rank and scale, and, as long as peft's own LoRA layer for ``nn.MultiheadAttention``
(open_clip's attention) does not compute ``W + (alpha / r) B A`` on both of its projections, open_clip
towers (peft 0.21 adds the ``out_proj`` update twice; see ``peft_multihead_attention_problem``).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..methods.lora import ADAPTER, lora_modules

logger = logging.getLogger("adaptvid")

CONFIG_NAME = "adapter_config.json"          # peft's names (peft.utils.CONFIG_NAME / SAFETENSORS_WEIGHTS_NAME)
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."             # a PeftModel's prefix before the base model's own module names
_FACTOR = re.compile(rf"^(?P<module>.+)\.(?P<factor>lora_[AB])\.{re.escape(ADAPTER)}\.weight$")

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "export_peft_adapter", "load_peft_adapter",
           "peft_adapter_state_dict", "peft_multihead_attention_problem"]


# -- what peft can and cannot reproduce ------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def peft_multihead_attention_problem() -> Optional[str]:
    """Why the installed peft cannot reproduce adaptvid's LoRA on ``nn.MultiheadAttention``; None if it can.

    Measured, not looked up by version: a small attention gets peft's own LoRA layer (through
    ``peft.inject_adapter_in_model``, as ``PeftModel.from_pretrained`` would give it) with non-zero
    factors, and its output is compared with the attention whose ``in_proj_weight`` and
    ``out_proj.weight`` carry ``W + (alpha / r) B A`` each, which is what adaptvid's layer computes.
    """
    with torch.random.fork_rng(devices=[]):   # the probe's random weights leave the caller's RNG as it was
        torch.manual_seed(0)
        return _probe_multihead_attention()


def _probe_multihead_attention() -> Optional[str]:
    import peft
    from peft import LoraConfig, inject_adapter_in_model

    generator = torch.Generator().manual_seed(0)
    width, rank, alpha = 8, 2, 4.0
    holder = nn.Module()
    holder.attn = nn.MultiheadAttention(width, 2, batch_first=True).double()
    reference = nn.MultiheadAttention(width, 2, batch_first=True).double()
    reference.load_state_dict(holder.attn.state_dict())
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["attn"]), holder, adapter_name="probe")
    layer = holder.attn
    x = torch.randn(2, 5, width, generator=generator, dtype=torch.float64)

    results = {}
    with torch.no_grad():
        for name, owner in (("in_proj", layer), ("out_proj", layer.base_layer.out_proj)):
            for other in (layer, layer.base_layer.out_proj):   # one projection adapted at a time
                other.lora_B["probe"].weight.zero_()
            a, b = owner.lora_A["probe"].weight, owner.lora_B["probe"].weight
            a.copy_(torch.randn(a.shape, generator=generator, dtype=a.dtype))
            b.copy_(torch.randn(b.shape, generator=generator, dtype=b.dtype))
            delta = (alpha / rank) * b @ a
            expected = {}
            for times in (1, 2):
                twin = nn.MultiheadAttention(width, 2, batch_first=True).double()
                twin.load_state_dict(reference.state_dict())
                target = twin.in_proj_weight if name == "in_proj" else twin.out_proj.weight
                target.add_(times * delta)
                expected[times] = twin(x, x, x, need_weights=False)[0]
            got = layer(x, x, x, need_weights=False)[0]
            if torch.allclose(got, expected[1], rtol=0, atol=1e-9):
                continue
            results[name] = "adds it twice (W + 2 dW)" if torch.allclose(got, expected[2], rtol=0, atol=1e-9) \
                else "does not compute W + dW"
    if not results:
        return None
    found = "; ".join(f"on {name} it {what}" for name, what in results.items())
    return (f"peft {peft.__version__}'s LoRA layer for nn.MultiheadAttention (the one PeftModel.from_pretrained puts on "
            f"open_clip's attention) does not apply the update W + (alpha/r) B A that adaptvid trained: {found} "
            "(huggingface/peft PR #3774), so the adapter loaded with peft would compute another model")


def _lora_method_config(model):
    for name, config in getattr(model, "methods", []):
        if name == "lora":
            return config
    have = ", ".join(name for name, _ in getattr(model, "methods", [])) or "none"
    raise ValueError(f"peft export: the model has no LoRA to export (its methods: {have}); build it with method 'lora' "
                     "(alone or composed, e.g. 'lora,st-adapter')")


def _check_layers(model) -> dict[str, nn.Module]:
    """The model's LoRA layers by module name, after checking peft can represent each (else ValueError)."""
    from peft.tuners.lora.layer import Linear, MultiheadAttention

    config = _lora_method_config(model)
    if "lora" in list(getattr(model, "merged_methods", [])):
        raise ValueError("peft export: this model's LoRA was merged into the tower weights (adaptvid.merge), so there "
                         "are no LoRA factors left to export; export before merging (a merged model is saved whole "
                         "with model.save_adapter)")
    layers = lora_modules(model)
    if not layers:
        raise ValueError("peft export: the model lists method 'lora' but its tower holds no LoRA layers")
    expected_scale = config.alpha / config.rank
    for name, layer in layers.items():
        nested = [layer]
        if isinstance(layer, MultiheadAttention):
            problem = peft_multihead_attention_problem()
            if problem is not None:
                raise ValueError(f"peft export: cannot export the LoRA of {model.backbone.library} attention "
                                 f"{name!r}: {problem}")
            nested.append(layer.get_base_layer().out_proj)
        elif type(layer) is not Linear:
            raise ValueError(f"peft export: {name!r} holds a {type(layer).__name__} LoRA layer; only peft's own Linear "
                             "(and, where peft reproduces it, MultiheadAttention) layers can be exported")
        for part in nested:
            adapters = set(part.lora_A) | set(part.lora_B)
            if adapters != {ADAPTER}:
                raise ValueError(f"peft export: {name!r} holds LoRA adapters {sorted(adapters)}; expected only adaptvid's "
                                 f"{ADAPTER!r}")
            if part.merged or part.disable_adapters:
                raise ValueError(f"peft export: {name!r}'s LoRA is {'merged' if part.merged else 'disabled'} in place; "
                                 "peft would load it as an active, unmerged adapter")
            extras = {"DoRA": part.use_dora.get(ADAPTER, False), "rsLoRA": part.use_rslora.get(ADAPTER, False),
                      "a LoRA bias": part.lora_bias.get(ADAPTER, False),
                      "a LoRA variant": getattr(part, "lora_variant", {}).get(ADAPTER) is not None}
            used = [what for what, on in extras.items() if on]
            if used:
                raise ValueError(f"peft export: {name!r} uses {', '.join(used)}, which adaptvid's LoRA never sets up")
            rank, alpha, scale = part.r[ADAPTER], part.lora_alpha[ADAPTER], part.scaling[ADAPTER]
            if rank != config.rank or alpha != config.alpha or not math.isclose(scale, expected_scale, rel_tol=1e-12):
                raise ValueError(
                    f"peft export: {name!r} has rank {rank}, alpha {alpha}, scale {scale} but the model's LoRA config says "
                    f"rank {config.rank}, alpha {config.alpha} (scale {expected_scale}); peft's config holds one rank and "
                    "scale for every module, so this model cannot be written as a PEFT adapter")
    return layers


def _modified_base(model) -> list[str]:
    """Why the tower's weights may no longer be the library's (empty when they are the library's own)."""
    reasons = []
    trained = [name for name, p in model.backbone.tower.named_parameters()
               if p.requires_grad and not _FACTOR.match(name)]
    if trained:
        reasons.append(f"{len(trained)} tower weights are trainable (e.g. {', '.join(trained[:3])})")
    merged = [name for name in getattr(model, "merged_methods", []) if name != "lora"]
    if merged:
        reasons.append(f"methods {merged} were merged into the tower weights")
    if getattr(model, "init_from_path", None):
        reasons.append(f"the towers were taken from the checkpoint {model.init_from_path}")
    return reasons


# -- the adapter's tensors and config ------------------------------------------------------------------

def peft_adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The LoRA factors under the names peft saves them (``base_model.model.<module>.lora_A.weight``), as
    detached contiguous CPU copies; raises ``ValueError`` for what ``export_peft_adapter`` refuses."""
    _check_layers(model)
    return _adapter_tensors(model)


def _adapter_tensors(model) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, p in model.backbone.tower.named_parameters():
        match = _FACTOR.match(name)
        if match:
            key = f"{KEY_PREFIX}{match['module']}.{match['factor']}.weight"
            tensors[key] = p.detach().to("cpu", copy=True).contiguous()
        elif ".lora_" in name:
            raise ValueError(f"peft export: the tower holds a LoRA tensor {name!r} that is not a lora_A / lora_B factor "
                             f"of adapter {ADAPTER!r}")
    return tensors


def _number(value: float):
    return int(value) if float(value).is_integer() else float(value)


def _hub_id(model) -> Optional[str]:
    """The base model's hub id when the backbone name gives one and its default (hub) weights were loaded."""
    backbone = model.backbone
    if getattr(model, "weights", None) is not None:   # 'random' or a local file: not the hub model
        return None
    name = backbone.name
    if name.startswith("hf:"):
        return name[len("hf:"):] or None
    if backbone.library == "timm" and name.startswith("timm:"):
        return (getattr(backbone.tower, "pretrained_cfg", None) or {}).get("hf_hub_id") or None
    if backbone.library == "open_clip":
        from ..backbones.loading import OPENAI_CLIP

        if name in OPENAI_CLIP:
            arch, tag = OPENAI_CLIP[name], "openai"
        elif name.startswith("open_clip:"):
            arch, _, tag = name[len("open_clip:"):].partition("/")
        else:
            return None
        try:
            import open_clip

            hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "")
        except Exception:   # an unknown tag or an open_clip without that helper: no id
            return None
        return hub.strip("/") or None
    return None


def _base_class(model) -> type:
    """The class ``AutoPeftModel`` should build the base from (peft writes the class of the model it wraps).

    For transformers towers that is the ``CLIPModel`` the tower was taken from: adaptvid's tower holds
    its ``vision_model`` and ``visual_projection`` under the same names, so the keys are valid on it."""
    backbone = model.backbone
    tower = backbone.tower
    library_model = getattr(getattr(backbone, "text", None), "model", None)
    if (backbone.library == "transformers" and library_model is not None
            and getattr(library_model, "vision_model", None) is getattr(tower, "vision_model", False)
            and getattr(library_model, "visual_projection", None) is getattr(tower, "visual_projection", False)):
        return type(library_model)
    return type(tower)


def _peft_config_dict(model, layers: dict[str, nn.Module], base_model_name_or_path: Optional[str]) -> dict:
    """adapter_config.json's content, from peft's own LoraConfig (so every field peft writes is there)."""
    from peft import LoraConfig

    config = _lora_method_config(model)
    targets = list(layers)   # full module names relative to the tower, in block order
    lora_config = LoraConfig(
        r=config.rank, lora_alpha=_number(config.alpha), lora_dropout=config.lora_dropout, target_modules=targets,
        bias="none", init_lora_weights=True, inference_mode=True, task_type=None,
        base_model_name_or_path=base_model_name_or_path,
    )
    output = lora_config.to_dict()
    for key, value in output.items():   # as LoraConfig.save_pretrained: sets become lists
        if isinstance(value, set):
            output[key] = sorted(value)
    output["target_modules"] = targets  # (in a fixed order: peft's set has none)
    base = _base_class(model)
    output["auto_mapping"] = {"base_model_class": base.__name__, "parent_library": base.__module__}
    return output


# -- public ---------------------------------------------------------------------------------------------

def export_peft_adapter(model, directory, *, allow_modified_base: bool = False) -> Path:
    """Write the model's LoRA as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    The folder is the one ``peft.PeftModel.save_pretrained`` writes for ``model.backbone.tower`` (see the
    module docstring): ``peft.PeftModel.from_pretrained(tower, directory)`` on a plain copy of the same
    library tower reproduces the adaptvid tower's LoRA (for transformers towers, the tower's names are
    those of the ``CLIPModel`` it came from, so it loads onto a ``CLIPModel`` too).

    Only the LoRA part is exported. In a composed model (e.g. ``lora,st-adapter``) the other methods'
    modules, the readout and the head are not in the folder, so peft's model is the image tower with
    LoRA, not the video model (save those with ``model.save_adapter``). ``base_model_name_or_path`` is the
    hub id of the backbone's default weights where its name gives one (``hf:<id>``, ``timm:<name>``,
    open_clip names with a hub copy), else null.

    Raises ``ValueError`` for a model without LoRA, a model whose LoRA was merged, a LoRA peft cannot
    reproduce (see the module docstring; open_clip's fused attention with peft 0.21), and, unless
    ``allow_modified_base``, a model whose tower weights differ from the library's (trained by another
    method, merged, or taken from another checkpoint). Files are written under temporary names and
    renamed, like ``save_adapter``. Returns the directory.
    """
    from safetensors.torch import save_file

    layers = _check_layers(model)
    modified = _modified_base(model)
    base_id = _hub_id(model)
    if modified:
        if not allow_modified_base:
            raise ValueError(
                "peft export: the tower's frozen weights may not be the library's any more ("
                + "; ".join(modified) + "), so the LoRA would be applied to another base model than the one "
                "peft loads; pass allow_modified_base=True to write it anyway (base_model_name_or_path is then null)")
        logger.warning("peft export: the LoRA is written for a tower whose weights differ from the library's (%s)",
                       "; ".join(modified))
        base_id = None
    tensors = _adapter_tensors(model)
    config = _peft_config_dict(model, layers, base_id)
    directory = Path(directory)
    if directory.is_file():
        raise ValueError(f"peft export: {directory} is a file, not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True)   # LoraConfig.save_pretrained's formatting
    tmp_weights, tmp_config = directory / (WEIGHTS_NAME + ".tmp"), directory / (CONFIG_NAME + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})   # peft's metadata
    tmp_config.write_text(text)
    os.replace(tmp_weights, directory / WEIGHTS_NAME)
    os.replace(tmp_config, directory / CONFIG_NAME)
    return directory


def _read_peft_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no PEFT adapter here (expected {CONFIG_NAME} and {WEIGHTS_NAME}, as written "
                                "by peft's save_pretrained or export_peft_adapter)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: not a LoRA adapter (peft_type={found!r})")
    return config


def load_peft_adapter(model, directory, map_location: str = "cpu"):
    """Load a PEFT LoRA adapter folder into the LoRA layers of an adaptvid model; returns the model.

    The folder may come from ``export_peft_adapter`` or from peft itself (``save_pretrained`` of a
    ``PeftModel`` over the same library tower). The model must already hold LoRA on exactly the modules
    the adapter adapts, with the adapter's rank and scale (build it with the same ``rank``, ``alpha``,
    ``targets`` and ``lora_layers``). Raises ``ValueError`` on any mismatch (LoRA options peft used that
    adaptvid does not have, extra tensors such as biases or ``modules_to_save``, missing, unexpected
    or wrongly shaped factors) and leaves the model untouched then; the same LoRA refusals as
    ``export_peft_adapter`` apply (an adapter for open_clip's attention is refused while peft computes
    that attention differently).
    """
    from safetensors.torch import load_file

    layers = _check_layers(model)
    lora = _lora_method_config(model)
    directory = Path(directory)
    config = _read_peft_config(directory)
    where = directory / CONFIG_NAME
    unsupported = {
        "use_dora": False, "use_rslora": False, "lora_bias": False, "bias": "none", "fan_in_fan_out": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None,
        "trainable_token_indices": None, "target_parameters": None,
    }
    used = [f"{key}={config[key]!r}" for key, default in unsupported.items()
            if config.get(key, default) not in (default, None, {}, [], False)]
    if used:
        raise ValueError(f"{where}: uses {', '.join(used)}, which adaptvid's LoRA cannot hold")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or not isinstance(alpha, (int, float)):
        raise ValueError(f"{where}: r={rank!r}, lora_alpha={alpha!r} are not a LoRA rank and alpha")
    if rank != lora.rank or not math.isclose(alpha / rank, lora.alpha / lora.rank, rel_tol=1e-9):
        raise ValueError(f"{where}: rank {rank}, alpha {alpha} (scale {alpha / rank:g}) but the model's LoRA has rank "
                         f"{lora.rank}, alpha {lora.alpha} (scale {lora.alpha / lora.rank:g}); build it with "
                         f"rank={rank}, alpha={alpha}")
    if not math.isclose(config.get("lora_dropout") or 0.0, lora.lora_dropout):
        logger.warning("%s: lora_dropout %s differs from the model's %s (only training sees it)", where,
                       config.get("lora_dropout"), lora.lora_dropout)

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the adapter's weights are missing (peft also writes {WEIGHTS_NAME})")
    try:
        tensors = load_file(str(path), device=map_location)
    except Exception as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    tower = model.backbone.tower
    params = dict(tower.named_parameters())
    expected = {}   # file key -> tower parameter name
    for name in params:
        match = _FACTOR.match(name)
        if match:
            expected[f"{KEY_PREFIX}{match['module']}.{match['factor']}.weight"] = name
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    wrong_shape = [f"{key} {tuple(tensors[key].shape)} != {tuple(params[name].shape)}"
                   for key, name in expected.items() if key in tensors and tensors[key].shape != params[name].shape]
    if unexpected or missing or wrong_shape:
        raise ValueError(
            f"{path}: the adapter does not fit the model's LoRA layers ({len(layers)} modules): missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, wrong shape {wrong_shape[:4]}; build the model with the adapter's targets "
            f"(target_modules {config.get('target_modules')!r}) and rank")
    with torch.no_grad():
        for key, name in expected.items():
            params[name].copy_(tensors[key].to(params[name].dtype))
    return model
