"""CLIP zero-shot head and the CLIP image classifier (tiny-clip, offline): the fine-tuned model
starts exactly at the zero-shot model, only LoRA factors train, and offline loads fail clearly."""
from __future__ import annotations

import time
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F

from fedcore import lora
from fedcore.models import clip as C
from fedcore.models.hf_text import ModelLoadError

CLASSES = ["cat", "dog", "red_car", "owl"]


def _pixels(n=3, size=32, seed=1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _mcfg(tuning="lora", r=4, prompt=None, scale=100.0, targets=None):
    lora = SimpleNamespace(r=r, alpha=8.0, dropout=0.1, target_modules=targets, resident_rank=r)
    return SimpleNamespace(name=C.TINY_CLIP, tuning=tuning, lora=lora, prompt=prompt, logit_scale=scale)


def test_zero_shot_logits_are_scaled_cosines_of_the_two_towers():
    zs = C.ImageZeroShot(template="an image of a {}.", scale=50.0)
    assert zs.prompts(CLASSES)[2] == "an image of a red car."
    pix = _pixels()
    logits = zs.logits(pix, CLASSES)
    assert logits.shape == (3, 4) and logits.dtype == torch.float32
    with torch.no_grad():  # by hand: CLIP's own preprocessing and the two encoders
        x = (pix.float() / 255 - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) \
            / torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        img = zs.model.encode_image(x)
        txt = zs.model.encode_text(open_clip.tokenize([f"an image of a {c.replace('_', ' ')}." for c in CLASSES]))
        cos = F.cosine_similarity(img[:, None, :], txt[None, :, :], dim=-1)
    torch.testing.assert_close(logits, 50.0 * cos, atol=1e-4, rtol=0)
    assert logits.std() > 0.1  # distinct classes, not a constant


def test_tiny_clip_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = C.load_clip(C.TINY_CLIP), C.load_clip(C.TINY_CLIP)
    assert torch.equal(torch.rand(3), expected)
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n
    assert a.image_size == (32, 32) and a.mean == tuple(open_clip.OPENAI_DATASET_MEAN)


def test_split_attention_computes_what_multihead_attention_does():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    split = C.SplitAttention(mha)
    with torch.no_grad():
        torch.testing.assert_close(split(x, x, x)[0], mha(x, x, x, need_weights=False)[0], atol=1e-6, rtol=0)
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # MHA's convention: True = may not attend
        additive = torch.randn(4, 5, 5)  # per sample and head
        for mask in (causal, additive):
            torch.testing.assert_close(split(x, x, x, attn_mask=mask)[0],
                                       mha(x, x, x, need_weights=False, attn_mask=mask)[0], atol=1e-6, rtol=0)
        seq_first = torch.nn.MultiheadAttention(16, 2).eval()
        xs = x.transpose(0, 1)
        torch.testing.assert_close(C.SplitAttention(seq_first)(xs, xs, xs)[0], seq_first(xs, xs, xs)[0],
                                   atol=1e-6, rtol=0)
    assert [n for n, _ in split.named_children()] == ["q_proj", "k_proj", "v_proj", "out_proj"]


def test_lora_classifier_starts_at_zero_shot_and_trains_only_lora_factors():
    pix, labels = _pixels(n=6, seed=2), torch.tensor([0, 1, 2, 3, 0, 1])
    teacher = C.ImageZeroShot(C.TINY_CLIP, "a photo of a {}.", 100.0).logits(pix, CLASSES)
    torch.manual_seed(0)
    model = C.build_clip_classifier(_mcfg(), CLASSES).train()  # dropout on: B = 0 still gives zero-shot
    logits = model({"pixels": pix})
    torch.testing.assert_close(logits, teacher, atol=1e-5, rtol=0)

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 3 * 2  # (A, B) x (q, k, v) x 2 blocks
    assert all(("lora_A." in n or "lora_B." in n) and ".attn." in n for n in trainable)
    name = "visual.base_model.model.transformer.resblocks.0.attn.q_proj.lora_A.default.weight"
    assert trainable[name].shape == (4, 64) and trainable[name.replace("lora_A", "lora_B")].shape == (64, 4)
    assert not any("token_embedding" in n or n.startswith("text") for n, _ in model.named_parameters())
    params, layers = dict(model.named_parameters()), lora.lora_layers(trainable)  # the engine's view
    assert len(layers) == 6 and all(lora.base_weight_key(prefix) in params for prefix in layers)

    text_before = model.text_embeddings.clone()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD(list(trainable.values()), lr=0.1)
    F.cross_entropy(model({"pixels": pix}), labels).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = model({"pixels": pix})
    assert (after - teacher).abs().max() > 1e-3
    assert torch.equal(model.text_embeddings, text_before)
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_full_tuning_trains_every_visual_weight_and_prompt_and_scale_are_used():
    model = C.build_clip_classifier(_mcfg("full", prompt="art of a {}", scale=10.0), CLASSES)
    params = dict(model.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    assert all(n.startswith("visual.") for n in params) and "visual.conv1.weight" in params
    pix = _pixels()
    teacher = C.ImageZeroShot(template="art of a {}", scale=10.0).logits(pix, CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(model({"pixels": pix}), teacher, atol=1e-5, rtol=0)


def test_other_input_sizes_are_resized_to_the_model():
    pix8 = _pixels(n=2, size=8)
    model = C.build_clip_classifier(_mcfg(), CLASSES).eval()
    with torch.no_grad():
        out = model({"pixels": pix8})
        up = F.interpolate(pix8.float(), size=(32, 32), mode="bilinear", align_corners=False)
        # the same images given at 32x32 (float values, as the wrapper sees them after resizing)
        x = (up / 255 - model.mean) / model.std
        ref = 100.0 * F.normalize(model.visual(x), dim=-1) @ model.text_embeddings.T
    assert out.shape == (2, 4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(C.ImageZeroShot().logits(pix8, CLASSES), out, atol=1e-5, rtol=0)


def test_head_tuning_and_bad_ranks_and_names_are_refused():
    with pytest.raises(ValueError, match="head"):
        C.build_clip_classifier(_mcfg("head"), CLASSES)
    with pytest.raises(ValueError, match="rank 65 is above the width 64"):
        C.build_clip_classifier(_mcfg(r=65), CLASSES)
    with pytest.raises(ValueError, match="match no linear layer"):
        C.build_clip_classifier(_mcfg(targets=["nope"]), CLASSES)
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Q-99'.*tiny-clip"):
        C.load_clip("clip:ViT-Q-99/openai")
    with pytest.raises(ValueError, match="no pretrained tag 'nosuchtag'.*openai"):
        C.load_clip("clip:ViT-B-16/nosuchtag")
    with pytest.raises(ValueError, match="clip:<open_clip arch>/<pretrained tag>"):
        C.load_clip("clip:ViT-B-16")
    assert C.is_clip("tiny-clip") and C.is_clip("clip:ViT-B-16/openai") and not C.is_clip("tiny-vit")
    assert C.clip_lora_width("tiny-clip") == 64 and C.clip_lora_width("clip:ViT-B-16/openai") == 768


def test_pretrained_load_offline_fails_fast_naming_tiny_clip(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"'clip:ViT-B-16/openai'.*tiny-clip"):
        C.load_clip("clip:ViT-B-16/openai")
    with pytest.raises(ModelLoadError, match="tiny-clip"):
        C.ImageZeroShot("clip:ViT-B-32/laion2b_s34b_b79k")
    # offline mode not declared, hub host unresolvable: no 45 s of retries either
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    with pytest.raises(ModelLoadError, match="tiny-clip"):
        C.load_clip("clip:ViT-B-16/openai")
    assert time.perf_counter() - start < 5


def test_cached_pretrained_weights_load_without_the_hub(monkeypatch):
    import huggingface_hub

    seen = {}

    def fake_create_model(arch, pretrained=None, **kw):  # a tiny stand-in for the 150M-parameter model
        seen.update(arch=arch, pretrained=pretrained, **kw)
        return open_clip.model.CLIP(**C.TINY_CFG)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, f: f"/cache/{repo}/{f}" if f.endswith(".safetensors") else None)
    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    clip = C.load_clip("clip:ViT-B-16/openai")
    assert seen["pretrained"] == "/cache/timm/vit_base_patch16_clip_224.openai/open_clip_model.safetensors"
    assert seen["arch"] == "ViT-B-16" and seen["force_quick_gelu"] is True and seen["require_pretrained"]
    assert clip.mean == (0.48145466, 0.4578275, 0.40821073) and clip.image_size == (32, 32)
    assert isinstance(clip.model.visual.transformer.resblocks[0].attn, C.SplitAttention)
