"""QEFFAutoModelForSequenceClassification: encoder and decoder classifiers give HF's logits (1e-5), padded or not.

Also: QEFFAutoModel takes any encoder-only architecture (not a fixed list) and `is_encoder` tells encoders
from causal LMs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
)

from QEfficient import QEFFAutoModel, QEFFAutoModelForSequenceClassification, validate
from QEfficient.transformers.models.registry import UnsupportedModelError, is_encoder
from tests.tiny_models import DECODER_CONFIGS, ENCODER_CONFIGS

TEXTS = [
    "I loved every minute of it.",
    "A considerably longer review, so that the batch is padded: the plot wanders and the ending drags on.",
    "meh",
]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def save_classifier(folder: Path, model_type: str, configs: dict, tokenizer_from: str, **extra) -> Path:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **configs[model_type], num_labels=3, id2label=LABELS, **extra)
    AutoModelForSequenceClassification.from_config(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return folder


def hf_logits(folder: Path, texts: list[str], padding: bool) -> np.ndarray:
    """HF's logits: one padded batch, or each text alone (no padding at all)."""
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    keep = ("input_ids", "attention_mask")  # the exported graph's inputs (GPT-2 would embed token_type_ids)
    with torch.no_grad():
        if padding:
            batch = tokenizer(texts, padding=True, return_tensors="pt")
            return hf(**{k: batch[k] for k in keep}).logits.numpy()
        alone = [tokenizer([t], return_tensors="pt") for t in texts]
        return np.concatenate([hf(**{k: b[k] for k in keep}).logits.numpy() for b in alone])


@pytest.mark.parametrize(
    ("model_type", "configs"),
    [("bert", ENCODER_CONFIGS), ("llama", DECODER_CONFIGS), ("gpt2", DECODER_CONFIGS)],
)
def test_classifier_matches_hf(model_type: str, configs: dict, tmp_path: Path, minilm_path: str) -> None:
    folder = save_classifier(tmp_path, model_type, configs, minilm_path)
    model = QEFFAutoModelForSequenceClassification.from_pretrained(folder)
    # gpt2's config has no pad_token_id: the tokenizer's is taken (a decoder classifies its last non-pad token)
    assert model.hf_model.config.pad_token_id == 0
    report = validate(model, sentences=TEXTS, seq_len=[8, 32])
    assert [s.stage for s in report.stages] == ["HF PyTorch", "transformed PyTorch", "ONNX Runtime", "compiled program"]
    assert report.passed, report.table()
    assert report.stages[-1].shape == (3, 3)

    alone = hf_logits(folder, TEXTS, padding=False)
    out = model.classify(TEXTS, batch_size=2)
    np.testing.assert_allclose(out.logits, alone, atol=1e-5, rtol=0)
    assert out.label_ids.tolist() == alone.argmax(-1).tolist()
    assert out.labels == [LABELS[i] for i in alone.argmax(-1)]
    single = model.classify(TEXTS[2])
    np.testing.assert_allclose(single.logits, alone[2:], atol=1e-5, rtol=0)


def test_decoder_right_padding_follows_the_mask(tmp_path: Path, minilm_path: str) -> None:
    """Rows padded with an id other than pad_token_id still classify their last valid token, as HF does
    when padded with the pad id."""
    folder = save_classifier(tmp_path, "llama", DECODER_CONFIGS, minilm_path)
    model = QEFFAutoModelForSequenceClassification.from_pretrained(folder)
    model.compile(seq_len=[16, 32], batch_size=4)
    batch = model.tokenizer(TEXTS, padding=True, return_tensors="np")
    expected = hf_logits(folder, TEXTS, padding=True)
    np.testing.assert_allclose(model.generate(batch)["logits"], expected, atol=1e-5, rtol=0)
    odd = dict(batch)
    odd["input_ids"] = np.where(batch["attention_mask"] == 1, batch["input_ids"], 7)
    np.testing.assert_allclose(model.generate(odd)["logits"], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.generate(odd, runtime="pytorch")["logits"], expected, atol=1e-5, rtol=0)
    rows = [list(r[m.astype(bool)]) for r, m in zip(batch["input_ids"], batch["attention_mask"])]
    np.testing.assert_allclose(model.classify(rows).logits, expected, atol=1e-5, rtol=0)


def test_decoder_without_pad_token_fails_clearly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", **{**DECODER_CONFIGS["llama"], "pad_token_id": None})
    model = QEFFAutoModelForSequenceClassification(AutoModelForSequenceClassification.from_config(config))
    with pytest.raises(ValueError, match="pad_token_id"):
        model.export()


def test_encoder_decoder_is_rejected(tmp_path: Path) -> None:
    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        QEFFAutoModelForSequenceClassification.from_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        QEFFAutoModel.from_pretrained(tmp_path)


def test_any_encoder_architecture_loads(tmp_path: Path) -> None:
    """ModernBERT is not among the test suite's encoder families; it loads and matches HF all the same."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "modernbert",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=128,
        pad_token_id=0,
    )
    from transformers import AutoModel

    AutoModel.from_config(config).save_pretrained(tmp_path)
    model = QEFFAutoModel.from_pretrained(tmp_path, pooling="mean")
    report = validate(model, sentences=[[5, 6, 7, 8, 9, 10], [11, 12], [20, 30, 40]], seq_len=[8])
    assert report.passed, report.table()


def test_is_encoder_decides_by_kind(tmp_path: Path) -> None:
    bert = tmp_path / "bert"
    AutoConfig.for_model("bert", **ENCODER_CONFIGS["bert"]).save_pretrained(bert)
    bert_decoder = tmp_path / "bert-decoder"
    AutoConfig.for_model("bert", **ENCODER_CONFIGS["bert"], is_decoder=True).save_pretrained(bert_decoder)
    llama = tmp_path / "llama"
    LlamaConfig(**DECODER_CONFIGS["llama"]).save_pretrained(llama)
    assert is_encoder(str(bert)) and not is_encoder(str(bert_decoder)) and not is_encoder(str(llama))
    with pytest.raises(UnsupportedModelError, match="QEFFAutoModelForCausalLM"):
        QEFFAutoModel.from_pretrained(llama)
    config = LlamaConfig(**{**DECODER_CONFIGS["llama"], "vocab_size": 64})
    with pytest.raises(UnsupportedModelError, match="QEFFAutoModelForSequenceClassification"):
        QEFFAutoModel(LlamaForCausalLM(config))
