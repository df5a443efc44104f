"""X-CLIP (Ni, Peng, Chen, Zhang, Meng, Fu, Xiang, Ling: "Expanding Language-Image Pretrained Models
for General Video Recognition", ECCV 2022; code: microsoft/VideoX, folder X-CLIP, MIT licence).

Three mechanisms around a CLIP image tower that is fine-tuned (its text tower stays frozen):

* **cross-frame communication**: in every block, each frame's CLS (on the residual stream) becomes a
  message token (``message_fc``); the T messages of a video exchange information by self-attention
  (``msg + message_attn(message_ln(msg))``) and each frame's message is appended to that frame's
  tokens for the block's spatial attention, then dropped (the backbone's ``attn_tokens`` hook);
* **multi-frame integration transformer (MIT)**: the per-frame image embeddings (final norm and CLIP
  projection of the CLS) plus a temporal position embedding go through 1 transformer block;
  the video embedding is ``mean_t(x + MIT(x + pos))``;
* **video-specific prompting**: the patch tokens of the last block (no CLS) -> LayerNorm ->
  ``@ prompts_visual_proj`` (D x E, N(0, 1) at init) -> mean over frames; the class text
  embeddings cross-attend them in a 2-layer generator whose output is added with a learned
  per-channel scale ``alpha`` (0.1 at init): ``text + alpha * generator(text, visual)``.

Logits: ``exp(logit_scale) * cos(video, text_c)`` with CLIP's (frozen) temperature, per video, since
the class texts depend on the video. The class text is the class name alone (``"{}"``); its raw
(unnormalised) embedding feeds the generator, as in the official code and transformers.

Trained: the image tower (at ``backbone_lr``, 10x below the new modules' ``lr``, as the official
optimizer), the message modules, the MIT and the prompt modules; ``freeze_visual`` keeps the
tower frozen, ``train_text`` fine-tunes the text tower too (the official ``MODEL.FIX_TEXT False``).

On a backbone loaded from a transformers ``XCLIPModel`` (``hf-xclip:...``, ``adaptvid.load_xclip``)
the new modules start from that checkpoint's weights instead of the official init.

Differences from the official code: the visual tokens are averaged over frames before the
(linear) prompt projection instead of after (same result, 8x fewer FLOPs for that step); the
message modules' weights get no weight decay (adaptvid skips decay on parameters named ``*token*``,
and they sit at the ``attn_tokens`` hook); stochastic depth (0 in the official K400 config) is not offered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Optional, Sequence

import torch
from torch import nn

from ..text import TextClassifier, check_templates, encode_class_prompts
from ._xclip_modules import MessageToken, MultiFrameIntegration, VideoSpecificPrompt, scaled_cosine_per_video
from .registry import register_method

NAME_ONLY = "{}"


@dataclass
class XClipConfig:
    mit_layers: int = field(default=1, metadata={"help": "blocks of the multi-frame integration transformer (1)"})
    mit_heads: int = field(default=8, metadata={"help": "attention heads of the MIT (8: embed dim / 64 on B/16)"})
    vsp_layers: int = field(default=2, metadata={"help": "layers of the video-specific prompt generator (2)"})
    vsp_heads: int = field(default=8, metadata={"help": "cross-attention heads of the prompt generator (8)"})
    vsp_alpha: float = field(default=0.1, metadata={"help": "initial value of the prompt generator's learned scale"})
    class_template: str = field(default=NAME_ONLY, metadata={
        "help": "how a class name becomes its text; X-CLIP uses the name alone ('{}')"})
    freeze_visual: bool = field(default=False, metadata={
        "help": "keep the CLIP image tower frozen (train only X-CLIP's new modules); default: fine-tune it"})
    train_text: bool = field(default=False, metadata={
        "help": "fine-tune the CLIP text tower too (at backbone_lr); default frozen, as the paper"})

    def __post_init__(self) -> None:
        for name in ("mit_layers", "mit_heads", "vsp_layers", "vsp_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"x-clip {name} must be >= 1, got {getattr(self, name)}")
        check_templates(self.class_template)


class XClipVideoEncoder(nn.Module):
    """Runs the tower (message tokens in its slots), returns (MIT video embedding, averaged visual tokens)."""

    # How the readout uses backbone.head (methods/_readout.py): on every frame's CLS, projected.
    head_projection = True

    def __init__(self, width: int, embed_dim: int, num_frames: int, mit_layers: int, mit_heads: int) -> None:
        super().__init__()
        self.out_dim = embed_dim
        self.mit = MultiFrameIntegration(num_frames, embed_dim, mit_layers, mit_heads)
        self.prompts_visual_ln = nn.LayerNorm(width)
        self.prompts_visual_proj = nn.Parameter(torch.randn(width, embed_dim))

    def forward(self, video: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = model.backbone
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        tokens, _ = backbone.forward_tokens(frames, backbone.context(t))
        frame_embeddings = backbone.head(tokens[:, 0]).reshape(b, t, -1)
        embedding = self.mit(frame_embeddings)
        patches = self.prompts_visual_ln(tokens[:, backbone.num_prefix_tokens:])
        # mean over frames, then the linear projection: the official order reversed, same result, fewer FLOPs
        visual = patches.reshape(b, t, *patches.shape[1:]).mean(dim=1) @ self.prompts_visual_proj.to(patches.dtype)
        return embedding, visual


class XClipClassifier(TextClassifier):
    """Cosine logits against class texts made video-specific by the prompt generator.

    ``logits(video, texts, aux)`` takes raw text embeddings (N, E) and the video encoder's visual
    tokens (B, L, E) as ``aux``; ``forward(embedding, aux)`` uses the cached class embeddings.
    Built without class names (``adaptvid.load_xclip`` without ``class_names``) it still scores
    arbitrary texts through ``VideoModel.text_logits``; ``adaptvid.set_classes`` gives it classes.
    """

    def __init__(self, text, class_names: Optional[Sequence[str]], templates: Sequence[str] = (NAME_ONLY,),
                 prompt=None, fixed_logit_scale=None, *, generator: VideoSpecificPrompt) -> None:
        super().__init__(text, list(class_names or [""]), templates, prompt=prompt, fixed_logit_scale=fixed_logit_scale)
        self.class_names = list(class_names or [])
        self.prompts_generator = generator
        self._frozen_key = None   # versions of the frozen text weights the cached class texts were made with

    def encode_classes(self) -> torch.Tensor:
        """(C, E) raw class text embeddings (the generator needs them unnormalised); with several templates,
        their mean. Cached by ``class_embeddings`` while the text side is frozen."""
        if not self.class_names:
            raise ValueError("this X-CLIP model has no class names: score texts with model.text_logits(video, texts) "
                             "or give it classes with adaptvid.set_classes(model, names)")
        return encode_class_prompts(self.text, self.class_names, self.templates, normalize=False)

    def class_embeddings(self) -> torch.Tensor:
        """The cached class texts, also re-encoded when a *frozen* text weight changed in place (weights
        loaded into the tower after a forward): the base class watches only the trainable ones."""
        scale = self.text.logit_scale
        frozen = tuple((id(p), p._version) for p in self.text.parameters() if not p.requires_grad and p is not scale)
        if self._frozen_key != frozen:
            self._cache, self._frozen_key = None, frozen
        return super().class_embeddings()

    def logits(self, video: torch.Tensor, texts: torch.Tensor, aux=None) -> torch.Tensor:
        if aux is None:
            raise ValueError("x-clip's classifier needs the video's visual tokens (the video encoder's aux output)")
        texts = texts.to(video.dtype).unsqueeze(0).expand(video.shape[0], -1, -1)
        texts = texts + self.prompts_generator(texts, aux.to(video.dtype))
        return scaled_cosine_per_video(video, texts, self.logit_scale().to(video.device))

    def forward(self, video: torch.Tensor, aux=None) -> torch.Tensor:
        return self.logits(video, self.class_embeddings(), aux)


@register_method(
    "x-clip", XClipConfig, family="combination", aliases=("xclip",), claims=("readout", "frames"), needs_text=True,
    paper="Ni et al., Expanding Language-Image Pretrained Models for General Video Recognition (X-CLIP), ECCV 2022",
    help="cross-frame message tokens + multi-frame integration transformer + video-specific text prompts; "
         "image tower fine-tuned, text tower frozen",
)
def apply_xclip(model, config: XClipConfig) -> None:
    from ._text_heads import check_no_text_classifier

    # Its classifier (video-specific prompts) would silently replace another method's.
    check_no_text_classifier(model, "x-clip", " (video-specific prompts on its class texts)")
    backbone = model.backbone
    text = model.use_text()
    embed_dim = text.embed_dim
    for slot in backbone.slots:
        slot.add("attn_tokens", "x_clip", MessageToken(backbone.width, backbone.num_heads))
    model.set_video_encoder(XClipVideoEncoder(backbone.width, embed_dim, model.num_frames, config.mit_layers,
                                              config.mit_heads))
    generator = VideoSpecificPrompt(embed_dim, config.vsp_layers, config.vsp_heads, config.vsp_alpha)
    classifier = partial(XClipClassifier, generator=generator)
    if model.class_names:
        model.set_text_classifier((config.class_template,), classifier_cls=classifier)
    else:  # no classes yet (a loaded X-CLIP used on free text): the same classifier, classes given later
        model.head = classifier(text, None, (config.class_template,))
    if not config.freeze_visual:
        backbone.tower.requires_grad_(True)
    if config.train_text:
        text.requires_grad_(True)
