"""Image to text with encoder-decoders: `QEFFImageEncoderDecoder` (Donut / Nougat / TrOCR-style
`VisionEncoderDecoderModel`, PP-FormulaNet, Pix2Struct, Florence-2, ...) as two fixed-shape programs.

```python
model = QEFFImageEncoderDecoder.from_pretrained(folder)             # or QEFFAutoModelForImageTextToText.from_pretrained
model.compile(ctx_len=64)                                           # encoder for the processor's image size + decoder
out = model.generate(images="page.png", generation_len=32)           # PIL images, paths or arrays; or image_inputs=
out.generated_texts, out.generated_ids
```

It is the speech encoder-decoder mechanism (`QEfficient/transformers/models/speech_seq2seq.py`,
`QEfficient/transformers/encoder_decoder_cache.py`, docs/speech_to_text.md) with image encoder inputs: the encoder
program takes what the HF model's encoder takes (`pixel_values [C, H, W]`; Pix2Struct's `flattened_patches` and their
`attention_mask`; Florence-2's `input_ids` with the image tokens, `pixel_values` and `attention_mask`), runs the model's
own encoder and computes every decoder layer's cross-attention keys and values once per image; the decoder program
runs the decoder prompt and then one token per step with its self-attention cache and those keys and values as
retained state (and the cross-attention mask, where the model has one). Greedy decoding uses HF's decoder prompt rule
and logits processors, so the tokens are exactly HF `generate`'s.

The encoder program is compiled for one set of encoder input shapes (the images' size, Pix2Struct's `max_patches`,
Florence-2's prompt length), from `image_inputs=` (one image's inputs as the processor makes them) or, for an encoder
that takes `pixel_values` alone, from the vision config's `image_size`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForImageTextToText

from QEfficient.transformers.encoder_decoder_cache import UnsupportedEncoderDecoderError, decoder_start_token
from QEfficient.transformers.models.speech_seq2seq import (
    GreedyPicker,
    QEFFEncoderDecoderBase,
    Seq2SeqTransform,
    _Clock,
    _InOrder,
    _Window,
)

logger = logging.getLogger(__name__)

IMAGE_INPUTS = ("pixel_values", "flattened_patches")  # the floating-point encoder inputs of image encoders
# encoder inputs besides the image that the encoder takes with it, in this order (text ids and their layout)
EXTRA_ENCODER_INPUTS = ("input_ids", "attention_mask", "bbox", "visual_bbox", "pixel_mask")


class ImageInputError(ValueError):
    """Image inputs that do not fit the compiled encoder (shape, names, dtype)."""


@dataclass
class ImagePerfMetrics:
    """Timing of one `generate` call, measured on the host around the program's runs."""

    images: int
    preprocess_s: float  # images -> encoder inputs (the processor)
    encoder_s: float
    ttft_s: float  # from the start of the call to the first generated token
    generated_tokens: int
    decode_s: float
    total_s: float

    @property
    def decode_tokens_per_s(self) -> float:
        decode_tokens = max(0, self.generated_tokens - self.images)
        return decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.images} image(s) | preprocess {self.preprocess_s * 1000:.0f} ms | encoder "
            f"{self.encoder_s * 1000:.0f} ms | TTFT {self.ttft_s * 1000:.0f} ms | {self.generated_tokens} tokens, "
            f"decode {self.decode_tokens_per_s:.1f} tokens/s | total {self.total_s:.2f} s"
        )


@dataclass
class ImageToTextOutput:
    """What `generate` returns, per image: the text (None without a tokenizer), the generated token ids (without the
    decoder prompt and the end-of-text token: HF `generate`'s new tokens), and why each stopped ("eos", "length",
    "ctx_full")."""

    generated_texts: list[str] | list[None]
    generated_ids: list[list[int]]
    finish_reasons: list[str]
    perf_metrics: ImagePerfMetrics


def encoder_input_names(model: nn.Module) -> list[str]:
    """The encoder inputs an image encoder-decoder takes: its image input (`pixel_values` or `flattened_patches`)
    first, then the text ids and masks that both the model's forward and its encoder's forward take (Pix2Struct's
    patch `attention_mask`; Florence-2's `input_ids` and `attention_mask`)."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    image = [name for name in IMAGE_INPUTS if name in parameters]
    if not image:
        raise UnsupportedEncoderDecoderError(
            f"{type(model).__name__} takes no image input ({' or '.join(IMAGE_INPUTS)}): not an image encoder-decoder."
        )
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
    reads = inspect.signature(encoder.forward).parameters if encoder is not None else parameters
    return [image[0], *(name for name in EXTRA_ENCODER_INPUTS if name in parameters and name in reads)]


def default_image_inputs(model: nn.Module) -> dict[str, np.ndarray]:
    """One image's encoder inputs for an encoder that takes `pixel_values` alone: zeros `[C, H, W]` at the vision
    config's image size. Other encoders (patches with a mask, text ids) need an example from their processor."""
    names = encoder_input_names(model)
    config = model.config
    vision = getattr(config, "encoder", None) or getattr(config, "vision_config", None) or config
    size, channels = getattr(vision, "image_size", None), getattr(vision, "num_channels", 3) or 3
    if names != ["pixel_values"] or size is None:
        raise ImageInputError(
            f"{type(model).__name__}'s encoder takes {', '.join(names)}: pass image_inputs= (one image's inputs as its "
            "processor makes them, e.g. processor(images=image, text=prompt, return_tensors='np')) to fix the "
            "compiled encoder's shapes."
        )
    height, width = (size, size) if isinstance(size, int) else size
    return {"pixel_values": np.zeros((int(channels), int(height), int(width)), dtype=np.float32)}


# the axes of one image's encoder input (without the batch axis)
ROW_NDIM = {
    "pixel_values": 3,  # [C, H, W]
    "flattened_patches": 2,  # [patches, patch features]
    "input_ids": 1,
    "attention_mask": 1,
    "bbox": 2,  # [tokens, 4]
    "visual_bbox": 2,
    "pixel_mask": 2,
}


def one_image(inputs: Mapping[str, Any], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """One image's encoder inputs without the batch axis (a processor's `[1, ...]` output squeezed), float32 images
    and int64 ids, boxes and masks; `names` keeps only those inputs (the others a processor makes are dropped)."""
    out = {}
    for name, value in inputs.items():
        if names is not None and name not in names:
            continue
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        ndim = ROW_NDIM.get(name, array.ndim)
        if array.ndim == ndim + 1:
            if array.shape[0] != 1:
                raise ImageInputError(f"{name} holds {array.shape[0]} images; give one image's inputs per entry.")
            array = array[0]
        elif array.ndim != ndim:
            raise ImageInputError(
                f"{name} has shape {list(array.shape)}; one image's {name} has {ndim} axes (or {ndim + 1} with a "
                "batch axis of 1)."
            )
        # images in float32; ids, boxes and masks (a processor may give a float mask) in int64
        out[name] = array.astype(np.float32 if name in IMAGE_INPUTS else np.int64, copy=False)
    return out


def decoder_prompt(hf_model: nn.Module, prompt_ids: Sequence[int] | None) -> list[int]:
    """The decoder prompt HF `generate` runs for `decoder_input_ids=prompt_ids` (None: the start token alone):
    transformers' own `_prepare_decoder_input_ids_for_generation` (the start token is prepended unless the ids start
    with it, or the model is Donut)."""
    start = torch.tensor(decoder_start_token(hf_model))
    kwargs = {} if not prompt_ids else {"decoder_input_ids": torch.tensor([list(prompt_ids)], dtype=torch.int64)}
    ids, _ = hf_model._prepare_decoder_input_ids_for_generation(1, hf_model.main_input_name, kwargs, start, "cpu")
    return [int(t) for t in ids[0]]


def hf_image_generate_ids(
    hf_model: nn.Module,
    image_inputs: Mapping[str, Any],
    generation_len: int,
    decoder_prompt_ids: Sequence[int] | None = None,
) -> list[int]:
    """HF `generate`'s greedy tokens for one image's encoder inputs (no batch axis), as `QEFFImageEncoderDecoder`
    reports them: without the decoder prompt, up to (not including) the first end-of-text token."""
    inputs = {name: torch.from_numpy(np.asarray(a)[None]) for name, a in one_image(image_inputs).items()}
    prompt = decoder_prompt(hf_model, decoder_prompt_ids)
    if decoder_prompt_ids:
        inputs["decoder_input_ids"] = torch.tensor([list(decoder_prompt_ids)], dtype=torch.int64)
    with torch.no_grad():
        out = hf_model.generate(**inputs, max_new_tokens=generation_len, do_sample=False, num_beams=1)
    row = out[0].tolist()[len(prompt) :]
    eos = _eos_ids(hf_model)
    return row[: next((i for i, t in enumerate(row) if t in eos), len(row))]


def _eos_ids(hf_model: nn.Module) -> set[int]:
    for source in (hf_model.generation_config, hf_model.config):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            return set(value) if isinstance(value, (list, tuple)) else {int(value)}
    return set()


class QEFFImageEncoderDecoder(QEFFEncoderDecoderBase):
    """Image-to-text encoder-decoder models on fixed-shape backends: an encoder program that computes the decoder's
    cross-attention keys and values once per image, and a decoder program with a fixed self-attention cache
    (docs/image_text_to_text.md, "Encoder-decoder models").

    ```python
    model = QEFFImageEncoderDecoder.from_pretrained(path, image_inputs=processor(images=img, return_tensors="np"))
    model.compile(ctx_len=128, batch_size=1)
    out = model.generate(images=[img], generation_len=64)
    out.generated_texts, out.generated_ids
    ```

    Any encoder-decoder of transformers' image-text-to-text mapping whose decoder keeps its keys and values in
    transformers' `EncoderDecoderCache` works without model-specific code. Greedy tokens are HF `generate`'s.
    """

    _hf_auto_class: ClassVar[Any] = AutoModelForImageTextToText
    _metadata_key: ClassVar[str] = "image_seq2seq"

    def __init__(
        self, model: nn.Module, processor: Any = None, image_inputs: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not getattr(model.config, "is_encoder_decoder", False):
            raise UnsupportedEncoderDecoderError(
                f"{type(model).__name__} is not an encoder-decoder: load it with QEFFAutoModelForImageTextToText."
            )
        self.processor = processor
        tokenizer = kwargs.pop("tokenizer", None) or getattr(processor, "tokenizer", None)
        names = encoder_input_names(model)
        if image_inputs is None:
            examples = default_image_inputs(model)
        else:
            examples = one_image(image_inputs, names)
        missing = [name for name in names[:1] if name not in examples]
        if missing:
            raise ImageInputError(f"image_inputs= lacks {missing[0]}: it has {', '.join(examples)}.")
        self.encoder_examples = {name: examples[name] for name in names if name in examples}
        example = {name: torch.from_numpy(a[None]) for name, a in self.encoder_examples.items()}
        super().__init__(model, tokenizer=tokenizer, extra_pytorch_transforms=[Seq2SeqTransform(example)], **kwargs)
        self._init_seq2seq()

    @classmethod
    def _init_kwargs(cls) -> tuple[str, ...]:
        return ("processor", "tokenizer", "image_inputs")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a HF image-to-text encoder-decoder (a local folder, or a hub id from the HF cache) with its processor
        when the folder has one. `image_inputs=`: one image's encoder inputs as the processor makes them (their
        shapes are the compiled encoder's); default: `pixel_values` at the vision config's image size."""
        from QEfficient.transformers.models.image_inputs import load_processor

        if kwargs.get("processor") is None:
            kwargs["processor"] = load_processor(str(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def _encoder_examples(self) -> dict[str, np.ndarray]:
        return self.encoder_examples

    # ---- export / compile ----------------------------------------------------------------------------

    def export(self, export_dir: str | Path | None = None, ctx_len: int | None = None) -> Path:
        """Export the encoder and decoder graphs for one decoder `ctx_len` and the encoder inputs' shapes (cached);
        dynamic batch. Returns the encoder graph's path; `onnx_paths` has both."""
        return self._export_seq2seq(export_dir, ctx_len)

    def compile(
        self,
        image_inputs: Mapping[str, Any] | None = None,
        ctx_len: int | None = None,
        batch_size: int = 1,
        prompt_len: int = 1,
        backend: str = "onnxruntime",
        compile_dir: str | Path | None = None,
        **backend_options: Any,
    ) -> Path:
        """Compile the encoder (batch_size x the encoder inputs) and the decoder (batch_size x `prompt_len`, and
        batch_size x 1) for one decoder `ctx_len`; exports first if needed. Returns the program directory.

        `image_inputs`: one image's encoder inputs (as the processor makes them) whose shapes the encoder is compiled
        for; default the ones the model was loaded with. `ctx_len`: decoder positions, prompt included (default: the
        model's decoder positions, at most 448). `prompt_len`: the decoder prompt graph's length (default 1, the
        start token; longer prompts run in chunks of it). Backend options (e.g. `weights="int8"`) go to the backend.
        """
        if image_inputs is not None:
            examples = one_image(image_inputs, list(self.encoder_examples))
            if set(examples) != set(self.encoder_examples):
                raise ImageInputError(
                    f"image_inputs= has {', '.join(examples)}; the model was set up with "
                    f"{', '.join(self.encoder_examples)}."
                )
            self.encoder_examples = {name: examples[name] for name in self.encoder_examples}
        shapes = {name: list(a.shape) for name, a in self.encoder_examples.items()}
        return self._compile_seq2seq(
            ctx_len, batch_size, prompt_len, backend, compile_dir, backend_options, {"encoder_shapes": shapes}
        )

    # ---- inputs ----------------------------------------------------------------------------------------

    def _check_row(self, row: Mapping[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
        """One image's encoder inputs, checked against the compiled encoder's shapes."""
        out = {}
        for name, example in self.encoder_examples.items():
            if name not in row:
                raise ImageInputError(f"Image {index}'s inputs lack {name!r} (they have {', '.join(row)}).")
            array = row[name]
            if array.shape != example.shape:
                what = "image size" if name == "pixel_values" else "shape"
                raise ImageInputError(
                    f"Image {index}'s {name} has shape {list(array.shape)}; the encoder was compiled for "
                    f"{list(example.shape)} (one image, without the batch axis). Resize the image to the compiled "
                    f"{what} (the processor does this with its size settings), or compile for these inputs: "
                    "compile(image_inputs=...)."
                )
            out[name] = array.astype(example.dtype, copy=False)
        return out

    def _rows(
        self, images: Any, prompts: str | Sequence[str] | None, image_inputs: Any, processor: Any
    ) -> list[dict[str, np.ndarray]]:
        """Each image's encoder inputs: `image_inputs` as given, else `images` through the processor (with each
        image's encoder text, for an encoder that takes text ids)."""
        if image_inputs is not None:
            entries = [image_inputs] if isinstance(image_inputs, Mapping) else list(image_inputs)
            rows: list[dict[str, np.ndarray]] = []
            for entry in entries:
                batch = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in entry.items()}
                main = batch.get(next(iter(self.encoder_examples)))
                ndim = len(next(iter(self.encoder_examples.values())).shape)
                if main is not None and main.ndim == ndim + 1 and main.shape[0] > 1:  # a batch: one row per image
                    rows += [{k: v[i] for k, v in batch.items()} for i in range(main.shape[0])]
                else:
                    rows.append(one_image(batch, list(self.encoder_examples)))
            return [self._check_row(row, i) for i, row in enumerate(rows)]
        if processor is None:
            raise ValueError(
                f"No processor was found with {self.model_name}: pass processor= (e.g. AutoProcessor.from_pretrained"
                "(path)) or the encoder inputs themselves, image_inputs=."
            )
        pictures = images if isinstance(images, (list, tuple)) else [images]
        pictures = [_open_image(p) for p in pictures]
        texts = self._encoder_texts(prompts, len(pictures))
        rows = []
        for i, picture in enumerate(pictures):
            kwargs: dict[str, Any] = {"images": [picture], "return_tensors": "np"}
            if texts is not None:
                kwargs["text"] = [texts[i]]
            made = processor(**kwargs)
            rows.append(self._check_row(one_image(dict(made), list(self.encoder_examples)), i))
        return rows

    def _takes_text(self) -> bool:
        return "input_ids" in self.encoder_examples

    def _encoder_texts(self, prompts: str | Sequence[str] | None, count: int) -> list[str] | None:
        if not self._takes_text():
            return None
        if prompts is None:
            raise ValueError(f"{self.model_name}'s encoder reads a text prompt with the image: pass prompts=.")
        texts = [prompts] * count if isinstance(prompts, str) else list(prompts)
        if len(texts) != count:
            raise ValueError(f"prompts= has {len(texts)} texts for {count} images; give one per image.")
        return texts

    def _decoder_prompts(
        self, prompts: str | Sequence[str] | None, decoder_prompt_ids: Any, count: int, processor: Any
    ) -> list[list[int]]:
        """Each image's decoder prompt as HF `generate` builds it from `decoder_input_ids`: `decoder_prompt_ids`
        (one list for all images, or one per image), else, for an encoder that reads no text, `prompts` tokenized
        without special tokens (Donut's task prompts), else the start token alone."""
        if decoder_prompt_ids is not None:
            rows = list(decoder_prompt_ids)
            if rows and all(isinstance(t, (int, np.integer)) for t in rows):
                rows = [rows] * count
            if len(rows) != count:
                raise ValueError(f"decoder_prompt_ids has {len(rows)} prompts for {count} images; give one per image.")
        elif prompts is not None and not self._takes_text():
            tokenizer = getattr(processor, "tokenizer", None) or self.tokenizer
            if tokenizer is None:
                raise ValueError("prompts= needs the model's tokenizer: pass processor= or decoder_prompt_ids=.")
            texts = [prompts] * count if isinstance(prompts, str) else list(prompts)
            if len(texts) != count:
                raise ValueError(f"prompts= has {len(texts)} texts for {count} images; give one per image.")
            rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        else:
            rows = [None] * count
        return [decoder_prompt(self.hf_model, row) for row in rows]

    # ---- generation --------------------------------------------------------------------------------

    def generate(
        self,
        images: Any = None,
        prompts: str | Sequence[str] | None = None,
        decoder_prompt_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        image_inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        processor: Any = None,
        generation_len: int | None = None,
        streamer: Any = None,
    ) -> ImageToTextOutput:
        """Greedy image-to-text on the compiled programs (exactly HF `generate`'s tokens).

        `images`: a PIL image, a path or an `[H, W, C]` uint8 array, or a list of them, through the model's processor
        (`processor=` overrides it); or `image_inputs`: the encoder inputs themselves (one image's dict, a batched
        dict, or a list of dicts), at the compiled shapes. `prompts`: text per image (or one for all): for an encoder
        that reads text (Florence-2's task prompt) it goes to the processor with the image; otherwise it is the
        decoder's prompt (Donut's task prompt), tokenized without special tokens. `decoder_prompt_ids`: the decoder
        prompt as token ids (HF's `decoder_input_ids`; the start token is prepended as HF does). `generation_len`:
        new tokens at most per image (default: HF's `max_length` / `max_new_tokens`, within the decoder context).
        `streamer`: `put(ids)` / `end()` (transformers' `TextStreamer`), for one image.
        """
        if (images is None) == (image_inputs is None):
            raise ValueError("generate() takes images= or image_inputs= (the encoder inputs), one of them.")
        if generation_len is not None and (isinstance(generation_len, bool) or generation_len < 1):
            raise ValueError(f"generation_len must be a positive int; got {generation_len!r}.")
        start = time.perf_counter()
        processor = processor or self.processor
        rows = self._rows(images, prompts, image_inputs, processor)
        if streamer is not None and len(rows) != 1:
            raise ValueError("Streaming supports one image at a time (as transformers' TextStreamer).")
        prompt_rows = self._decoder_prompts(
            None if self._takes_text() else prompts, decoder_prompt_ids, len(rows), processor
        )
        preprocess_s = time.perf_counter() - start
        work = [_Window(i, row) for i, row in enumerate(rows)]
        clock = _Clock(start)
        emit = _InOrder(streamer, len(work))
        # rounds of up to batch_size images whose decoder prompts have one length (decoded in lockstep)
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompt_rows):
            by_length.setdefault(len(prompt), []).append(i)
        for length, indices in sorted(by_length.items()):
            for first in range(0, len(indices), self.batch_size):
                chosen = indices[first : first + self.batch_size]
                batch = [work[i] for i in chosen]
                self._encode_round(batch, clock)
                prompts_ = [prompt_rows[i] for i in chosen]
                picker = GreedyPicker(self._generic_logits_processors(length), self._vocab_size())
                self._decode_round(batch, chosen[0], prompts_, picker, generation_len, clock, emit)
        emit.finish()
        return self._output(work, preprocess_s, clock)

    def generate_ids(
        self,
        image_inputs: Sequence[Mapping[str, Any]],
        generation_len: int,
        decoder_prompt_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
    ) -> list[list[int]]:
        """Greedy tokens per image for encoder inputs given directly (validation against `hf_image_generate_ids`)."""
        out = self.generate(
            image_inputs=list(image_inputs), decoder_prompt_ids=decoder_prompt_ids, generation_len=generation_len
        )
        return out.generated_ids

    def _output(self, work: list[_Window], preprocess_s: float, clock: _Clock) -> ImageToTextOutput:
        ids = [w.generated for w in work]
        if self.tokenizer is None:
            texts: list[str] | list[None] = [None] * len(work)
        else:
            texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        metrics = ImagePerfMetrics(
            images=len(work),
            preprocess_s=preprocess_s,
            encoder_s=clock.encoder,
            ttft_s=(clock.first_token or time.perf_counter()) - clock.start,
            generated_tokens=sum(len(row) for row in ids),
            decode_s=clock.decode,
            total_s=time.perf_counter() - clock.start,
        )
        return ImageToTextOutput(texts, ids, [w.finish_reason or "eos" for w in work], metrics)


def _open_image(image: Any) -> Any:
    """A PIL image from a PIL image, a path, or an `[H, W, C]` uint8 array."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"Image file {image} does not exist.")
        return Image.open(image).convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    return image


def is_image_encoder_decoder(source: str | os.PathLike, kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether the model at `source` is an encoder-decoder of transformers' image-text-to-text mapping (its config
    says `is_encoder_decoder`)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    options = {k: v for k, v in (kwargs or {}).items() if k in ("revision", "trust_remote_code")}
    if (kwargs or {}).get("gguf_file"):
        return False
    try:
        config = AutoConfig.from_pretrained(source, **options)
    except (OSError, ValueError):
        return False  # the caller's own loading says what is wrong with the source
    return bool(getattr(config, "is_encoder_decoder", False)) and (
        config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    )


def load_image_encoder_decoder(source: str | os.PathLike, kwargs: dict[str, Any]) -> QEFFImageEncoderDecoder | None:
    """`QEFFAutoModelForImageTextToText.from_pretrained`'s hand-off: a `QEFFImageEncoderDecoder` for an
    encoder-decoder model at `source`, None for anything else (a decoder language model with a vision tower).

    `kwargs` are `from_pretrained`'s: `processor`, `image_inputs` and HF loading options are used; `kv_offload` does
    not apply (an encoder-decoder is always two programs) and `continuous_batching=True` is refused."""
    if not is_image_encoder_decoder(source, kwargs):
        return None
    options = dict(kwargs)
    if options.pop("continuous_batching", False):
        raise UnsupportedEncoderDecoderError(
            f"{source} is an encoder-decoder model: continuous batching is not implemented for it; load it without "
            "continuous_batching=True."
        )
    if options.pop("kv_offload", True) is False:
        logger.warning("kv_offload=False does not apply to an encoder-decoder model (always two programs); ignored.")
    logger.info("%s is an image-to-text encoder-decoder: loading it as QEFFImageEncoderDecoder.", source)
    return QEFFImageEncoderDecoder.from_pretrained(source, **options)
