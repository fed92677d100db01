"""Sweep checks for encoders (mean-pooled embeddings) and sequence classifiers (logits), against HF at 1e-5.

Each check builds the tiny model with HF, runs HF on a right-padded batch of token ids, saves it, loads it
back through QEfficient's public class (`QEFFAutoModel` with `pooling="mean"`, or
`QEFFAutoModelForSequenceClassification`), validates every stage against HF (`QEfficient.validate`) and
finally compares the compiled program's output with the HF model as built, before the save.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from transformers import AutoModel, AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from QEfficient.sweep.runner import (
    FAIL,
    HF_CANNOT_BUILD,
    HF_CANNOT_RUN,
    PASS,
    UNSUPPORTED,
    StageFailure,
    SweepRow,
    load_stage,
    run_stage,
)
from QEfficient.sweep.tiny_configs import VOCAB, tiny_config
from QEfficient.transformers.embeddings.batching import pad_to_shape

ATOL = 1e-5
# Right-padded batch: one longer row, a short one and one in between; ids away from the special tokens.
LENGTHS = (11, 4, 7)


def sweep_inputs() -> list[list[int]]:
    """Fixed token-id rows (ids in 8..480 of the tiny 512-token vocabulary)."""
    generator = torch.Generator().manual_seed(4321)
    return [torch.randint(8, VOCAB - 31, (n,), generator=generator).tolist() for n in LENGTHS]


def padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) right-padded with `pad_id`."""
    batch = pad_to_shape(rows, len(rows), max(len(r) for r in rows), pad_id)
    return torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])


def encoder_sweep_types() -> list[str]:
    """Masked-LM model types that are not encoder-decoders (the "encoder" task's items)."""
    from transformers import CONFIG_MAPPING

    return [m for m in MODEL_FOR_MASKED_LM_MAPPING_NAMES if not CONFIG_MAPPING[m]().is_encoder_decoder]


def sequence_classification_sweep_types() -> list[str]:
    """Every sequence-classification model type (encoder-decoders come back as unsupported)."""
    return list(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)


def _mean_pooled_hidden(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    from QEfficient.transformers.embeddings.pooling import mean_pooling

    with torch.no_grad():
        return mean_pooling(model(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask).numpy()


def _logits(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=mask).logits.float().numpy()


def _check(task: str, model_type: str, architecture: str, auto_class, reference, load) -> SweepRow:
    """Build tiny, run HF, save, load through `load(folder)`, validate, compare with the HF model as built."""
    from QEfficient.transformers.models.registry import UnsupportedModelError
    from QEfficient.validation import validate

    row = SweepRow(task, model_type, architecture)
    rows = sweep_inputs()
    try:
        config = run_stage("tiny config", HF_CANNOT_BUILD, tiny_config, model_type)
        if task == "encoder" and getattr(config, "is_decoder", False):  # e.g. Reformer defaults to its causal form
            config = run_stage("tiny config", HF_CANNOT_BUILD, tiny_config, model_type, is_decoder=False)
        if getattr(config, "is_encoder_decoder", False):
            raise StageFailure(UNSUPPORTED, "transform", "encoder-decoder")
        torch.manual_seed(0)
        hf_model = run_stage("HF build", HF_CANNOT_BUILD, auto_class.from_config, config, dtype=torch.float32).eval()
        row.architecture = type(hf_model).__name__
        pad = getattr(config, "pad_token_id", None)
        pad = pad if isinstance(pad, int) else 0
        input_ids, mask = padded(rows, pad)
        expected = run_stage("HF run", HF_CANNOT_RUN, reference, hf_model, input_ids, mask)
        with tempfile.TemporaryDirectory(prefix=f"qeff-sweep-{model_type}-") as folder:
            run_stage("save", HF_CANNOT_BUILD, hf_model.save_pretrained, folder)
            del hf_model
            qeff = load_stage(load, folder, unsupported=(UnsupportedModelError,))
            # compiled at the batch's own padded length: the shape HF ran (bucket padding is tested elsewhere)
            report = validate(qeff, rows, atol=ATOL, seq_len=[input_ids.shape[1]])
            failed = next((s for s in report.stages if not s.passed), None)
            if failed is not None:
                reason = failed.error or f"max |diff| {failed.max_abs_diff:.3e} > {ATOL:g}"
                if failed.stage == "compiled program" and not failed.error:
                    reason += _padding_dependence(qeff, input_ids, mask)
                raise StageFailure(FAIL, failed.stage, reason)
            feed = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
            got = run_stage("compiled vs HF as built", FAIL, qeff.generate, feed)
    except StageFailure as failure:
        row.status, row.stage, row.reason = failure.status, failure.stage, failure.reason
        return row
    diff = float(np.max(np.abs(got[qeff.output_name] - expected)))
    worst = max(diff, *(s.max_abs_diff for s in report.stages))
    if diff > ATOL:
        row.status, row.stage, row.reason = FAIL, "compiled vs HF as built", f"max |diff| {diff:.3e} > {ATOL:g}"
    else:
        row.status = PASS
    row.detail = f"max |diff| {worst:.1e}"
    return row


def _padding_dependence(qeff, input_ids: torch.Tensor, mask: torch.Tensor) -> str:
    """Why the compiled program may differ when ONNX Runtime on the same batch does not: HF's own output
    changes when the batch is padded further, to the compiled seq_len."""
    seq = max(qeff.compiled_seq_lens)
    extra = seq - input_ids.shape[1]
    if extra <= 0:
        return ""
    pad = torch.full((input_ids.shape[0], extra), qeff._pad_token_id(), dtype=torch.int64)
    longer_ids, longer_mask = torch.cat([input_ids, pad], 1), torch.cat([mask, torch.zeros_like(pad)], 1)
    try:
        short = _valid(qeff.hf_reference(input_ids, mask).numpy(), mask)
        long = _valid(qeff.hf_reference(longer_ids, longer_mask).numpy(), longer_mask)
    except Exception:  # noqa: BLE001 - only a diagnostic
        return ""
    diff = float(np.max(np.abs(short - long)))
    if diff <= ATOL:
        return ""
    return (
        f"; HF's own output changes with the padding ({diff:.1e} between padding to {input_ids.shape[1]} and "
        f"{seq} tokens): padded tokens reach the valid ones"
    )


def _valid(values: np.ndarray, mask: torch.Tensor) -> np.ndarray:
    return values[mask.numpy().astype(bool)] if values.ndim == 3 else values


def check_encoder(model_type: str) -> SweepRow:
    """`AutoModel` tiny: HF last_hidden_state mean-pooled in PyTorch == `QEFFAutoModel(pooling="mean")` at
    every stage (transformed PyTorch, ONNX Runtime, compiled program), within 1e-5."""
    from QEfficient.transformers.models.encoders import QEFFAutoModel

    return _check(
        "encoder",
        model_type,
        MODEL_MAPPING_NAMES.get(model_type, "?"),
        AutoModel,
        _mean_pooled_hidden,
        lambda folder: QEFFAutoModel.from_pretrained(folder, pooling="mean"),
    )


def check_sequence_classification(model_type: str) -> SweepRow:
    """`AutoModelForSequenceClassification` tiny: HF logits on a right-padded batch ==
    `QEFFAutoModelForSequenceClassification` at every stage, within 1e-5."""
    from QEfficient.transformers.models.encoders import QEFFAutoModelForSequenceClassification

    return _check(
        "sequence-classification",
        model_type,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(model_type, "?"),
        AutoModelForSequenceClassification,
        _logits,
        QEFFAutoModelForSequenceClassification.from_pretrained,
    )
