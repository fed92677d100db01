"""Sweep check for CTC speech models (`QEFFAutoModelForCTC`): logits against HF at 1e-4, on clips of two lengths.

The check builds the tiny model with HF (`AutoModelForCTC.from_config`), finds the input it takes by running it
(raw samples, or feature frames of the size its config names) and runs HF on each clip alone, unpadded; then it saves
the model, loads it through `QEFFAutoModelForCTC.from_pretrained`, validates every stage (`validate_ctc`: transformed
PyTorch and ONNX Runtime on the clips as one padded batch, the compiled program on the batch and on each clip alone,
each on a compiled length longer than the clip) and compares the compiled logits with the HF model as built.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from transformers import AutoModelForCTC
from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

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
from QEfficient.sweep.tiny_configs import tiny_config

ATOL = 1e-4
SAMPLES = (2900, 5200)  # raw-audio clips: 0.18 s and 0.33 s at 16 kHz (the feature encoders stride 320)
FRAMES = (37, 61)  # feature-frame clips (10 ms frames)


def sweep_inputs(feature_size: int | None) -> list[np.ndarray]:
    """Two fixed clips of the model's own input: 1-D samples (zero mean, unit variance, as wav2vec2's feature
    extractor makes them) or [T, F] feature frames."""
    generator = np.random.default_rng(4321)
    if feature_size is None:
        clips = [generator.standard_normal(n) for n in SAMPLES]
        return [((c - c.mean()) / c.std()).astype(np.float32) for c in clips]
    return [generator.standard_normal((n, feature_size)).astype(np.float32) for n in FRAMES]


def _hf_logits(model: torch.nn.Module, layout, clips: list[np.ndarray]) -> list[np.ndarray]:  # noqa: ANN001
    with torch.no_grad():
        return [
            model(**{layout.name: layout.hf_input(torch.from_numpy(c)[None])}).logits.float()[0].numpy() for c in clips
        ]


def check_ctc(model_type: str) -> SweepRow:
    """`AutoModelForCTC` tiny: HF logits of each clip alone == `QEFFAutoModelForCTC` at every stage, within 1e-4."""
    from QEfficient.transformers.models.registry import UnsupportedModelError
    from QEfficient.transformers.models.speech_ctc import QEFFAutoModelForCTC, detect_input_layout
    from QEfficient.validation import validate_ctc

    row = SweepRow("ctc", model_type, MODEL_FOR_CTC_MAPPING_NAMES.get(model_type, "?"))
    try:
        config = run_stage("tiny config", HF_CANNOT_BUILD, tiny_config, model_type)
        torch.manual_seed(0)
        hf_model = run_stage("HF build", HF_CANNOT_BUILD, AutoModelForCTC.from_config, config, dtype=torch.float32)
        hf_model = hf_model.eval()
        row.architecture = type(hf_model).__name__
        layout = run_stage("HF run", HF_CANNOT_RUN, detect_input_layout, hf_model)
        clips = sweep_inputs(layout.feature_size)
        expected = run_stage("HF run", HF_CANNOT_RUN, _hf_logits, hf_model, layout, clips)
        with tempfile.TemporaryDirectory(prefix=f"qeff-sweep-{model_type}-") as folder:
            run_stage("save", HF_CANNOT_BUILD, hf_model.save_pretrained, folder)
            del hf_model
            qeff = load_stage(QEFFAutoModelForCTC.from_pretrained, folder, unsupported=(UnsupportedModelError,))
            report = validate_ctc(qeff, inputs=clips, atol=ATOL)
            failed = next((s for s in report.stages if not s.passed), None)
            if failed is not None:
                reason = failed.error or f"max |diff| {failed.max_abs_diff:.3e} > {ATOL:g}"
                raise StageFailure(FAIL, failed.stage, reason)
            got = [
                run_stage("compiled vs HF as built", FAIL, qeff.generate, {layout.name: c})["logits"][0] for c in clips
            ]
    except StageFailure as failure:
        row.status, row.stage, row.reason = failure.status, failure.stage, failure.reason
        return row
    if any(g.shape != e.shape for g, e in zip(got, expected)):
        row.status, row.stage = FAIL, "compiled vs HF as built"
        row.reason = f"logits shapes {[g.shape for g in got]} vs HF {[e.shape for e in expected]}"
        return row
    diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
    worst = max(diff, *(s.max_abs_diff for s in report.stages))
    if diff > ATOL:
        row.status, row.stage, row.reason = FAIL, "compiled vs HF as built", f"max |diff| {diff:.3e} > {ATOL:g}"
    else:
        row.status = PASS
    row.detail = f"max |diff| {worst:.1e}"
    return row
