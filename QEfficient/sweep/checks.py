"""The per-architecture checks of the sweep: build tiny with HF, run HF, then QEfficient against HF."""

from __future__ import annotations

import tempfile

import torch
from transformers import AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from QEfficient.sweep.checks_encoders import check_encoder, check_sequence_classification
from QEfficient.sweep.runner import (
    FAIL,
    HF_CANNOT_BUILD,
    HF_CANNOT_RUN,
    PASS,
    StageFailure,
    SweepRow,
    load_stage,
    run_stage,
)
from QEfficient.sweep.tiny_configs import VOCAB, tiny_config
from QEfficient.validation import default_token_prompts

# Two prompts: one longer than the sliding window (and than prefill_seq_len, so prefill is chunked), one short.
GENERATION_LEN = 24
PREFILL_SEQ_LEN = 8
CTX_LEN = 64


def sweep_prompts() -> list[list[int]]:
    """validate's fixed token-id prompts for the tiny vocabulary: 17 tokens (past the sliding window of
    `WINDOW` = 12 and past `PREFILL_SEQ_LEN`) and 5."""
    return default_token_prompts(VOCAB)


def build_tiny(auto_class, model_type: str, **overrides):
    """(config, tiny HF model in eval mode, fp32, seeded weights)."""
    config = run_stage("tiny config", HF_CANNOT_BUILD, tiny_config, model_type, **overrides)
    torch.manual_seed(0)
    model = run_stage("HF build", HF_CANNOT_BUILD, auto_class.from_config, config, dtype=torch.float32)
    randomize_zero_matrices(model, config)
    return config, model.eval()


def randomize_zero_matrices(model: torch.nn.Module, config) -> None:  # noqa: ANN001
    """Give weight matrices that HF initialises to zero (MoE router gates, e.g. AFMoE's) random values.

    With a zero router every expert scores the same, and which experts `topk` picks among equal scores is
    unspecified (PyTorch and ONNX Runtime break ties differently), so the comparison would test tie-breaking
    instead of the model. Random weights make the routing, like the rest of the tiny model, non-degenerate.
    """
    std = getattr(config, "initializer_range", None) or 0.02
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2 and parameter.is_floating_point() and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _declared_fields(model_type: str) -> set[str]:
    """Names the config class declares itself (not inherited from PreTrainedConfig)."""
    import dataclasses

    from transformers import CONFIG_MAPPING, PreTrainedConfig

    base = {f.name for f in dataclasses.fields(PreTrainedConfig)}
    return {f.name for f in dataclasses.fields(CONFIG_MAPPING[model_type])} - base


def check_causal_lm(model_type: str) -> SweepRow:
    """HF `generate` == transformed PyTorch == ONNX Runtime == compiled program, exact greedy tokens."""
    from QEfficient.transformers.models.causal_lm import QEFFAutoModelForCausalLM
    from QEfficient.transformers.models.causal_lm_wrapper import UnsupportedCausalLMError
    from QEfficient.validation import _hf_greedy, validate_causal_lm

    row = SweepRow("causal-lm", model_type, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    prompts = sweep_prompts()
    try:
        # encoder families (BERT, RoBERTa, ...) act as causal LMs only with is_decoder=True, as HF's warning says
        decoder = {"is_decoder": True} if "is_decoder" in _declared_fields(model_type) else {}
        _, hf_model = build_tiny(AutoModelForCausalLM, model_type, **decoder)
        row.architecture = type(hf_model).__name__
        for prompt in prompts:
            run_stage("HF generate", HF_CANNOT_RUN, _hf_greedy, hf_model, prompt, 4)
        with tempfile.TemporaryDirectory(prefix=f"qeff-sweep-{model_type}-") as folder:
            run_stage("save", HF_CANNOT_BUILD, hf_model.save_pretrained, folder)
            del hf_model
            qeff = load_stage(QEFFAutoModelForCausalLM.from_pretrained, folder, unsupported=(UnsupportedCausalLMError,))
            row.adapter = getattr(qeff.model, "adapter_name", "")
            report = validate_causal_lm(
                qeff, prompts, None, generation_len=GENERATION_LEN, prefill_seq_len=PREFILL_SEQ_LEN, ctx_len=CTX_LEN
            )
    except StageFailure as failure:
        row.status, row.stage, row.reason = failure.status, failure.stage, failure.reason
        return row
    failed = next((s for s in report.stages if not s.passed), None)
    if failed is None:
        row.status, row.detail = PASS, report.stages[-1].detail + " tokens"
    else:
        row.status = HF_CANNOT_RUN if failed.stage == "HF generate" else FAIL
        row.stage, row.reason = failed.stage, failed.detail
    return row


def check_speech_seq2seq(model_type: str) -> SweepRow:
    from QEfficient.sweep.checks_speech import check_speech_seq2seq

    return check_speech_seq2seq(model_type)


def check_ctc(model_type: str) -> SweepRow:
    from QEfficient.sweep.checks_ctc import check_ctc

    return check_ctc(model_type)


def check_image_text_to_text(model_type: str) -> SweepRow:
    from QEfficient.sweep.checks_image_text import check_image_text_to_text

    return check_image_text_to_text(model_type)


CHECKS = {
    "causal-lm": check_causal_lm,
    "encoder": check_encoder,
    "sequence-classification": check_sequence_classification,
    "speech-seq2seq": check_speech_seq2seq,
    "ctc": check_ctc,
    "image-text-to-text": check_image_text_to_text,
}
