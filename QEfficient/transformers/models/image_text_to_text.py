"""Vision-language models: `QEFFAutoModelForImageTextToText` (docs/image_text_to_text.md).

Two programs by default (`kv_offload=True`, as the reference system does):

- the **vision encoder**: the processor's image inputs (`pixel_values`, and `image_sizes`, `image_grid_thw`, ... where
  the model takes them) -> `image_features [N, H]`, HF's own `get_image_features` (vision tower and projector) with
  its per-image outputs concatenated; a static graph for the compiled image geometry;
- the **language model**: the causal-LM program of `QEFFAutoModelForCausalLM` (fixed-size retained KV cache, chunked
  prefill, decode) with one more per-token input, `image_embeds [B, S, H + 1]`: the image feature that replaces each
  image token's embedding and a flag column set to 1 there (zeros for the other tokens). The graph hands HF the
  features at its image-token positions as `mm_encoder_outputs`, so HF merges them into the input embeddings exactly
  as its `generate` does.

`kv_offload=False`: one program holding both (the reference system's single-QPC mode), `QEFFImageTextSingleProgram`.

Any model whose HF class takes `mm_encoder_outputs` (81 of transformers' 100 image-text-to-text architectures)
goes through the same code; nothing here is specific to one architecture.

**Cross-attention models** (Mllama: the forward takes `cross_attention_states` and `cross_attention_mask`, the text
config names `cross_attention_layers`) take their images through cross-attention layers instead of placeholder
tokens. Their vision program gives every cross-attention layer's keys and values over the images' vision tokens,
`cross_key.{i}` / `cross_value.{i}` `[n, H_kv, T, D]` (the model's own vision path and its language model run once on
a dummy token with a `DynamicCache`, whose cross layers are read back); the language program retains them as
`past_cross_key.{i}` / `past_cross_value.{i}`, which the host writes into a prompt's cache row before its prefill, and
takes the per-token rows of `cross_attention_mask`, which HF's forward prepares.
"""


from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForImageTextToText

from QEfficient.transformers.loading import load_pretrained, prepare_for_export
from QEfficient.transformers.models.causal_lm import QEFFAutoModelForCausalLM
from QEfficient.transformers.models.image_inputs import (
    IMAGE,
    PER_TOKEN_INPUTS,
    VIDEO,
    Modality,
    as_rgb_image,
    default_img_size,
    features_function,
    features_parameters,
    image_inputs_of,
    images_in,
    load_processor,
    per_image_groups,
    placeholder_token_id,
    size_pair,
    text_inputs,
    visual_modality,
)
from QEfficient.transformers.models.image_text_single_program import QEFFImageTextSingleProgram
from QEfficient.transformers.models.modeling_auto import DEFAULT_CTX_LEN
from QEfficient.transformers.models.registry import UnsupportedModelError
from QEfficient.transformers.models.vision_encoder import QEFFCrossAttentionVisionEncoder, QEFFVisionEncoder

logger = logging.getLogger(__name__)

# Tokens of text that image features depend on (InstructBLIP's Q-Former instruction) a vision program takes.
FEATURE_TEXT_LEN = 64


def check_image_text_supported(model: nn.Module) -> None:
    """A clear error for a vision-language model outside the generic mechanisms (features that replace image tokens,
    or cross-attention keys and values)."""
    from QEfficient.transformers.models.causal_lm_wrapper import cross_attention_layers

    name = type(model).__name__
    forward = inspect.signature(model.forward).parameters
    cross = bool(cross_attention_layers(model))
    features = features_function(model, visual_modality(model))
    if not cross and ("mm_encoder_outputs" not in forward or features is None):
        raise UnsupportedModelError(
            f"{name} takes neither precomputed image features (`mm_encoder_outputs`, with `get_image_features` on "
            "the model or its inner model) nor cross-attention states (`cross_attention_states`, "
            "`cross_attention_mask` and the text config's `cross_attention_layers`): its images enter the language "
            "model another way (an encoder-decoder, its own cross-attention inputs), which "
            "QEFFAutoModelForImageTextToText does not implement yet."
        )
    if requires_images(model) and separate_language_model(model) is None:
        raise UnsupportedModelError(
            f"{name} requires `pixel_values` in every forward (its language model does not run on text alone) and "
            "has no separate causal language model (`language_model` with an LM head), so its images cannot be "
            "encoded once by a separate vision program."
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name} is an encoder-decoder model; only decoder language models are supported.")
    from QEfficient.transformers.models.causal_lm_wrapper import bidirectional_image_blocks, bidirectional_prefix

    if "token_type_ids" in forward and bidirectional_image_blocks(model) is None and not bidirectional_prefix(model):
        raise UnsupportedModelError(
            f"{name} reads `token_type_ids` to change its attention in a way the masks do not implement (they "
            "implement causal attention, Gemma3's bidirectional image blocks and PaliGemma's bidirectional prefix)."
        )
    placeholder_token_id(model.config, visual_modality(model))



def requires_images(model: nn.Module) -> bool:
    """Whether the model's forward takes `pixel_values` without a default (BLIP-2: every forward merges images)."""
    required = inspect.signature(model.forward).parameters.get("pixel_values")
    return required is not None and required.default is inspect.Parameter.empty


def separate_language_model(model: nn.Module) -> nn.Module | None:
    """The causal language model that a composite model runs on the merged embeddings (its `language_model`, with its
    own LM head, as BLIP-2's `generate` runs it), or None."""
    language = getattr(model, "language_model", None)
    if language is None or getattr(language.config, "is_encoder_decoder", False):
        return None
    has_head = callable(getattr(language, "get_output_embeddings", None)) and language.get_output_embeddings()
    return language if has_head is not None and has_head is not False else None


class QEFFAutoModelForImageTextToText:
    """Vision-language models (LLaVA, LLaVA-NeXT, Gemma3, Mistral3, InternVL, Llama4, Qwen2.5-VL, ...; Mllama through
    its cross-attention layers).

    ```python
    model = QEFFAutoModelForImageTextToText.from_pretrained(path)           # kv_offload=True: two programs
    model.compile(img_size=336, prefill_seq_len=128, ctx_len=1024)
    out = model.generate(images=[image], prompts=["What is in this picture?"], generation_len=64)
    out.generated_texts
    ```

    `generate` applies the processor's chat template (`chat=True`), runs the vision program on the images, and
    drives the language program with the features at the image-token positions. Greedy tokens equal HF
    `generate`'s.
    """

    _hf_auto_class: ClassVar[Any] = AutoModelForImageTextToText
    # what the encoder program computes (HF's `get_image_features`) and which placeholder token it replaces
    modality: ClassVar[Modality] = IMAGE
    compile_inputs_name: ClassVar[str] = "image_inputs"  # compile()'s argument for example encoder inputs

    def __init__(
        self,
        model: nn.Module,
        kv_offload: bool = True,
        continuous_batching: bool = False,
        processor: Any = None,
        pretrained_model_name_or_path: str | None = None,
    ) -> None:
        from QEfficient.transformers.models.causal_lm_wrapper import cross_attention_layers

        self.check_supported(model)
        # the cross-attention layers of a model that takes its images through cross-attention (Mllama), else ()
        self.cross_layers = cross_attention_layers(model)
        if self.cross_layers and not kv_offload:
            raise UnsupportedModelError(
                f"{type(model).__name__} takes its images through cross-attention layers: it runs as two programs "
                "(kv_offload=True, the default), the vision program computing the cross-attention keys and values "
                "that the language program retains; kv_offload=False is not implemented for such models."
            )
        if not kv_offload and continuous_batching:
            raise ValueError("kv_offload=False runs one prompt at a time: it does not take continuous_batching=True.")
        prepare_for_export(model)
        self.kv_offload = kv_offload
        self.processor = processor
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        if self.modality == IMAGE:  # a video model (InstructBLIP-Video) takes its frames through the same mechanism
            self.modality = visual_modality(model)
        self.image_token_id = placeholder_token_id(model.config, self.modality)
        self.hf_model = model
        if self.cross_layers:  # the language program takes cross keys and values, not features at image tokens
            self.vision: QEFFVisionEncoder = QEFFCrossAttentionVisionEncoder(model, self.cross_layers)
            self.language = QEFFAutoModelForCausalLM(model, continuous_batching=continuous_batching)
        else:
            self.vision = QEFFVisionEncoder(model, modality=self.modality)
            # a model that merges images in every forward (BLIP-2) runs its language model on the merged embeddings
            language = separate_language_model(model) if requires_images(model) else model
            self.language = QEFFAutoModelForCausalLM(
                language, continuous_batching=continuous_batching, image_token_id=self.image_token_id
            )
        self.single = None if kv_offload else QEFFImageTextSingleProgram(self.vision, self.language)
        self.image_size: tuple[int, int] | None = None
        self.num_images = 1

    @staticmethod
    def check_supported(model: nn.Module) -> None:
        """A clear error for a model outside the mechanisms this class implements."""
        check_image_text_supported(model)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        kv_offload: bool = True,
        continuous_batching: bool = False,
        processor: Any = None,
        **kwargs: Any,
    ) -> Any:  # an instance of cls
        """Load a HF vision-language model (local folder, or hub id offline from the HF cache) and its processor
        (from the same folder, when one is saved there; else pass `processor=` to `generate`).

        An encoder-decoder of the mapping (Donut/TrOCR-style `VisionEncoderDecoderModel`, Pix2Struct, Florence-2,
        PP-FormulaNet) comes back as a `QEFFImageEncoderDecoder` (docs/image_text_to_text.md)."""
        if cls.modality == IMAGE:
            from QEfficient.transformers.models.image_seq2seq import load_image_encoder_decoder

            options = {"processor": processor, "kv_offload": kv_offload, "continuous_batching": continuous_batching}
            encoder_decoder = load_image_encoder_decoder(pretrained_model_name_or_path, {**options, **kwargs})
            if encoder_decoder is not None:
                return encoder_decoder
        hf_model = load_pretrained(cls._hf_auto_class, pretrained_model_name_or_path, *args, **kwargs)
        if processor is None:
            processor = load_processor(getattr(hf_model, "name_or_path", "") or str(pretrained_model_name_or_path))
        return cls(
            hf_model,
            kv_offload=kv_offload,
            continuous_batching=continuous_batching,
            processor=processor,
            pretrained_model_name_or_path=str(pretrained_model_name_or_path),
        )

    @property
    def model_name(self) -> str:
        return type(self.hf_model).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name}, kv_offload={self.kv_offload})"

    # ---- compile -------------------------------------------------------------------------------------

    def example_image_inputs(
        self, img_size: int | tuple[int, int] | None = None, num_images: int = 1, processor: Any = None
    ) -> dict[str, np.ndarray]:
        """The processor's image inputs for `num_images` blank images of `img_size` (the vision graph's shapes)."""
        processor = processor or self.processor
        if processor is None:
            raise ValueError(
                "No processor was found with the model: pass processor= (or the example image_inputs= to compile)."
            )
        from PIL import Image

        height, width = size_pair(img_size or default_img_size(self.hf_model.config))
        images: list = [Image.new("RGB", (width, height), (127, 127, 127)) for _ in range(num_images)]
        image_processor = getattr(processor, "image_processor", processor)
        if self.cross_layers:  # the images of one prompt
            images = [images]
        inputs = image_inputs_of(image_processor(images=images, return_tensors="np"), self.hf_model)
        # text the features depend on (InstructBLIP's Q-Former instruction): compiled for up to FEATURE_TEXT_LEN tokens
        for name in text_inputs(features_parameters(self.hf_model, self.modality) or ()):
            inputs[name] = np.ones((1, FEATURE_TEXT_LEN), dtype=np.int64)
        return inputs

    def compile(
        self,
        img_size: int | tuple[int, int] | None = None,
        prefill_seq_len: int = 32,
        ctx_len: int = DEFAULT_CTX_LEN,
        batch_size: int = 1,
        full_batch_size: int | None = None,
        num_images: int = 1,
        image_inputs: dict[str, np.ndarray] | None = None,
        backend: str = "onnxruntime",
        skip_vision: bool = False,
        skip_lang: bool = False,
        **backend_options: Any,
    ) -> dict[str, Path]:
        """Compile the vision program for `num_images` images of `img_size` (as the processor prepares them; or for
        the example `image_inputs`) and the language program for `prefill_seq_len`, `ctx_len` and the batch.

        Returns `{"vision": dir, "language": dir}`. Images that the processor turns into inputs of the same shapes
        run on the compiled vision program one at a time where the inputs are per image (so a prompt may hold any
        number of them), else together.
        """
        paths: dict[str, Path] = {}
        if self.cross_layers:
            return self._compile_cross_attention(
                img_size,
                prefill_seq_len,
                ctx_len,
                batch_size,
                full_batch_size,
                num_images,
                image_inputs,
                backend,
                skip_vision,
                skip_lang,
                **backend_options,
            )
        if self.single is not None:  # one program: the vision encoder inside the language program's prefill
            if batch_size != 1 or full_batch_size:
                raise ValueError("kv_offload=False compiles one prompt at a time: batch_size=1, no full_batch_size.")
            inputs = image_inputs if image_inputs is not None else self.example_image_inputs(img_size, num_images)
            self.num_images = num_images if image_inputs is None else images_in(inputs, num_images)
            self.language.compile_config = {"prefill_seq_len": prefill_seq_len, "ctx_len": ctx_len}
            paths["program"] = self.single.compile(inputs, prefill_seq_len, ctx_len, backend=backend, **backend_options)
            return paths
        if not skip_vision:
            inputs = image_inputs if image_inputs is not None else self.example_image_inputs(img_size, num_images)
            self.num_images = num_images if image_inputs is None else images_in(inputs, num_images)
            self.image_size = size_pair(img_size) if img_size else None
            paths["vision"] = self.vision.compile(inputs, backend=backend, **backend_options)
        if not skip_lang:
            if self.vision.onnx_path is not None:  # the features' width and extra fields, which the language takes
                self.language.model.image_features_dim = self.vision.features_dim
                self.language.model.image_fields = dict(self.vision.extra_fields)
            paths["language"] = self.language.compile(
                prefill_seq_len, ctx_len, batch_size, full_batch_size, backend=backend, **backend_options
            )
        return paths

    def _compile_cross_attention(
        self,
        img_size: int | tuple[int, int] | None,
        prefill_seq_len: int,
        ctx_len: int,
        batch_size: int,
        full_batch_size: int | None,
        num_images: int,
        image_inputs: dict[str, np.ndarray] | None,
        backend: str,
        skip_vision: bool,
        skip_lang: bool,
        **backend_options: Any,
    ) -> dict[str, Path]:
        """`compile` for a cross-attention model: the vision program for `num_images` images per prompt (the image
        inputs of one prompt), then the language program retaining the cross keys and values of that many images."""
        paths: dict[str, Path] = {}
        inputs = image_inputs if image_inputs is not None else self.example_image_inputs(img_size, num_images)
        inputs = {name: value for name, value in inputs.items() if name not in PER_TOKEN_INPUTS}
        self.image_size = size_pair(img_size) if img_size else None
        if skip_vision:
            self.vision.prepare(inputs)
        else:
            paths["vision"] = self.vision.compile(inputs, backend=backend, **backend_options)
        self.num_images = self.vision.mask_shape[0]
        if not skip_lang:
            language = self.language
            if language.model.layout.cross_shapes != tuple(
                self.vision.cross_shapes.get(i) for i in range(language.model.layout.num_layers)
            ):
                language.model.use_cross_attention(self.vision.cross_shapes, self.vision.mask_shape)
                language.onnx_path = None  # the buffers' shapes changed: export again
            paths["language"] = language.compile(
                prefill_seq_len, ctx_len, batch_size, full_batch_size, backend=backend, **backend_options
            )
        return paths

    # ---- running -------------------------------------------------------------------------------------

    def image_features(self, image_inputs: dict[str, np.ndarray], runtime: str = "compiled") -> dict[str, np.ndarray]:
        """The vision outputs of the images in `image_inputs` (a processor's output), rows in prompt order:
        `image_features [N, H]` and any extra per-token fields; for a cross-attention model, the cross-attention
        keys and values `cross_key.{i}` / `cross_value.{i}` `[1, H_kv, T, D]` of one prompt's images."""
        run = self.vision.run if runtime == "compiled" else self.vision.pytorch
        if runtime not in ("compiled", "pytorch"):
            raise ValueError(f"runtime must be 'compiled' or 'pytorch'; got {runtime!r}.")
        if self.cross_layers:  # the cross keys and values of one prompt's images
            return run({name: v for name, v in image_inputs.items() if name not in PER_TOKEN_INPUTS})
        compiled = self.vision.example_shapes
        shapes = {name: np.shape(value) for name, value in image_inputs.items()}
        if runtime == "compiled" and shapes != compiled and per_image_groups(shapes, compiled, self.num_images):
            # the inputs are per image (leading dimension = images): run them in groups of the compiled count
            count = next(iter(shapes.values()))[0]
            step = self.num_images
            groups = range(0, count, step)
            parts = [run({n: np.asarray(v)[i : i + step] for n, v in image_inputs.items()}) for i in groups]
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        return run(image_inputs)

    def prepare(
        self,
        images: Any,
        prompt: str,
        processor: Any = None,
        chat: bool = True,
        index: int = 0,
    ) -> tuple[list[int], dict[str, np.ndarray]]:
        """Token ids of one prompt with its images (through the processor and, with `chat`, its chat template) and
        the processor's image inputs."""
        ids, encoded, has_images = self._encode(images, prompt, processor, chat, index)
        return ids, self.encoder_inputs_of(encoded) if has_images else {}

    def encoder_inputs_of(self, encoded: dict[str, Any]) -> dict[str, np.ndarray]:
        """The encoder program's part of a processor's output (the image inputs the model's forward takes)."""
        return image_inputs_of(encoded, self.hf_model)

    def hf_inputs(self, images: Any, prompt: str, processor: Any = None, chat: bool = True) -> dict[str, torch.Tensor]:
        """What HF `generate` takes for one prompt with its images: the processor's outputs that the model's forward
        accepts (token types included), as tensors."""
        _, encoded, _ = self._encode(images, prompt, processor, chat, 0)
        accepted = inspect.signature(self.hf_model.forward).parameters
        return {k: torch.from_numpy(np.asarray(v)) for k, v in encoded.items() if k in accepted and v is not None}

    def _encode(
        self, media: Any, prompt: str, processor: Any, chat: bool, index: int
    ) -> tuple[list[int], dict[str, Any], bool]:
        """(token ids, the processor's outputs, whether media was given) for one prompt with its images (or clips):
        the prompt through the processor's chat template (`chat`) with an entry per image, or as given, which must
        then hold the placeholder; clear errors for placeholders without media and media without placeholders."""
        processor = processor or self.processor
        if processor is None:
            raise ValueError("generate() needs the model's processor: none was found with the model; pass processor=.")
        items = [] if media is None else list(media) if isinstance(media, (list, tuple)) else [media]
        items = self._media_items(items)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"Prompt {index} is empty or not a string.")
        kind = self.modality.name
        placeholder = getattr(processor, f"{kind}_token", None)
        text = prompt
        if chat:
            content = [*self._chat_entries(items), {"type": "text", "text": prompt}]
            template = getattr(processor, "chat_template", None) or getattr(
                getattr(processor, "tokenizer", None), "chat_template", None
            )
            if template is None:
                raise ValueError(
                    f"The processor has no chat template: pass chat=False with the {kind} placeholders in the prompt "
                    f"(e.g. {placeholder or f'<{kind}>'!r})."
                )
            text = processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        if items and not chat and placeholder and placeholder not in text:
            raise ValueError(
                f"Prompt {index} has no {kind} token {placeholder!r} for its {len(items)} {kind}(s): put one "
                f"per {kind} where it belongs, or pass chat=True to use the chat template."
            )
        try:
            encoded = self._process(processor, items, text)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"Prompt {index}: the processor refused the prompt and its {kind}: {exc}") from exc
        ids = [int(t) for t in np.asarray(encoded["input_ids"])[0]]
        n_tokens = sum(t == self.image_token_id for t in ids)
        if items and n_tokens == 0:
            raise ValueError(
                f"Prompt {index} has {len(items)} {kind}(s) but no {kind} token (id {self.image_token_id}); put the "
                f"{kind} placeholder {placeholder!r} in the prompt or use chat=True."
            )
        if not items and n_tokens:
            raise ValueError(f"Prompt {index} has {kind} tokens but no {kind} was given.")
        return ids, encoded, bool(items)

    def _media_items(self, items: list[Any]) -> list[Any]:
        """Images as PIL RGB images (clear errors for what is not one)."""
        return [as_rgb_image(image, i) for i, image in enumerate(items)]

    def _chat_entries(self, items: list[Any]) -> list[dict[str, str]]:
        """The chat template's content entries for a prompt's images (a video model's frames: one video)."""
        if self.modality == VIDEO:
            return [{"type": "video"}] if items else []
        return [{"type": "image"} for _ in items]

    def _process(self, processor: Any, items: list[Any], text: str) -> dict[str, Any]:
        """The processor's outputs (numpy) for one prompt's text and images (a video model's frames: one video)."""
        if self.modality == VIDEO:
            media = {"videos": [items] if items else None}
        else:
            media = {"images": items or None}
        return dict(processor(**media, text=[text], return_tensors="np"))

    def token_features(
        self,
        ids: Sequence[int],
        features: dict[str, np.ndarray] | None,
        image_inputs: dict[str, np.ndarray] | None = None,
        index: int = 0,
        images_in_program: bool = False,
    ) -> dict[str, np.ndarray]:
        """The language program's per-token inputs of one prompt: `image_embeds` (feature row k at the k-th image
        token) and, for a model with multimodal rotary positions, `rope_offsets` (from HF's `get_rope_index`).
        `images_in_program`: the single program computes the features itself (they stay zeros here)."""
        ids = np.asarray(ids)
        positions = np.flatnonzero(ids == self.image_token_id)
        count = 0 if features is None else len(features["image_features"])
        # a prefix-LM's whole prompt is one bidirectional block, as are Gemma3's images
        self._check_blocks_fit_chunks(np.arange(len(ids)) if self.language.model.prefix_lm else positions, index)
        if not images_in_program and len(positions) != count:
            raise ValueError(
                f"Prompt {index} has {len(positions)} image tokens but its images give {count} image features: "
                "each image needs its placeholder in the prompt (one per image), and no more."
            )
        shapes = self.language.token_inputs
        inputs = {name: np.zeros((len(ids), *shape), dtype=np.float32) for name, shape in shapes.items()}
        for name, values in (features or {}).items():  # image_features -> image_embeds (and its flag column)
            if name == "image_features":
                inputs["image_embeds"][positions, :-1] = values
                inputs["image_embeds"][positions, -1] = 1.0
            else:
                inputs[name][positions] = values
        if self.language.model.rope_rows:
            inputs["rope_offsets"] = self.rope_offsets(ids, image_inputs or {})
        return inputs

    def _check_blocks_fit_chunks(self, positions: np.ndarray, index: int) -> None:
        """A model whose images attend to themselves bidirectionally (Gemma3) needs each image's tokens in one
        prefill chunk, and a prefix-LM (PaliGemma) its whole prompt: a token cannot read the keys of a later chunk."""
        chunk = self.language.compile_config.get("prefill_seq_len")
        if self.language.model.image_blocks is None or not len(positions) or not chunk:
            return
        starts = np.flatnonzero(np.diff(positions, prepend=-2) != 1)
        for first, last in zip(positions[starts], positions[np.r_[starts[1:] - 1, len(positions) - 1]]):
            if first // chunk != last // chunk and self.language.model.prefix_lm:
                raise ValueError(
                    f"Prompt {index} has {last + 1} tokens: {self.model_name} attends over its whole prompt "
                    f"bidirectionally, so the prompt must fit one prefill chunk (prefill_seq_len={chunk}). Compile "
                    f"with prefill_seq_len >= {last + 1} (e.g. {-(-(last + 1) // 64) * 64})."
                )
            if first // chunk != last // chunk:
                raise ValueError(
                    f"Prompt {index}: {self.model_name}'s image tokens attend to their whole image, so an image must "
                    f"lie in one prefill chunk; tokens {first}..{last} cross a chunk boundary of prefill_seq_len "
                    f"{chunk}. Compile with a prefill_seq_len that holds the prompt (e.g. {-(-(last + 1) // 64) * 64})."
                )

    def rope_offsets(self, ids: Sequence[int], image_inputs: dict[str, np.ndarray]) -> np.ndarray:
        """`[len(ids), R]`: each token's multimodal rotary position per axis minus its cache position, as HF's
        `get_rope_index` computes the positions (text-only prompts: zeros)."""
        rows = self.language.model.rope_rows
        ids_array = np.asarray(ids, dtype=np.int64)
        if not image_inputs:
            return np.zeros((len(ids_array), rows), dtype=np.float32)
        rope_index = getattr(self.hf_model, "get_rope_index", None) or self.hf_model.model.get_rope_index
        accepted = inspect.signature(rope_index).parameters
        input_ids = torch.from_numpy(ids_array)[None]
        kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(input_ids)}
        if "mm_token_type_ids" in accepted:  # 1 marks image tokens
            kwargs["mm_token_type_ids"] = (input_ids == self.image_token_id).int()
        kwargs.update({n: torch.from_numpy(np.asarray(v)) for n, v in image_inputs.items() if n in accepted})
        with torch.no_grad():
            positions = rope_index(input_ids, **{k: v for k, v in kwargs.items() if k in accepted})[0]
        offsets = positions[:, 0, :].T.numpy() - np.arange(len(ids_array))[:, None]
        return offsets.astype(np.float32)

    def generate(
        self,
        images: Any = None,
        prompts: str | Sequence[str] = (),
        processor: Any = None,
        generation_len: int | None = None,
        chat: bool = True,
        streamer: Any = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_strings: Sequence[str] = (),
    ):  # noqa: ANN201 - GenerationOutput
        """Answer `prompts` about `images` on the compiled programs (greedy unless `do_sample=True`).

        `images`: for one prompt, an image or a list of images; for several prompts, one entry (an image, a list,
        or None) per prompt. Images are PIL images, file paths or `[H, W, C]` arrays. Returns a `GenerationOutput`
        with `perf_metrics.vision_s` (the vision program's time) added.
        """
        from QEfficient.generation.sampling import SamplingParams

        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompt_list:
            raise ValueError("generate() needs at least one prompt.")
        nested = isinstance(images, (list, tuple)) and len(images) == 1 and isinstance(images[0], (list, tuple))
        if len(prompt_list) == 1 and not nested:  # one prompt: an image or a list of images
            per_prompt = [images]
        else:  # one entry per prompt
            per_prompt = list(images) if images is not None else [None] * len(prompt_list)
        if len(per_prompt) != len(prompt_list):
            raise ValueError(
                f"Got {len(per_prompt)} image entries for {len(prompt_list)} prompts; give one per prompt."
            )
        processor = processor or self.processor
        pairs = enumerate(zip(prompt_list, per_prompt))
        prepared = [self.prepare(images, prompt, processor, chat, i) for i, (prompt, images) in pairs]
        sampling = SamplingParams(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        out = self._generate_rows(
            [ids for ids, _ in prepared],
            [inputs for _, inputs in prepared],
            generation_len,
            sampling,
            stop_strings,
            streamer,
            getattr(processor, "tokenizer", processor),
        )
        out.prompts = prompt_list
        return out

    def _generate_rows(
        self,
        rows: Sequence[Sequence[int]],
        image_inputs: Sequence[dict[str, np.ndarray] | None],
        generation_len: int | None,
        sampling: Any = None,
        stop_strings: Sequence[str] = (),
        streamer: Any = None,
        tokenizer: Any = None,
        runtime: str = "compiled",
    ):  # noqa: ANN202 - GenerationOutput
        """Generate for tokenised prompts with their image inputs, on the two programs or the single one; the vision
        program's time is added to `perf_metrics` (`vision_s`, and within TTFT and the total)."""
        from QEfficient.generation.text_generation import TextGenerator

        rows = [[int(t) for t in ids] for ids in rows]
        prepare = self._cross_attention_inputs if self.cross_layers else self._placeholder_inputs
        inputs, vision_s = prepare(rows, image_inputs, runtime)
        if self.single is None:
            generator = self.language.text_generator(tokenizer=tokenizer)
        else:
            program = self.single.program
            generator = TextGenerator.with_settings(program, tokenizer, program.manifest["generation"])
        out = generator.generate(rows, generation_len, sampling, stop_strings, streamer, False, **inputs)
        out.perf_metrics.vision_s = vision_s
        out.perf_metrics.ttft_s += vision_s
        out.perf_metrics.total_s += vision_s
        return out

    def _placeholder_inputs(
        self, rows: list[list[int]], image_inputs: Sequence[dict[str, np.ndarray] | None], runtime: str
    ) -> tuple[dict[str, Any], float]:
        """The generator's inputs for a model whose image features replace placeholder tokens: per prompt its
        per-token features (and, for the single program, its prefill image inputs); and the vision program's time."""
        features, prompt_inputs, vision_s = [], [], 0.0
        for i, (ids, inputs) in enumerate(zip(rows, image_inputs)):
            if self.single is None:
                t0 = time.perf_counter()
                image_features = self.image_features(inputs, runtime) if inputs else None
                vision_s += time.perf_counter() - t0
                features.append(self.token_features(ids, image_features, inputs, i))
            else:
                features.append(self.token_features(ids, None, inputs, i, images_in_program=True))
                prompt_inputs.append(self._single_prompt_inputs(ids, inputs, i))
        return {"token_features": features, "prompt_inputs": prompt_inputs or None}, vision_s

    def _cross_attention_inputs(
        self, rows: list[list[int]], image_inputs: Sequence[dict[str, np.ndarray] | None], runtime: str
    ) -> tuple[dict[str, Any], float]:
        """The generator's inputs for a cross-attention model: per prompt with images, the vision program's cross keys
        and values become its cache row's initial `past_cross_key.{i}` / `past_cross_value.{i}`, and the processor's
        `cross_attention_mask` its per-token input (a prompt without images: zeros for both, which gives HF's
        result with the cross-attention layers skipped); and the vision program's time."""
        if runtime not in ("compiled", "pytorch"):
            raise ValueError(f"runtime must be 'compiled' or 'pytorch'; got {runtime!r}.")
        features, initial, vision_s = [], [], 0.0
        for i, (ids, inputs) in enumerate(zip(rows, image_inputs)):
            images = {name: v for name, v in (inputs or {}).items() if name not in PER_TOKEN_INPUTS}
            count = sum(t == self.image_token_id for t in ids)
            if not images:
                if count:
                    raise ValueError(f"Prompt {i} has image tokens but no image was given.")
                features.append(None)
                initial.append(None)
                continue
            self.vision.check_geometry(images)  # the compiled image count above all
            mask = (inputs or {}).get("cross_attention_mask")
            expected = (1, len(ids), *self.vision.mask_shape)
            if mask is None or tuple(np.shape(mask)) != expected:
                raise ValueError(
                    f"Prompt {i} needs its cross_attention_mask {expected} ([1, tokens, images, tiles], as the "
                    f"processor makes it); got {None if mask is None else tuple(np.shape(mask))}. Prompts with images "
                    f"have exactly the compiled {self.num_images} image(s)."
                )
            if count != self.num_images:
                raise ValueError(
                    f"Prompt {i} has {count} image tokens for the {self.num_images} image(s) its inputs hold: put one "
                    "image token per image in the prompt."
                )
            t0 = time.perf_counter()
            cross = self.vision.run(images) if runtime == "compiled" else self.vision.pytorch(images)
            vision_s += time.perf_counter() - t0
            initial.append({f"past_{name}": value for name, value in cross.items()})
            features.append({"cross_attention_mask": np.asarray(mask, dtype=np.float32)[0]})
        return {"token_features": features, "initial_state": initial}, vision_s

    def _single_prompt_inputs(self, ids: Sequence[int], image_inputs: dict[str, np.ndarray] | None, index: int):  # noqa: ANN202
        """The single program's prefill image inputs for one prompt (zeros of the compiled shapes for a prompt
        without images), after checking that the prompt fits one prefill chunk."""
        chunk = self.language.compile_config["prefill_seq_len"]
        if len(ids) > chunk:
            raise ValueError(
                f"Prompt {index} has {len(ids)} tokens; with kv_offload=False the vision encoder runs in the prefill "
                f"graph, which takes a whole prompt of up to prefill_seq_len={chunk} tokens. Compile with "
                f"prefill_seq_len >= {len(ids)}, or use kv_offload=True."
            )
        names = self.vision.model.input_names
        text = text_inputs(names)
        dtypes = {n: np.int64 if n in text else np.float32 for n in names}
        if not image_inputs:
            return {n: np.zeros(self.vision.example_shapes[n], dtype=dtypes[n]) for n in names}
        image_inputs = self.vision.fit_text_inputs(image_inputs)
        self.vision.check_geometry(image_inputs)
        return {n: np.asarray(image_inputs[n], dtype=dtypes[n]) for n in names}

    def generate_ids(
        self,
        input_ids: Sequence[Sequence[int]],
        image_inputs: Sequence[dict[str, np.ndarray] | None],
        generation_len: int | None = None,
        runtime: str = "compiled",
    ) -> list[list[int]]:
        """Greedy tokens for prompts already tokenised with their image placeholders expanded (as the processor
        does), with each prompt's image inputs: the path validation and the sweep use."""
        return self._generate_rows(input_ids, image_inputs, generation_len, runtime=runtime).generated_ids


