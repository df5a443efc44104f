"""CLIP4Clip's similarity headers (meanP, seqLSTM, seqTransf, tightTransf) and X-Pool's text-conditioned pooling."""
import math

import pytest
import torch
import torch.nn.functional as F

import adaptvid
from adaptvid.methods.clip4clip import normalised_mean, text_position_table
from adaptvid.methods.xpool import XPoolHead
from conftest import tiny_video

CLIP_BACKBONES = ("tiny-clip", "tiny-hf-clip")
HEADERS = ("meanP", "seqLSTM", "seqTransf")
FRAMES = 4
CAPTIONS = ["a square growing", "a red disc fading"]
CLASS_NAMES = ["square growing", "disc fading", "red turning blue"]

# CLIP ViT-B/32 (text width 512, 8 heads), counted from the official CLIP4Clip module definitions:
# TransformerClip(width=512, layers=4) + frame_position_embeddings = nn.Embedding(77, 512).
OFFICIAL_BLOCK = (3 * 512 * 512 + 3 * 512) + (512 * 512 + 512) + 2 * 512 + (512 * 2048 + 2048) + (2048 * 512 + 512) + 2 * 512
OFFICIAL_SEQTRANSF_B32 = 4 * OFFICIAL_BLOCK + 77 * 512
# X-Pool's Transformer(config) with embed_dim 512, 1 head: q/k/v/out_proj + linear_proj + three LayerNorms.
OFFICIAL_XPOOL_B32 = 5 * (512 * 512 + 512) + 3 * 2 * 512


def build(backbone, header="meanP", **options):
    # The tiny text towers have 2 blocks: the seqTransf header copies both.
    options = {"transf_layers": 2, **options}
    return adaptvid.build_model(backbone, "clip4clip", num_frames=FRAMES, sim_header=header, **options)


def infonce(logits):
    """Symmetric InfoNCE over a batch of matching (video i, caption i) pairs: (videos, captions) logits."""
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def run_text_block(text, index, x):
    """The text tower's own block ``index`` on ``x`` without the causal mask (library call)."""
    block = text.blocks[index]
    out = block(x, attn_mask=None) if text.library == "open_clip" else block(x, attention_mask=None)
    return out[0] if isinstance(out, tuple) else out


# -- CLIP4Clip -------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
@pytest.mark.parametrize("header", HEADERS)
def test_headers_give_unit_video_embeddings_and_text_logits_without_class_names(backbone, header):
    model = build(backbone, header).eval()
    assert model.class_names is None and model.head is None      # retrieval: no text classifier
    assert not model.aggregator.text_conditioned
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        embedding = model.encode_video(video)
        assert embedding.shape == (2, model.embed_dim)
        torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
        logits = model.text_logits(video, CAPTIONS)
        texts = F.normalize(model.text.encode_texts(CAPTIONS), dim=-1)
    assert logits.shape == (2, len(CAPTIONS))
    torch.testing.assert_close(logits, model.text.logit_scale.exp() * embedding @ texts.t())
    with pytest.raises(RuntimeError, match="without classes"):
        model(video)


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_with_class_names_clip4clip_classifies_by_text(backbone):
    model = build(backbone, "seqTransf", class_names=CLASS_NAMES).eval()
    with torch.no_grad():
        assert model(tiny_video(frames=FRAMES)).shape == (2, 3)


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_meanp_is_the_mean_of_normalised_frame_embeddings(backbone):
    model = build(backbone, "meanP").eval()
    assert not list(model.aggregator.parameters())
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        frames = model.encode_frames(video)
        frames = frames / frames.norm(dim=-1, keepdim=True)
        mean = frames.mean(dim=1)
        torch.testing.assert_close(model.encode_video(video), mean / mean.norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_seqtransf_at_init_is_the_text_blocks_without_causal_mask_plus_residual(backbone):
    """The official init copies the text blocks and positions: the header computes x + text_blocks(x + pos)
    (then the normalised mean). That is not the identity, and need not be."""
    model = build(backbone, "seqTransf").eval()
    header, text = model.aggregator, model.text
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        frames = model.encode_frames(video)
        # the tiny towers' frame width (32) differs from their text width (64): linear maps wrap the blocks
        assert (header.proj_in is None) == (frames.shape[-1] == text.width)
        h = frames if header.proj_in is None else header.proj_in(frames)
        h = h + text_position_table(text)[:FRAMES]
        for i in range(text.depth):
            h = run_text_block(text, i, h)
        h = h if header.proj_out is None else header.proj_out(h)
        expected = normalised_mean(frames + h)
        torch.testing.assert_close(model.encode_video(video), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(expected, normalised_mean(frames), atol=1e-3)   # not the identity at init


def test_seqlstm_at_init_is_lstm_plus_residual_not_the_identity():
    model = build("tiny-clip", "seqLSTM").eval()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        frames = model.encode_frames(video)
        expected = normalised_mean(frames + model.aggregator.lstm(frames)[0])
        torch.testing.assert_close(model.encode_video(video), expected)
        assert not torch.allclose(expected, normalised_mean(frames), atol=1e-3)


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_seqtransf_is_initialised_from_the_text_tower(backbone):
    model = build(backbone, "seqTransf", transf_layers=3)    # one block more than the tiny text tower has
    header, text = model.aggregator, model.text
    assert text.depth == 2 and len(header.blocks) == 3 and header.copied_layers == 2
    positions = text_position_table(text)
    assert header.frame_position_embeddings.weight.shape[0] == positions.shape[0] == 77
    assert torch.equal(header.frame_position_embeddings.weight, positions)
    assert header.frame_position_embeddings.weight.data_ptr() != positions.data_ptr()   # a copy, not shared
    for i in range(2):
        ours, theirs = header.blocks[i], text.blocks[i]
        if text.library == "open_clip":
            for name, tensor in theirs.state_dict().items():
                assert torch.equal(ours.state_dict()[name], tensor), (i, name)
        else:
            attn = theirs.self_attn
            pairs = [
                (ours.attn.in_proj_weight, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])),
                (ours.attn.in_proj_bias, torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])),
                (ours.attn.out_proj.weight, attn.out_proj.weight), (ours.attn.out_proj.bias, attn.out_proj.bias),
                (ours.ln_1.weight, theirs.layer_norm1.weight), (ours.ln_1.bias, theirs.layer_norm1.bias),
                (ours.ln_2.weight, theirs.layer_norm2.weight), (ours.ln_2.bias, theirs.layer_norm2.bias),
                (ours.mlp.c_fc.weight, theirs.mlp.fc1.weight), (ours.mlp.c_fc.bias, theirs.mlp.fc1.bias),
                (ours.mlp.c_proj.weight, theirs.mlp.fc2.weight), (ours.mlp.c_proj.bias, theirs.mlp.fc2.bias),
            ]
            for a, b in pairs:
                assert torch.equal(a, b), i
        assert ours.attn.num_heads == (theirs.attn.num_heads if text.library == "open_clip" else theirs.self_attn.num_heads)
        assert all(p.requires_grad for p in ours.parameters())
    extra = header.blocks[2]   # beyond the text tower: the official init_weights
    assert torch.equal(extra.ln_1.weight, torch.ones_like(extra.ln_1.weight)) and not extra.mlp.c_fc.bias.any()
    assert abs(extra.mlp.c_fc.weight.std().item() - 0.02) < 0.004


@pytest.mark.parametrize("header", HEADERS)
def test_frame_mask_leaves_padded_frames_out(header):
    model = build("tiny-clip", header).eval()
    aggregate = model.aggregator
    with torch.no_grad():
        frames = model.encode_frames(tiny_video(frames=FRAMES))
        ones = torch.ones(2, FRAMES, dtype=torch.bool)
        torch.testing.assert_close(aggregate(frames, ones), aggregate(frames))            # default: all valid
        mask = ones.clone()
        mask[0, 3] = False                                                                 # a padded last frame
        masked = aggregate(frames, mask)
        torch.testing.assert_close(masked[0], aggregate(frames[:1, :3])[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(masked[1], aggregate(frames)[1], rtol=1e-5, atol=1e-6)
        changed = frames.clone()
        changed[0, 3] = 100 * torch.randn(frames.shape[-1])                                # its content is ignored
        torch.testing.assert_close(aggregate(changed, mask), masked, rtol=1e-5, atol=1e-6)
        gap = ones.clone()
        gap[0, 1] = False                                                                  # an unreadable middle frame
        if header != "seqTransf":   # positions are per slot, so only the order-only headers equal the compacted clip
            torch.testing.assert_close(aggregate(frames, gap)[0], aggregate(frames[:1, [0, 2, 3]])[0],
                                       rtol=1e-5, atol=1e-6)
        changed = frames.clone()
        changed[0, 1] = 100 * torch.randn(frames.shape[-1])
        torch.testing.assert_close(aggregate(changed, gap), aggregate(frames, gap), rtol=1e-5, atol=1e-6)
        none = ones.clone()
        none[0] = False                                                                    # nothing readable
        out = aggregate(frames, none)
        assert torch.isfinite(out).all() and not out[0].any()
        torch.testing.assert_close(out[1], aggregate(frames)[1], rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="frame_mask"):
            aggregate(frames, ones[:, :2])


def test_seqtransf_parameter_count_on_vit_b32_matches_the_official_modules():
    assert OFFICIAL_BLOCK == 3_152_384 and OFFICIAL_SEQTRANSF_B32 == 12_648_960
    model = adaptvid.build_model("clip-b32", "clip4clip", weights="random", sim_header="seqTransf")
    header = model.aggregator
    assert header.proj_in is None and header.proj_out is None        # E = W = 512 on ViT-B/32
    count = sum(p.numel() for p in header.parameters())
    assert abs(count - OFFICIAL_SEQTRANSF_B32) <= 0.02 * OFFICIAL_SEQTRANSF_B32
    assert count == OFFICIAL_SEQTRANSF_B32
    assert [sum(p.numel() for p in b.parameters()) for b in header.blocks] == [OFFICIAL_BLOCK] * 4
    assert all(p.requires_grad for p in header.parameters())
    assert header.blocks[0].attn.num_heads == 8
    assert torch.equal(header.blocks[3].mlp.c_proj.weight, model.text.blocks[3].mlp.c_proj.weight)


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
@pytest.mark.parametrize("header", HEADERS)
def test_one_infonce_step_trains_the_header_and_both_towers(backbone, header):
    model = build(backbone, header).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.aggregator.named_parameters()}
    loss = infonce(model.text_logits(tiny_video(frames=FRAMES), CAPTIONS))       # 2 videos x 2 captions
    loss.backward()
    for name, p in model.aggregator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.text.logit_scale.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.tower.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text.blocks[0].parameters())
    torch.optim.AdamW(trainable, lr=1e-3).step()
    for name, p in model.aggregator.named_parameters():
        assert not torch.equal(p, before[name]), name


def test_clip4clip_config_is_checked():
    with pytest.raises(ValueError, match="sim_header"):
        build("tiny-clip", "crossTransf")
    with pytest.raises(ValueError, match="transf_layers"):
        adaptvid.build_model("tiny-clip", "clip4clip", transf_layers=0)
    with pytest.raises(ValueError, match="cross_text_chunk"):
        adaptvid.build_model("tiny-clip", "clip4clip", sim_header="tightTransf", cross_text_chunk=0)


def test_frozen_towers_leave_only_the_header_and_logit_scale():
    model = build("tiny-clip", "seqLSTM", train_visual=False, train_text=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"aggregator.{n}" for n, _ in model.aggregator.named_parameters()} | {"text.logit_scale"}


# -- CLIP4Clip tightTransf (the cross-modal header) -------------------------------------

# CLIP ViT-B/32, counted from the official definitions (modules/modeling.py, module_cross.py, cross-base config
# with max_position_embeddings set to CLIP's context length 77 and cross_num_hidden_layers 4):
# cross.embeddings.position_embeddings nn.Embedding(77, 512) (token types are commented out there) +
# cross.transformer 4 ResidualAttentionBlock(512, 8) + cross.pooler (ln_pool, dense 512 -> 512) +
# similarity_dense nn.Linear(512, 1).
OFFICIAL_TIGHT_B32 = 77 * 512 + 4 * OFFICIAL_BLOCK + (2 * 512 + 512 * 512 + 512) + (512 + 1)


def build_tight(backbone="tiny-clip", **options):
    return build(backbone, "tightTransf", **options)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def slow_cross_pair(header, text, frames):
    """tightTransf written out for one (text (E,), valid frames (T', E)) pair, no mask (eval: no dropout)."""
    x = torch.cat([text[None], frames])
    x = x if header.proj_in is None else header.proj_in(x)
    x = (x + header.position_embeddings.weight[:len(x)])[None]
    for block in header.blocks:
        x = block(x)
    first = F.layer_norm(x[0], (x.shape[-1],), header.pool_norm.weight, header.pool_norm.bias, eps=1e-12)[0]
    return header.similarity_dense(quick_gelu(header.pool_dense(first)))[0]


def perturbed_tight_header(model):
    header = model.aggregator
    with torch.no_grad():
        for p in header.parameters():     # away from the official init (zero biases, unit norms) so every tensor matters
            p.add_(0.1 * torch.randn_like(p))
    return header


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_tighttransf_scores_each_text_with_each_video_through_the_cross_encoder(backbone):
    torch.manual_seed(0)
    model = build_tight(backbone).eval()
    header = perturbed_tight_header(model)
    assert header.text_conditioned and not model.cacheable() and header.copied_layers == 2
    assert not model.text.logit_scale.requires_grad        # the official score never uses it
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        frames = model.encode_frames(video)
        texts = model.text.encode_texts(CAPTIONS + ["a third caption"])
        scores = header.score(frames, texts)
        assert scores.shape == (3, 2)
        for n in range(3):
            for v in range(2):
                torch.testing.assert_close(scores[n, v], slow_cross_pair(header, texts[n], frames[v]),
                                           rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(header.score(frames, texts, logit_scale=torch.tensor(3.0)), scores)   # unscaled
        torch.testing.assert_close(model.text_logits(video, CAPTIONS + ["a third caption"]), scores.t())
        embedding = model.encode_video(video)                 # no text: the meanP fallback, a unit vector
        torch.testing.assert_close(embedding, normalised_mean(frames))
    with pytest.raises(ValueError, match="no class names"):
        model(video)
    adaptvid.set_classes(model, CLASS_NAMES)
    with torch.no_grad():
        classes = model.text.encode_texts(CLASS_NAMES)
        torch.testing.assert_close(model(video), header.score(frames, classes).t(), rtol=1e-5, atol=1e-5)


def test_tighttransf_padded_frames_are_left_out_of_the_keys():
    torch.manual_seed(1)
    model = build_tight().eval()
    header = perturbed_tight_header(model)
    with torch.no_grad():
        frames = model.encode_frames(tiny_video(frames=FRAMES))
        texts = model.text.encode_texts(CAPTIONS)
        ones = torch.ones(2, FRAMES, dtype=torch.bool)
        torch.testing.assert_close(header.score(frames, texts, frame_mask=ones), header.score(frames, texts))
        mask = ones.clone()
        mask[0, 2:] = False                                                   # a clip of 2 frames, padded to 4
        masked = header.score(frames, texts, frame_mask=mask)
        for n in range(2):
            torch.testing.assert_close(masked[n, 0], slow_cross_pair(header, texts[n], frames[0, :2]),
                                       rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(masked[:, 1], header.score(frames, texts)[:, 1], rtol=1e-5, atol=1e-6)
        changed = frames.clone()
        changed[0, 2:] = 100 * torch.randn(2, frames.shape[-1])               # padded content is ignored
        torch.testing.assert_close(header.score(changed, texts, frame_mask=mask), masked, rtol=1e-5, atol=1e-6)
        gap = ones.clone()
        gap[1, 1] = False                                                     # an unreadable middle frame
        changed = frames.clone()
        changed[1, 1] = 100 * torch.randn(frames.shape[-1])
        torch.testing.assert_close(header.score(changed, texts, frame_mask=gap), header.score(frames, texts, frame_mask=gap),
                                   rtol=1e-5, atol=1e-6)
        none = ones.clone()
        none[0] = False                                                       # nothing readable: the text alone
        out = header.score(frames, texts, frame_mask=none)
        assert torch.isfinite(out).all()
        for n in range(2):
            torch.testing.assert_close(out[n, 0], slow_cross_pair(header, texts[n], frames[0, :0]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(header(frames, mask)[0], normalised_mean(frames[:1, :2])[0])   # the fallback too
        with pytest.raises(ValueError, match="frame_mask"):
            header.score(frames, texts, frame_mask=ones[:, :2])


def test_tighttransf_chunked_scoring_equals_unchunked():
    from adaptvid.tasks.retrieval import RetrievalTask

    torch.manual_seed(2)
    model = build_tight(cross_text_chunk=2).eval()
    header = perturbed_tight_header(model)
    frames, texts = torch.randn(3, FRAMES, model.embed_dim), torch.randn(5, model.embed_dim)
    mask = torch.ones(3, FRAMES, dtype=torch.bool)
    mask[2, 1:] = False
    with torch.no_grad():
        chunked = header.score(frames, texts, frame_mask=mask)
        header.text_chunk = 100
        whole = header.score(frames, texts, frame_mask=mask)
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
        header.text_chunk = 1
        torch.testing.assert_close(header.score(frames, texts, frame_mask=mask), whole, rtol=1e-6, atol=1e-6)
        # the retrieval evaluation's own row chunks (rows of 2 captions) give the same matrix
        evaluated = RetrievalTask().similarity(model, {"frames": frames, "text": texts, "video": frames[:, 0]}, chunk=2)
        torch.testing.assert_close(evaluated, header.score(frames, texts), rtol=1e-6, atol=1e-6)


def test_tighttransf_parameter_count_on_vit_b32_matches_the_official_modules():
    assert OFFICIAL_TIGHT_B32 == 12_913_153
    model = adaptvid.build_model("clip-b32", "clip4clip", weights="random", sim_header="tightTransf")
    header = model.aggregator
    assert header.proj_in is None                                           # E = W = 512 on ViT-B/32
    assert sum(p.numel() for p in header.parameters()) == OFFICIAL_TIGHT_B32
    assert header.position_embeddings.weight.shape == (77, 512) and header.blocks[0].attn.num_heads == 8
    assert [sum(p.numel() for p in b.parameters()) for b in header.blocks] == [OFFICIAL_BLOCK] * 4
    assert torch.equal(header.blocks[3].mlp.c_proj.weight, model.text.blocks[3].mlp.c_proj.weight)   # the official init
    assert torch.equal(header.position_embeddings.weight, model.text.positional_embedding)
    new = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("backbone.tower.", "text."))}
    assert new == {f"aggregator.{n}" for n, _ in header.named_parameters()}


def test_tighttransf_retrieval_training_lowers_the_loss_on_a_fixed_batch():
    from adaptvid.tasks.retrieval import RetrievalTask

    torch.manual_seed(3)
    model = build_tight().eval()   # the embeddings' dropout off: the same batch gives the same loss twice
    task = RetrievalTask()
    task.prepare(model)
    batch = {"video": tiny_video(batch=3, frames=FRAMES), "caption": CAPTIONS + ["blue turning red"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(8):
        loss = task.loss(model, batch, model)
        assert torch.isfinite(loss)
        optimiser.zero_grad()
        loss.backward()
        if not losses:   # the first step reaches the header and both towers
            for name, p in model.aggregator.named_parameters():
                if name == "similarity_dense.bias":   # adds the same to every score: softmax-invariant, zero gradient
                    assert p.grad is not None and p.grad.abs().max() < 1e-6
                    continue
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.tower.parameters())
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text.blocks[0].parameters())
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses   # 1.099 (log 3: scores start near 0) -> 0.94 measured


def test_tighttransf_frozen_towers_train_only_the_header():
    model = build_tight(train_visual=False, train_text=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"aggregator.{n}" for n, _ in model.aggregator.named_parameters()}


def test_tighttransf_refuses_a_second_text_classifier():
    with pytest.raises(ValueError, match="own text classifier"):
        adaptvid.build_model("tiny-clip", "coop,clip4clip", num_frames=FRAMES, class_names=CLASS_NAMES,
                             sim_header="tightTransf", transf_layers=2)


# -- X-Pool ----------------------------------------------------------------------------

def slow_xpool_pair(head, text, frames):
    """X-Pool written out for one (text (E,), video frames (T, E)) pair, head by head (eval: no dropout)."""
    attn = head.cross_attn
    t, f = head.layer_norm1(text), head.layer_norm1(frames)
    q, k, v = attn.q_proj(t), attn.k_proj(f), attn.v_proj(f)
    d = attn.head_dim
    outs = []
    for h in range(attn.heads):
        part = slice(h * d, (h + 1) * d)
        weights = torch.softmax(k[:, part] @ q[part] / math.sqrt(d), dim=0)     # over frames
        outs.append(weights @ v[:, part])
    a = head.layer_norm2(attn.out_proj(torch.cat(outs)))
    return head.layer_norm3(a + head.linear_proj(a))


def test_xpool_score_equals_a_slow_loop_over_pairs():
    torch.manual_seed(3)
    head = XPoolHead(16, heads=2, dropout=0.3, text_chunk=2)
    with torch.no_grad():
        for p in head.parameters():       # away from the identity init, so every projection matters
            p.add_(0.3 * torch.randn_like(p))
    head.eval()
    frames, texts = torch.randn(3, 5, 16), torch.randn(5, 16)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    with torch.no_grad():
        pooled = head.pool(frames, texts, frame_mask=mask)
        scores = head.score(frames, texts, frame_mask=mask)
        assert pooled.shape == (5, 3, 16) and scores.shape == (5, 3)
        for n in range(5):
            for v in range(3):
                ref = slow_xpool_pair(head, texts[n], frames[v][mask[v]])
                torch.testing.assert_close(pooled[n, v], ref, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(scores[n, v], F.cosine_similarity(texts[n], ref, dim=0),
                                           rtol=1e-5, atol=1e-5)
        scale = torch.tensor(2.0)
        torch.testing.assert_close(head.score(frames, texts, scale, frame_mask=mask), scale.exp() * scores)
        head.text_chunk = 100                                                       # chunking changes nothing
        torch.testing.assert_close(head.score(frames, texts, frame_mask=mask), scores, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(head(frames), frames.mean(dim=1))                # the text-agnostic fallback
        torch.testing.assert_close(head(frames, mask)[1], frames[1, :3].mean(dim=0))


def test_xpool_parameters_and_init_match_the_official_module():
    assert OFFICIAL_XPOOL_B32 == 1_316_352
    head = XPoolHead(512)
    assert sum(p.numel() for p in head.parameters()) == OFFICIAL_XPOOL_B32
    assert head.cross_attn.heads == 1 and head.dropout.p == 0.3
    for name, p in head.named_parameters():
        if "proj" in name:
            expected = torch.eye(512) if name.endswith("weight") else torch.zeros(512)
            assert torch.equal(p, expected), name


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_xpool_model_scores_text_conditioned_and_falls_back_to_the_mean(backbone):
    model = adaptvid.build_model(backbone, "x-pool", num_frames=FRAMES).eval()
    head = model.aggregator
    assert head.text_conditioned and not model.cacheable()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        frames = model.encode_frames(video)
        torch.testing.assert_close(model.encode_video(video), frames.mean(dim=1))
        texts = model.text.encode_texts(CAPTIONS)
        expected = head.score(frames, texts, model.text.logit_scale).t()
        torch.testing.assert_close(model.text_logits(video, CAPTIONS), expected)
    with pytest.raises(ValueError, match="no class names"):
        model(video)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    infonce(model.text_logits(video, CAPTIONS)).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.tower.parameters())
    torch.optim.AdamW(trainable, lr=1e-3).step()
    adaptvid.set_classes(model, CLASS_NAMES)
    with torch.no_grad():
        assert model.eval()(video).shape == (2, 3)


@pytest.mark.parametrize("method,options", [("clip4clip", {"sim_header": "seqTransf", "transf_layers": 2}),
                                            ("clip4clip", {"sim_header": "tightTransf", "transf_layers": 2}),
                                            ("x-pool", {})])
def test_a_trained_retrieval_model_reloads_exactly(method, options, tmp_path):
    from adaptvid.checkpoints import load_model

    model = adaptvid.build_model("tiny-clip", method, num_frames=FRAMES, **options).train()
    video = tiny_video(frames=FRAMES)
    infonce(model.text_logits(video, CAPTIONS)).backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.text_logits(video, CAPTIONS), model.eval().text_logits(video, CAPTIONS),
                                   rtol=0, atol=0)
