import pytest
import torch

from fedcore.resolve import make_config
from fedcore.models import build_model, count_params, trainable_names


def is_lora_or_head(name):
    return "lora_" in name or "classifier" in name


def test_minilm_loads_offline_and_lora_trains_only_adapters_and_head():
    cfg = make_config({}, **{"model.name": "minilm-l6", "model.lora.r": 8})
    model = build_model(cfg.model, num_classes=4)
    names = trainable_names(model)
    assert names and all(is_lora_or_head(n) for n in names), [n for n in names if not is_lora_or_head(n)]
    # query and value of all 6 layers get A and B; the head is trainable
    assert sum(".query.lora_A." in n for n in names) == 6
    assert sum(".value.lora_B." in n for n in names) == 6
    assert not any(".key." in n for n in names)
    assert any("classifier" in n for n in names)
    total, trainable = count_params(model)
    assert total > 22_000_000 and trainable == 12 * 8 * 384 * 2 + 384 * 4 + 4
    # pretrained: the word embeddings are MiniLM's, not a fresh init
    emb = model.model.base_model.model.bert.embeddings.word_embeddings.weight
    torch.manual_seed(0)
    fresh = build_model(make_config({}, **{"model.name": "minilm-l6", "model.init": "random"}).model, 4)
    assert not torch.equal(emb, fresh.model.base_model.model.bert.embeddings.word_embeddings.weight)


def test_distilbert_targets_q_lin_and_v_lin():
    cfg = make_config({}, **{"model.name": "tiny-distilbert", "model.lora.r": 4})
    names = trainable_names(build_model(cfg.model, num_classes=3))
    assert any(".q_lin.lora_A." in n for n in names) and any(".v_lin.lora_B." in n for n in names)
    assert not any(".k_lin." in n or ".out_lin." in n for n in names)


def test_full_and_head_tuning():
    full = build_model(make_config({}, **{"model.name": "tiny-bert", "model.tuning": "full"}).model, 2)
    assert count_params(full)[0] == count_params(full)[1]
    head = build_model(make_config({}, **{"model.name": "tiny-bert", "model.tuning": "head"}).model, 2)
    assert all(n.startswith("model.classifier") for n in trainable_names(head))


def test_lora_rank_above_layer_width_at_build_time():
    # the config check knows the catalogue's widths; the build checks the real layers, which is
    # what protects hub models whose width is only known once loaded
    from fedcore.config import LoraConfig

    mcfg = make_config({}, **{"model.name": "tiny-bert"}).model
    unchecked = mcfg.model_copy(update={"lora": LoraConfig(r=33)})
    with pytest.raises(ValueError, match=r"model\.lora: rank 33 is above the width 32"):
        build_model(unchecked, 2)


def test_textcnn_default_is_the_papers_size():
    model = build_model(make_config({}, **{"model.name": "textcnn"}).model, 4, vocab_size=20000)
    total, _ = count_params(model)
    assert 2_600_000 < total < 2_800_000
    logits = model({"input_ids": torch.ones(2, 2, dtype=torch.long)})  # shorter than the widest kernel
    assert logits.shape == (2, 4)


def test_unreachable_hub_model_gives_clear_error(monkeypatch):
    from fedcore.models.hf_text import ModelLoadError, load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config({}, **{"model.name": "someone/not-cached-model-xyz"})
    with pytest.raises(ModelLoadError, match=r"could not load 'someone/not-cached-model-xyz' from the Hugging Face hub.*Offline, use minilm-l6"):
        build_model(cfg.model, 2)
    with pytest.raises(ModelLoadError, match="Offline, use minilm-l6"):
        load_tokenizer("someone/not-cached-model-xyz")
