"""VPT (Jia et al., "Visual Prompt Tuning", ECCV 2022): learned prompt tokens in the frozen image tower.

* ``vpt_depth="shallow"``: ``vpt_tokens`` prompts are inserted once, right after the CLS token (after the
  pre-norm), and carried through every block; the readout takes the CLS token, so they never reach the
  classifier. The backbone's ``num_prefix_tokens`` grows by ``vpt_tokens``, so methods that reshape the
  patch tokens to the grid (ST-Adapter, EVL, ...) treat the prompts as prefix tokens and still work.
* ``vpt_depth="deep"`` (or a number k: the first k blocks): a fresh set of prompts for each block's
  attention (the ``attn_tokens`` hook), dropped after it. In VPT-deep the prompts' block outputs are
  discarded and replaced by the next block's prompts, and attention and the MLP treat every other token
  the same whatever the prompts' position, so this is exactly VPT-deep for the image tokens; it leaves
  the token layout alone.

Prompts start uniform in +-sqrt(6 / (3 * patch * patch + D)) (VPT's xavier-uniform bound). The tower
stays frozen; with no other method the readout is the mean frame embedding and a linear head (any
backbone, timm ViTs included); ``"coop,vpt"`` gives text-side and image-side prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ._prompts import InsertedPrompts, LayerPrompts, prompt_bound
from .registry import register_method

NAME = "vpt"


@dataclass
class VPTConfig:
    vpt_tokens: int = field(default=8, metadata={"help": "visual prompt tokens (per block when deep)"})
    vpt_depth: str = field(default="deep", metadata={
        "help": "'shallow' (prompts inserted once after the CLS token), 'deep' (a fresh set in every block) "
                "or a number k (a fresh set in each of the first k blocks)"})

    def __post_init__(self) -> None:
        if self.vpt_tokens < 1:
            raise ValueError(f"vpt_tokens must be >= 1, got {self.vpt_tokens}")
        self.vpt_depth = str(self.vpt_depth).strip().lower()
        if self.vpt_depth not in ("shallow", "deep") and not (self.vpt_depth.isdigit() and int(self.vpt_depth) >= 1):
            raise ValueError(f"vpt_depth must be 'shallow', 'deep' or a number of blocks >= 1, got {self.vpt_depth!r}")


@register_method(
    NAME, VPTConfig, family="prompt tuning",
    paper="Jia, Tang, Chen, Cardie, Belongie, Hariharan, Lim. Visual Prompt Tuning, ECCV 2022",
    help="learned prompt tokens in the frozen image tower (shallow: once after CLS; deep: a fresh set per block)",
)
def apply_vpt(model, config: VPTConfig) -> None:
    backbone = model.backbone
    bound = prompt_bound(backbone.patch_size, backbone.width)
    if config.vpt_depth == "shallow":
        if any(name == "dualpath" for name, _ in model.methods):
            raise ValueError("shallow vpt changes the prefix tokens that dualpath's frameset embedding reads before "
                             "the pre-norm; use vpt_depth='deep' with dualpath")
        prefix = backbone.num_prefix_tokens
        backbone.after_embed[NAME] = InsertedPrompts(config.vpt_tokens, backbone.width, bound, prefix)
        backbone.num_prefix_tokens = prefix + config.vpt_tokens   # the contexts of every later step see them
        return
    blocks = backbone.depth if config.vpt_depth == "deep" else int(config.vpt_depth)
    if blocks > backbone.depth:
        raise ValueError(f"vpt_depth={blocks} but the backbone has {backbone.depth} blocks")
    for slot in backbone.slots[:blocks]:
        slot.add("attn_tokens", NAME, LayerPrompts(config.vpt_tokens, backbone.width, bound))
