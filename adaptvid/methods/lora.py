"""LoRA (Hu et al., ICLR 2022) on the frozen image tower, through peft's layer-level injection.

Each targeted projection ``W`` gets a trainable low-rank update: ``W x + (alpha / rank) B A x``,
with ``A`` (rank x in) Kaiming-uniform and ``B`` (out x rank) zero, so the adapted model starts as
the image model exactly. Only ``A`` and ``B`` (and the head) train. LoRA acts on each frame
alone: with the default mean-of-frame-embeddings readout the model cannot see frame order
(compose it with a temporal method, e.g. ``st-adapter,lora``, for that).

Targets, found through the backbone protocol (``views[i].attn_module`` / ``views[i].mlp``), so
nothing outside the blocks (e.g. timm's ``patch_embed.proj`` conv) is ever caught:

* timm ``Attention``: ``qkv`` (fused, D -> 3D) and ``proj``; with ``attn+mlp`` also ``mlp.fc1``/``fc2``;
* transformers ``CLIPAttention``: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``; MLP ``fc1``/``fc2``;
* open_clip ``nn.MultiheadAttention``: peft's LoRA layer for the whole module, one update on the
  fused ``in_proj_weight`` (D -> 3D) and one on ``out_proj``; MLP ``c_fc``/``c_proj``.

On open_clip the update reaches the weights only through the attention module's call (the
block's own forward and ``view.attn``); ``view.qkv`` / ``view.attn_out`` read the frozen
``in_proj_weight`` / ``out_proj`` directly and do not see it, and ``lora_dropout`` does not apply to
the attention there (the update is added to the weights, not computed on the input).

``merge`` folds every update into its frozen weight (peft's layer merge; a corrected one for
nn.MultiheadAttention, see ``_mha_lora_class``) and puts the library's own modules back: the
merged tower has the plain tower's module objects, parameter names and parameter count.

Parameter names are fixed by the target list and the adapter name (``lora``), e.g.
``backbone.tower.blocks.0.attn.qkv.lora_A.lora.weight``; open_clip's attention nests peft's
wrappers: ``...resblocks.0.attn.lora_A.lora.weight`` (in_proj) and
``...resblocks.0.attn.base_layer.out_proj.lora_A.lora.weight``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .registry import register_method

logger = logging.getLogger("adaptvid")
TARGETS = ("attn", "attn+mlp")
ADAPTER = "lora"   # peft adapter name: LoRA tensors are ``<module>.lora_A.lora.weight`` / ``lora_B``


@dataclass
class LoRAConfig:
    rank: int = field(default=8, metadata={
        "help": "rank r of each update (8: in Hu et al. ranks 1-64 on the attention perform alike; "
                "8 trains 0.44M weights on CLIP ViT-B/16, about 1/200 of its tower)"})
    alpha: float = field(default=16.0, metadata={"help": "scale numerator: the update is (alpha / rank) B A"})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "dropout on the LoRA branch input (linear layers; not applied to open_clip's fused attention)"})
    targets: str = field(default="attn", metadata={
        "help": "'attn': the attention projections (q, k, v, out); 'attn+mlp': also the two MLP linears"})
    lora_layers: str = field(default="all", metadata={
        "help": "blocks to adapt: 'all', 'last:N', or comma-separated block indices (e.g. '0,1,11')"})

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise ValueError(f"lora targets must be one of {TARGETS}, got {self.targets!r}")
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _parse_layers(self.lora_layers, None)  # syntax only; indices are checked against the depth in apply


def _parse_layers(spec: str, depth: int | None) -> list[int]:
    """'all' | 'last:N' | 'i,j,...' -> sorted block indices (negative indices count from the end)."""
    text = str(spec).strip().lower()
    error = ValueError(f"lora_layers must be 'all', 'last:N' or comma-separated block indices, got {spec!r}")
    if text == "all":
        return list(range(depth)) if depth is not None else []
    if text.startswith("last:"):
        try:
            count = int(text[5:])
        except ValueError:
            raise error from None
        if count < 1 or (depth is not None and count > depth):
            raise ValueError(f"lora_layers {spec!r}: N must be in 1..{depth if depth is not None else 'depth'}")
        return list(range(depth - count, depth)) if depth is not None else []
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise error from None
    if not indices:
        raise error
    if depth is None:
        return []
    bad = [i for i in indices if not -depth <= i < depth]
    if bad:
        raise ValueError(f"lora_layers {spec!r}: block indices {bad} are outside a {depth}-block tower")
    return sorted({i % depth for i in indices})


MultiheadAttentionLoRA = None  # built on first use: importing peft takes seconds, `import adaptvid` should not


def _mha_lora_class():
    """peft's LoRA layer for nn.MultiheadAttention with a correct forward and merge (built once, lazily).

    Two problems of peft 0.21's own layer are worked around here (its injection and bookkeeping kept):

    * its ``merge`` writes ``W + dW`` into ``out_proj.weight`` and then calls ``out_proj.merge()``,
      which adds ``dW`` again: the out projection gets ``W + 2 dW`` (huggingface/peft PR #3774, open);
      and its forward runs through that merge, so the update it trains is not the one LoRA defines;
    * its forward merges before the call and unmerges after, so the frozen weights come back
      rounded (``W + d - d != W`` in floating point, drifting over training) and as new Parameters,
      and it re-creates them as new Parameters again on every ``named_modules()`` / ``state_dict()``.

    Here the forward hands ``W + dW`` to the call out of place (``torch.func.functional_call``; the
    same autograd path into A and B, frozen tensors never written) and ``merge`` adds each delta once.
    """
    global MultiheadAttentionLoRA
    if MultiheadAttentionLoRA is not None:
        return MultiheadAttentionLoRA
    from peft.tuners.lora.layer import MultiheadAttention
    from peft.tuners.tuners_utils import check_adapters_to_merge

    class _MultiheadAttentionLoRA(MultiheadAttention):
        def _active(self) -> list[str]:
            if self.disable_adapters or self.merged:
                return []
            return [a for a in self.active_adapters if a in self.lora_A]

        def adapted_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
            """(in_proj_weight, out_proj.weight) as the attention uses them: W + (alpha/r) B A when active.

            For callers that read the projections directly (adaptvid's ``view.qkv`` / ``view.attn_out``)."""
            base = self.get_base_layer()            # the library's nn.MultiheadAttention
            out_proj = base.out_proj                # peft's Linear around the library's out_proj
            w_in, w_out = base.in_proj_weight, out_proj.get_base_layer().weight
            for adapter in self._active():
                w_in = w_in + self.get_delta_weight(adapter).to(w_in.dtype)
                w_out = w_out + out_proj.get_delta_weight(adapter).to(w_out.dtype)
            return w_in, w_out

        def forward(self, query: torch.Tensor, *args, **kwargs):
            if not self._active():
                return super().forward(query, *args, **kwargs)
            self._check_forward_args(query, *args, **kwargs)
            w_in, w_out = self.adapted_weights()
            swapped = {"in_proj_weight": w_in, "out_proj.base_layer.weight": w_out}
            return torch.func.functional_call(self.get_base_layer(), swapped, (query, *args), kwargs)

        def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
            base = self.get_base_layer()
            for adapter in check_adapters_to_merge(self, adapter_names):
                if adapter not in self.lora_A:
                    continue
                weight = base.in_proj_weight
                merged = weight.data + self.get_delta_weight(adapter).to(weight.dtype)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"lora: non-finite merged attention weights (adapter {adapter!r})")
                weight.data = merged
                base.out_proj.merge(safe_merge=safe_merge, adapter_names=[adapter])   # adds its delta once
                self.merged_adapters.append(adapter)

        def unmerge(self) -> None:
            base = self.get_base_layer()
            while self.merged_adapters:
                adapter = self.merged_adapters.pop()
                if adapter in self.lora_A:
                    weight = base.in_proj_weight
                    weight.data = weight.data - self.get_delta_weight(adapter).to(weight.dtype)
            if base.out_proj.merged:
                base.out_proj.unmerge()

        def _restore_weights(self) -> None:
            # peft re-registers the frozen weights as new Parameters on every named_modules() / state_dict()
            # call, because its forward leaves them unregistered; this forward never does, so nothing to restore.
            pass

    _MultiheadAttentionLoRA.__name__ = _MultiheadAttentionLoRA.__qualname__ = "MultiheadAttentionLoRA"
    MultiheadAttentionLoRA = _MultiheadAttentionLoRA   # importable by name (repr, pickling)
    return MultiheadAttentionLoRA


def _target_names(backbone, config: LoRAConfig) -> list[str]:
    """Full module names inside ``backbone.tower`` that get a LoRA layer, in block order."""
    names = {id(module): name for name, module in backbone.tower.named_modules()}
    views = backbone.views
    targets: list[str] = []
    for index in _parse_layers(config.lora_layers, len(views)):
        view = views[index]
        attn = view.attn_module
        if isinstance(attn, nn.MultiheadAttention):
            chosen = [attn]
        else:
            chosen = [m for m in attn.modules() if isinstance(m, nn.Linear)]
            covered = {id(p) for m in chosen for p in m.parameters()}
            loose = [n for n, p in attn.named_parameters() if p.ndim >= 2 and id(p) not in covered]
            if loose or not chosen:
                raise ValueError(
                    f"lora: block {index}'s attention ({type(attn).__name__}) keeps projection weights outside "
                    f"nn.Linear layers ({', '.join(loose) or 'no linear layers'}); this attention type is not "
                    "supported (LoRA would leave its queries/keys/values unadapted)"
                )
        if config.targets == "attn+mlp":
            mlp = [m for m in view.mlp.modules() if isinstance(m, nn.Linear)]
            if not mlp:
                raise ValueError(f"lora: block {index}'s MLP ({type(view.mlp).__name__}) has no nn.Linear layers")
            chosen += mlp
        for module in chosen:
            if id(module) not in names:
                raise ValueError(f"lora: block {index}'s {type(module).__name__} is not inside the backbone's tower")
            targets.append(names[id(module)])
    return targets


def _plain_name(name: str) -> str:
    """A parameter's name in the plain tower (peft nests the library's layer as ``base_layer``)."""
    return name.replace(".base_layer.", ".")


def _is_lora(name: str) -> bool:
    return f".lora_A.{ADAPTER}." in name or f".lora_B.{ADAPTER}." in name


def _lora_factors(tower: nn.Module) -> list[nn.Module]:
    """Every LoRA layer's A and B containers (nested ones included), i.e. the trainable LoRA tensors."""
    return [module for name, module in tower.named_modules() if name.rpartition(".")[2] in ("lora_A", "lora_B")]


def lora_modules(model) -> dict[str, nn.Module]:
    """The tower's LoRA layers by module name; outermost only (open_clip's out_proj one sits in its attention's)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: dict[str, nn.Module] = {}
    for name, module in model.backbone.tower.named_modules():
        if isinstance(module, BaseTunerLayer) and not any(name.startswith(outer + ".") for outer in found):
            found[name] = module
    return found


def lora_attention_blocks(model) -> list[int]:
    """Blocks whose attention module is a LoRA-wrapped ``nn.MultiheadAttention`` (open_clip towers): there the
    update reaches the weights only through the module's call, not through the view's ``qkv`` / ``attn_out``."""
    if MultiheadAttentionLoRA is None:   # never built, so no tower holds one
        return []
    return [i for i, view in enumerate(model.backbone.views)
            if any(isinstance(m, MultiheadAttentionLoRA) for m in view.block.modules())]


def check_attention_sees_lora(model, method: str, blocks, what: str = "computes the attention") -> None:
    """Refuse a method that runs ``blocks``' attention through the q/k/v handles on blocks where lora's
    update of the fused open_clip attention would not be seen (its tensors would train on nothing)."""
    hit = sorted(set(lora_attention_blocks(model)) & set(blocks))
    if hit:
        raise ValueError(f"{method} {what} of block(s) {hit} from the frozen q/k/v projections, which on this "
                         f"open_clip tower do not see lora's update of the fused attention weights (lora's "
                         f"attention tensors there would get no gradient); choose one of them, or use a "
                         f"transformers (hf) or timm backbone")


def _attention_handle_blocks(model) -> list[int]:
    """Blocks whose attention an applied method computes through the q/k/v handles: a replaced attention, or
    the q/k a decoder captures (EVL)."""
    backbone = model.backbone
    blocks = [i for i, slot in enumerate(backbone.slots) if len(slot.attention)]
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        blocks += [i % backbone.depth for i in getattr(decoder, "qk_layers", ())]
    return blocks


def merge_lora(model, config: LoRAConfig = None) -> None:
    """Fold every LoRA update into its frozen weight (peft's merge) and put the library's modules back.

    The weights are updated in place, so the tower ends with the very module and Parameter objects
    it had before LoRA was injected (same names, same order, same count).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    backbone = model.backbone
    tower = backbone.tower
    layers = lora_modules(model)
    if not layers:
        raise ValueError("lora: nothing to merge (no LoRA layers in the backbone's tower)")
    trained = getattr(model, "new_lr_parameters", None)
    if trained is not None:  # the LoRA tensors leave the model
        trained.difference_update(id(p) for module in _lora_factors(tower) for p in module.parameters())
    with torch.no_grad():
        for name, layer in layers.items():
            layer.merge(safe_merge=True)    # raises on non-finite merged weights
            plain = layer.get_base_layer()
            if isinstance(plain, nn.MultiheadAttention) and isinstance(plain.out_proj, BaseTunerLayer):
                plain.out_proj = plain.out_proj.get_base_layer()   # merged together with its attention
            parent_name, _, child = name.rpartition(".")
            setattr(tower.get_submodule(parent_name) if parent_name else tower, child, plain)
    backbone.refresh_views()


@register_method(
    "lora", LoRAConfig, family="adapter",
    paper="Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022",
    help="low-rank updates on the frozen attention (and MLP) projections via peft; per-frame, mergeable",
    merge=merge_lora,
)
def apply_lora(model, config: LoRAConfig) -> None:
    """Wrap the chosen projections with peft LoRA layers; only their A and B train."""
    from peft import LoraConfig, inject_adapter_in_model

    backbone = model.backbone
    tower = backbone.tower
    if lora_modules(model):
        raise ValueError("lora: the backbone's tower already holds peft LoRA layers")
    targets = _target_names(backbone, config)
    if config.lora_dropout and backbone.library == "open_clip":
        logger.warning("lora: lora_dropout=%s does not act on open_clip's attention (its update is added to the "
                       "weights); only on the MLP linears, with targets='attn+mlp'", config.lora_dropout)
    peft_config = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout, target_modules=targets,
        bias="none", init_lora_weights=True,   # A Kaiming-uniform, B zero: the update starts at zero
    )
    peft_config._register_custom_module({nn.MultiheadAttention: _mha_lora_class()})
    before = {name: p.requires_grad for name, p in tower.named_parameters()}
    inject_adapter_in_model(peft_config, tower, adapter_name=ADAPTER)
    if hasattr(tower, "peft_config"):  # peft's bookkeeping; the tower stays an ordinary module
        del tower.peft_config
    # peft freezes everything but its adapters: the tower's own weights keep what the earlier methods
    # chose for them (e.g. a method that trains the final norm), and the LoRA tensors train.
    for name, p in tower.named_parameters():
        if not _is_lora(name):
            if _plain_name(name) not in before:
                raise RuntimeError(f"lora: peft added an unexpected parameter {name!r} to the tower")
            p.requires_grad_(before[_plain_name(name)])
    # They sit inside the tower but are new modules: trained at the new modules' learning rate, not backbone_lr.
    model.train_tower_parameters(*_lora_factors(tower))
    # (the registry applies lora before the methods that read the attention through the q/k/v handles, and
    # they check; this covers a model rebuilt in another order)
    check_attention_sees_lora(model, "a method applied before lora", _attention_handle_blocks(model))
    # The views keep their handles: their attention and MLP calls go through the (now wrapped) modules
    # by attribute. They are not re-read here: open_clip's views do not recognise a wrapped
    # nn.MultiheadAttention (backbone.refresh_views() before merging fails on open_clip towers).
