"""VideoModel: a backbone with methods injected, a temporal readout and a classifier."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..backbones import Backbone, FrameContext, create_backbone, merge_heads
from ..methods.registry import make_configs, split_method_names
from ..text import TextClassifier, make_text_encoder, scaled_cosine

POOLS = ("embed-mean", "token-mean")


class VideoModel(nn.Module):
    """Video classifier over an image backbone.

    Input: float video ``(B, C, T, H, W)`` normalised with ``backbone.preprocess``.
    ``forward`` gives class logits ``(B, num_classes)``; ``encode_video`` the
    ``(B, D)`` video embedding.

    ``pool`` chooses the readout: ``"embed-mean"`` averages the per-frame image
    embeddings (CLS -> final norm -> projection, then mean over time);
    ``"token-mean"`` averages the CLS tokens over time first and applies the
    final norm and projection once (ST-Adapter's readout). ``project=False``
    stops at the final norm (width D instead of the joint-space width).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: Optional[int],
        num_frames: int = 8,
        pool: str = "embed-mean",
        head_dropout: float = 0.0,
        project: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_frames = num_frames
        self.dropout = nn.Dropout(head_dropout)
        self._num_classes = num_classes
        self.decoder: Optional[nn.Module] = None
        self.video_encoder: Optional[nn.Module] = None
        self.aggregator: Optional[nn.Module] = None   # (B, T, E) frame embeddings -> (B, E); None = mean
        self.text: Optional[nn.Module] = None         # the CLIP text encoder, attached by use_text()
        self.class_names: Optional[list[str]] = None
        self.from_features = False  # forward() takes backbone_features instead of video (feature-cache training)
        self.new_lr_parameters: set[int] = set()  # ids of tower parameters trained at the new modules' rate
        # Training-time frame subsampling (Singularity): f(input, model) -> the input with fewer frames; eval sees all.
        self.train_frame_selector: Optional[Any] = None
        # Regularisers the trainer adds to the classification loss: f(model, inputs, labels) -> scalar
        # (Open-VCLIP's interpolated-weight loss). Plain Python loops call them the same way.
        self.extra_losses: list = []
        self.set_readout(pool, project)
        self.methods: list[tuple[str, Any]] = []   # (name, config) in the order applied
        backbone.views  # build the per-block slots now, so methods can fill them

    @property
    def num_classes(self) -> Optional[int]:
        return self._num_classes

    @property
    def embed_dim(self) -> int:
        if self.video_encoder is not None:
            return self.video_encoder.out_dim
        if self.decoder is not None:
            return self.decoder.out_dim
        return self.backbone.embed_dim if self.project else self.backbone.width

    def set_readout(self, pool: str, project: bool) -> None:
        """Choose the readout; (re)builds the linear head for the resulting embedding width."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if not project and isinstance(getattr(self, "head", None), TextClassifier):
            project = True   # a text classifier (set by an earlier method) compares in CLIP's joint space
        self.pool, self.project = pool, project
        self._build_head()

    def set_decoder(self, decoder: nn.Module) -> None:
        """Replace the readout by a video-level decoder over backbone layer outputs (EVL, side networks).

        ``decoder.layers``: the backbone layers (negative indices allowed) whose outputs it reads;
        ``decoder.out_dim``: its output width; it is called as
        ``decoder(layer_tokens, ctx, backbone) -> (B, out_dim)`` with one ``(B*T, L, D)`` tensor per layer.
        An optional ``decoder.qk_layers`` adds, after those, the attention queries of each of these
        blocks and then their keys, heads merged, ``(B*T, L, D)`` each — captured during the forward.
        """
        if self.decoder is not None or self.video_encoder is not None:
            raise ValueError("the model already has a decoder or video encoder; they cannot share one readout")
        self.decoder = decoder
        self._build_head()

    def set_aggregator(self, aggregator: nn.Module) -> None:
        """Replace the mean over frame embeddings by ``aggregator((B, T, E)) -> (B, E)`` (a temporal
        transformer: ActionCLIP, Text4Vis, Efficient-Prompt; a frame selector: ATP). The tower still runs
        per frame, so training from cached features stays possible."""
        if self.aggregator is not None:
            raise ValueError("the model already has a temporal aggregator; two methods cannot both replace the mean")
        self.aggregator = aggregator

    # -- the text side -----------------------------------------------------------
    def use_text(self):
        """The backbone's CLIP text encoder as a (frozen) submodule ``model.text``, created on first use."""
        if self.text is None:
            self.text = make_text_encoder(self.backbone)
        return self.text

    def set_text_classifier(self, templates=("{}",), prompt: Optional[nn.Module] = None,
                            fixed_logit_scale: Optional[float] = None, classifier_cls=None) -> None:
        """Classify by cosine similarity with the class texts instead of a linear head (see TextClassifier)."""
        text = self.use_text()
        if self.class_names is None:
            raise ValueError("a text classifier needs the class names: build_model(..., class_names=[...]) "
                             "or adaptvid adapt --classes FILE")
        if self.embed_dim != text.embed_dim:
            raise ValueError(f"the video embedding is {self.embed_dim} wide but the text embedding {text.embed_dim}: "
                             "a text classifier needs the projected readout (project=True)")
        self.head = (classifier_cls or TextClassifier)(text, self.class_names, templates, prompt=prompt,
                                                       fixed_logit_scale=fixed_logit_scale)

    def text_logits(self, video: torch.Tensor, texts=None, *, input_ids: Optional[torch.Tensor] = None,
                    attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scaled cosine similarity of each video with each text, ``(B, len(texts))``.

        ``texts``: a list of strings; or pre-tokenised ``input_ids`` (and ``attention_mask``), ``(N, L)``, for
        backbones whose tokenizer is not available offline. Methods that make the text depend on the video
        (X-CLIP's prompt generator) apply it here too.
        """
        text = self.use_text()
        if (texts is None) == (input_ids is None):
            raise ValueError("pass either texts=[...] or input_ids=... (with attention_mask)")
        if texts is not None:
            input_ids, attention_mask = text.tokenize(texts)
        embedding, aux = self._video_embedding(video)
        text_embeddings = text(input_ids, attention_mask)
        if isinstance(self.head, TextClassifier):
            return self.head.logits(embedding, text_embeddings, aux)
        return scaled_cosine(embedding, text_embeddings, text.logit_scale)

    def train_tower_parameters(self, *modules: nn.Module) -> None:
        """Unfreeze a few tower modules (e.g. the final norm) and train them at the new modules' learning
        rate, as the papers that train them do (not at the reduced ``backbone_lr`` of full fine-tuning)."""
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(True)
                self.new_lr_parameters.add(id(p))

    def set_video_encoder(self, encoder: nn.Module) -> None:
        """Replace the whole video encoding by ``encoder(video, model) -> (B, encoder.out_dim)``.

        For methods that run the tower themselves, on other inputs or several times (DualPath's
        two paths, DiST's dense-frame stream): the encoder calls ``model.backbone.forward_tokens``
        with contexts it builds (``backbone.context(t, tag=...)``). Not cacheable.
        """
        if self.video_encoder is not None or self.decoder is not None:
            raise ValueError("the model already has a decoder or video encoder; they cannot share one readout")
        self.video_encoder = encoder
        self._build_head()

    def _build_head(self) -> None:
        if isinstance(getattr(self, "head", None), TextClassifier):
            if self.embed_dim != self.head.text.embed_dim:
                raise ValueError(f"the new readout is {self.embed_dim} wide but the text classifier expects "
                                 f"{self.head.text.embed_dim}")
            return
        self.head = None
        if self._num_classes:
            self.head = nn.Linear(self.embed_dim, self._num_classes)
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def _check(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected a video batch (B, 3, T, H, W), got shape {tuple(video.shape)}")

    def _frames(self, video: torch.Tensor) -> tuple[torch.Tensor, FrameContext]:
        self._check(video)
        b, c, t, h, w = video.shape
        return video.transpose(1, 2).reshape(b * t, c, h, w), self.backbone.context(t)

    def _run_backbone(self, video: torch.Tensor, layers=(), qk_out=None, qk_layers=()):
        frames, ctx = self._frames(video)
        grad = torch.is_grad_enabled() and self._backbone_needs_grad()
        with torch.set_grad_enabled(grad):
            return self.backbone.forward_tokens(frames, ctx, return_layers=layers, qk_out=qk_out, qk_layers=qk_layers)

    def _backbone_needs_grad(self) -> bool:
        # Frozen towers with nothing trainable inside run without autograd (cheaper, no saved activations).
        return any(p.requires_grad for p in self.backbone.parameters())

    def frame_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """Final tokens of every frame, (B*T, L, D); frames folded into the batch."""
        return self._run_backbone(video)[0]

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame image embeddings, (B, T, embed_dim)."""
        b, t = video.shape[0], video.shape[2]
        cls = self.frame_tokens(video)[:, 0]
        return self.backbone.head(cls, self.project).reshape(b, t, -1)

    # -- what the readout consumes from the backbone, and the readout itself ---------------
    def backbone_features(self, video: torch.Tensor) -> torch.Tensor:
        """The backbone outputs the readout needs: CLS tokens (B, T, D), or, with a decoder,
        the chosen layers' tokens (B, layers, T, L, D). Cacheable when ``cacheable()``."""
        b, t = video.shape[0], video.shape[2]
        if self.decoder is None:
            return self.frame_tokens(video)[:, 0].reshape(b, t, -1)
        depth = self.backbone.depth
        layers = [i % depth for i in self.decoder.layers]
        qk_layers = [i % depth for i in getattr(self.decoder, "qk_layers", ())]
        qk: dict = {}
        _, taken = self._run_backbone(video, layers, qk, qk_layers)
        by_layer = dict(zip(sorted(set(layers)), taken))
        tensors = [by_layer[i] for i in layers]
        tensors += [merge_heads(qk[i][0]) for i in qk_layers] + [merge_heads(qk[i][1]) for i in qk_layers]
        return torch.stack([x.reshape(b, t, *x.shape[1:]) for x in tensors], dim=1)

    def readout(self, features: torch.Tensor) -> torch.Tensor:
        """Video embedding (B, embed_dim) from ``backbone_features``."""
        if self.decoder is not None:
            b, _, t = features.shape[:3]
            layer_tokens = [features[:, i].flatten(0, 1) for i in range(features.shape[1])]
            return self.decoder(layer_tokens, self.backbone.context(t), self.backbone)
        if self.pool == "embed-mean":
            frames = self.backbone.head(features, self.project)
            return frames.mean(dim=1) if self.aggregator is None else self.aggregator(frames)
        return self.backbone.head(features.mean(dim=1), self.project)

    def cacheable(self) -> bool:
        """True when the backbone is frozen and untouched, so its outputs can be computed once and reused."""
        b = self.backbone
        return (self.video_encoder is None and not self._backbone_needs_grad() and all(slot.is_empty() for slot in b.slots)
                and not len(b.before_pre_norm) and not len(b.after_embed))

    def _video_embedding(self, video: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(embedding, aux): a video encoder may return ``(embedding, aux)``, where aux is what its
        classifier needs besides the embedding (X-CLIP's visual tokens for its prompt generator)."""
        if self.video_encoder is not None:
            self._check(video)
            out = self.video_encoder(video, self)
            return out if isinstance(out, tuple) else (out, None)
        return self.readout(self.backbone_features(video)), None

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Video embedding, (B, embed_dim)."""
        return self._video_embedding(video)[0]

    def video_text_embeddings(self, video: torch.Tensor, input_ids: torch.Tensor,
                              attention_mask: Optional[torch.Tensor] = None):
        """``(video_embeddings (B, E), text_embeddings (N, E), frame_embeddings)`` for contrastive training and
        retrieval; ``frame_embeddings`` is ``(B, T, E)`` when the temporal aggregator is text-conditioned
        (``aggregator.text_conditioned``, X-Pool: it pools the frames once per text), else None."""
        text = self.use_text()
        embedding, frames = self.retrieval_video_embeddings(video)
        return embedding, text(input_ids, attention_mask), frames

    def retrieval_video_embeddings(self, video: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The video side of ``video_text_embeddings``: ``(embedding (B, E), frame_embeddings (B, T, E) or
        None)``; the frame embeddings come only for a text-conditioned aggregator, which scores each
        (text, video) pair from them (a search index keeps them to rerank its candidates)."""
        if getattr(self.aggregator, "text_conditioned", False):
            features = video if self.from_features else self.backbone_features(video)
            frames = self.backbone.head(features, self.project)
            return self.aggregator(frames), frames
        return (self.readout(video) if self.from_features else self._video_embedding(video)[0]), None

    def forward(self, video: torch.Tensor, input_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None):
        """Class logits. With ``from_features`` set, the input is ``backbone_features`` (cached training).
        With ``input_ids`` (tokenised texts): ``video_text_embeddings`` instead — one forward call, so a
        DDP-wrapped model synchronises the gradients of both towers in contrastive training."""
        if input_ids is not None:
            return self.video_text_embeddings(video, input_ids, attention_mask)
        if self.head is None:
            raise RuntimeError("this model was built without classes (num_classes=None): use encode_video")
        if self.training and self.train_frame_selector is not None:
            video = self.train_frame_selector(video, self)
        embedding, aux = (self.readout(video), None) if self.from_features else self._video_embedding(video)
        embedding = self.dropout(embedding)
        return self.head(embedding) if aux is None else self.head(embedding, aux)

    def forward_views(self, views: torch.Tensor) -> torch.Tensor:
        """Multi-view testing: ``(B, V, C, T, H, W)`` -> softmax scores averaged over views, (B, classes)."""
        b, v = views.shape[:2]
        logits = self(views.flatten(0, 1))
        return logits.softmax(dim=-1).reshape(b, v, -1).mean(dim=1)

    # -- checkpoints ------------------------------------------------------------
    # The checkpoint I/O lives one floor up (adaptvid.checkpoints); these methods are the
    # transformers / PEFT-style entry points to it, imported when called (an allowed upward call).
    def save_pretrained(self, directory, class_names=None, extra: Optional[dict] = None):
        """Write the trained tensors (``adapter.safetensors``) and ``adaptvid.json`` to ``directory``;
        ``VideoModel.from_pretrained(directory)`` rebuilds the model on its backbone weights."""
        from ..checkpoints import save_adapter

        return save_adapter(self, directory, class_names=class_names, extra=extra)

    save_adapter = save_pretrained   # adaptvid's original name

    @classmethod
    def from_pretrained(cls, directory_or_hub_id, weights: Optional[str] = None, **load_options) -> "VideoModel":
        """Load a checkpoint folder, or a Hugging Face Hub repository holding one (downloaded through
        ``huggingface_hub`` when the hub is reachable); same as ``adaptvid.load_model``."""
        from ..checkpoints import load_model

        return load_model(directory_or_hub_id, weights=weights, **load_options)

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: str = "Upload adaptvid checkpoint") -> str:
        """Save the checkpoint to a temporary folder and upload it to the Hub repository ``repo_id``."""
        from ..checkpoints import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message)


# Functions run on every model assemble_model builds, after its methods are applied: weight importers
# registered from above the model layer (adaptvid.checkpoints registers the transformers X-CLIP one,
# which fills the x-clip modules from an hf-xclip backbone's checkpoint). f(model) -> None.
WEIGHT_IMPORTERS: list = []


def register_weight_importer(importer) -> None:
    """Run ``importer(model)`` on every newly assembled model (idempotent per function)."""
    if importer not in WEIGHT_IMPORTERS:
        WEIGHT_IMPORTERS.append(importer)


def build_model(
    backbone: str | Backbone,
    method: str | list[str] = "frozen",
    num_classes: Optional[int] = None,
    *,
    class_names: Optional[list[str]] = None,
    weights: Optional[str] = None,
    num_frames: int = 8,
    pool: Optional[str] = None,
    project: Optional[bool] = None,
    head_dropout: float = 0.0,
    **method_options: Any,
) -> VideoModel:
    """Build a video model: backbone by name (or instance), methods by name (comma-separated or list).

    The backbone starts fully frozen; each method's injector adds its modules
    and unfreezes what its paper trains. Options go to the methods that have a
    field of that name (``adaptvid list`` shows them). ``class_names`` (their count sets ``num_classes``)
    are needed by methods that classify by text (ViFi-CLIP, prompt tuning, X-CLIP).
    """
    configs = make_configs(split_method_names(method), method_options)
    return assemble_model(backbone, configs, num_classes, class_names=class_names, weights=weights,
                          num_frames=num_frames, pool=pool, project=project, head_dropout=head_dropout)


def assemble_model(
    backbone: str | Backbone,
    configs: list,
    num_classes: Optional[int],
    *,
    class_names: Optional[list[str]] = None,
    weights: Optional[str] = None,
    num_frames: int = 8,
    pool: Optional[str] = None,
    project: Optional[bool] = None,
    head_dropout: float = 0.0,
) -> VideoModel:
    """Build from already-made ``[(MethodSpec, config)]`` pairs (used by build_model and load_model)."""
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class names were given")
        num_classes = len(class_names)
    bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone, weights=weights)
    bb.requires_grad_(False)
    model = VideoModel(bb, num_classes, num_frames=num_frames, head_dropout=head_dropout)
    model.class_names = class_names
    model.weights = None if isinstance(backbone, Backbone) else _weights_record(weights)
    for spec, config in configs:
        spec.apply(model, config)
        model.methods.append((spec.name, config))
    if project is False and isinstance(model.head, TextClassifier):
        raise ValueError(f"project=False cannot be used with {', '.join(n for n, _ in model.methods)}: its text "
                         "classifier compares videos and texts in CLIP's projected joint space")
    if pool is not None or project is not None:  # explicit choices override the methods' readout
        model.set_readout(pool or model.pool, model.project if project is None else project)
    if getattr(bb, "carries_method_weights", False):
        # A backbone loaded from a checkpoint that also holds method weights (transformers X-CLIP): the
        # importers live one floor up and register themselves when that package is imported.
        from .. import checkpoints  # noqa: F401
    for importer in WEIGHT_IMPORTERS:
        importer(model)
    return model


def _weights_record(weights) -> Optional[str]:
    """What a checkpoint records: None, 'random', or the local path made absolute (it may be reloaded elsewhere)."""
    if weights is None or str(weights) == "random":
        return None if weights is None else "random"
    return str(Path(weights).expanduser().resolve())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
