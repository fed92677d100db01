"""LoRA adapters as program inputs (docs/lora.md): parity with peft for one adapter and for several in one batch (tiny
configs of several families, every reference causal family of the sweep, continuous batching), switching adapters
with no re-export or recompile, the CLI, and clear errors. Adapters are real peft adapters, saved with
`save_pretrained` with a non-zero B."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from QEfficient import QEFFAutoLoraModelForCausalLM, QEFFAutoPeftModelForCausalLM
from QEfficient.cli.main import main
from QEfficient.generation.quality import hf_perplexity, perplexity
from QEfficient.generation.text_generation import TextGenerator
from QEfficient.peft import AdapterError
from QEfficient.sweep.checks import build_tiny, sweep_prompts
from QEfficient.sweep.report import REFERENCE_FAMILIES
from QEfficient.sweep.tiny_configs import tiny_config
from QEfficient.validation import _hf_greedy
from tests.tiny_models import DECODER_CONFIGS, tiny_decoder

NEW_TOKENS = 8
PROMPTS = [[5, 17, 300, 42, 7, 99], [1000, 2000, 3], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]]


def _gemma3(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("gemma3_text", initializer_range=0.2)).eval()


# family -> (base model factory, the modules the second adapter targets)
FAMILIES: dict[str, tuple[Callable[[], torch.nn.Module], list[str]]] = {
    "llama": (lambda: tiny_decoder("llama"), ["q_proj", "v_proj"]),
    "qwen2": (lambda: tiny_decoder("qwen2"), ["k_proj", "o_proj", "down_proj"]),
    "mistral": (lambda: tiny_decoder("mistral"), ["gate_proj", "up_proj"]),
    "gemma2": (lambda: tiny_decoder("gemma2"), ["q_proj", "down_proj"]),
    "gemma3": (_gemma3, ["v_proj", "up_proj"]),
    "phi3": (lambda: tiny_decoder("phi3"), ["qkv_proj", "o_proj"]),  # fused q/k/v and gate/up
}


def save_adapter(folder: Path, base: torch.nn.Module, seed: int, **config) -> Path:  # noqa: ANN003
    """A peft LoRA adapter of `base` with random A and B (init_lora_weights=False), saved to `folder`."""
    torch.manual_seed(seed)
    config = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "init_lora_weights": False, **config}
    get_peft_model(base, LoraConfig(**config)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Path]]:
    """Per family: its base model folder and two adapters, `a` (rank 8, all linear modules, rsLoRA off) and `b`
    (rank 4, some modules, an alpha pattern)."""
    made: dict[str, dict[str, Path]] = {}

    def get(family: str) -> dict[str, Path]:
        if family not in made:
            root = tmp_path_factory.mktemp(f"lora_{family}")
            make, targets = FAMILIES[family]
            make().save_pretrained(root / "base")
            made[family] = {
                "base": root / "base",
                "a": save_adapter(root / "a", make(), seed=1),
                "b": save_adapter(
                    root / "b", make(), seed=2, r=4, lora_alpha=8, target_modules=targets, alpha_pattern={targets[0]: 3}
                ),
            }
        return made[family]

    return get


def reference(family: str, adapter: Path | None) -> torch.nn.Module:
    """The family's base model, with `adapter` applied by peft (None: the base model alone)."""
    base = FAMILIES[family][0]()
    return base if adapter is None else PeftModel.from_pretrained(base, adapter).eval()


def hf_greedy(model: torch.nn.Module, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def program_logits(model: QEFFAutoLoraModelForCausalLM, prompt: list[int], slot: int | list[int]) -> np.ndarray:
    """The compiled program's logits after prefilling `prompt` (one chunk) with adapter slot `slot`; with a list of
    slots, on one row per slot in one step: [rows, vocab]."""
    slots = slot if isinstance(slot, list) else [slot]
    program, chunk, rows = model.program, model.compile_config["prefill_seq_len"], len(slots)
    state = program.new_state({"batch_size": rows, "seq_len": 1})
    ids, positions = np.zeros((rows, chunk), np.int64), np.full((rows, chunk), -1, np.int64)
    ids[:, : len(prompt)], positions[:, : len(prompt)] = prompt, np.arange(len(prompt))
    inputs = {"input_ids": ids, "position_ids": positions, "adapter_ids": np.array(slots).reshape(rows, 1)}
    logits = program.run_with_state(inputs, state)["logits"][:, -1]
    return logits if isinstance(slot, list) else logits[0]


def hf_logits(model: torch.nn.Module, prompt: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0, -1].numpy()


def program_files(path: Path) -> dict[str, float]:
    return {str(f): f.stat().st_mtime for f in path.rglob("*") if f.is_file()}


# ---- one adapter at a time: peft's interface ------------------------------------------------------------------------


def test_peft_model_switches_adapters_on_one_program(family_dirs) -> None:
    """Logits equal peft's (1e-5) for each adapter and for the base model; load_adapter, set_adapter and
    disable_adapter reuse the same compiled program (its path and files' mtimes do not change)."""
    dirs = family_dirs("llama")
    model = QEFFAutoPeftModelForCausalLM.from_pretrained(dirs["a"], base_model=str(dirs["base"]))
    assert model.active_adapter == "default"
    path = model.compile(prefill_seq_len=16, ctx_len=48, max_lora_rank=8)
    onnx, files = model.onnx_path, program_files(path)
    prompt = PROMPTS[0]
    peft_a, peft_b, base = reference("llama", dirs["a"]), reference("llama", dirs["b"]), reference("llama", None)

    np.testing.assert_allclose(program_logits(model, prompt, 0), hf_logits(peft_a, prompt), atol=1e-5, rtol=0)
    assert model.generate(prompts=[prompt], generation_len=NEW_TOKENS).generated_ids[0] == hf_greedy(peft_a, prompt)

    model.load_adapter(dirs["b"], "b")
    model.set_adapter("b")
    assert model.generate(prompts=[prompt], generation_len=NEW_TOKENS).generated_ids[0] == hf_greedy(peft_b, prompt)
    np.testing.assert_allclose(program_logits(model, prompt, 0), hf_logits(peft_b, prompt), atol=1e-5, rtol=0)

    with model.disable_adapter():
        out = model.generate(prompts=[prompt], generation_len=NEW_TOKENS)
        assert out.generated_ids[0] == hf_greedy(base, prompt)
    np.testing.assert_allclose(program_logits(model, prompt, -1), hf_logits(base, prompt), atol=1e-5, rtol=0)
    assert model.active_adapter == "b"
    out = model.generate(prompts=[prompt], generation_len=NEW_TOKENS, adapter_name="default")
    assert out.generated_ids[0] == hf_greedy(peft_a, prompt)
    assert model.program_path == path and model.onnx_path == onnx and program_files(path) == files

    bare = TextGenerator.from_program(path)  # the program alone: its adapter weights are not bound
    with pytest.raises(ValueError, match="LoRA adapter weights \\(lora_a.model.layers.0.*not bound.*bind_constants"):
        bare.generate([prompt], generation_len=2)

    text = [t for p in PROMPTS for t in p]  # perplexity steps run on the active adapter ("b")
    assert perplexity(model, text) == pytest.approx(hf_perplexity(peft_b, text), rel=1e-5)


def test_merged_adapter_gives_the_same_logits(family_dirs) -> None:
    """peft's merged model (merge_and_unload) is the same function as the adapter applied on the fly (up to the
    rounding of W + BA: 1e-5 relative)."""
    dirs = family_dirs("llama")
    model = QEFFAutoPeftModelForCausalLM.from_pretrained(dirs["b"], base_model=str(dirs["base"]))
    model.compile(prefill_seq_len=16, ctx_len=48)
    merged = reference("llama", dirs["b"]).merge_and_unload()
    for prompt in PROMPTS:
        np.testing.assert_allclose(program_logits(model, prompt, 0), hf_logits(merged, prompt), atol=1e-5, rtol=1e-5)


# ---- several adapters in one batch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_prompt_of_a_batch_runs_its_own_adapter(family: str, family_dirs) -> None:
    """Three prompts of one batch on adapters a, b and none: each one's greedy tokens equal peft's for that adapter
    alone (b has a lower rank and other modules: zero padded)."""
    dirs = family_dirs(family)
    model = QEFFAutoLoraModelForCausalLM.from_pretrained(str(dirs["base"]))
    model.load_adapter(dirs["a"], "a")
    model.load_adapter(dirs["b"], "b")
    model.compile(prefill_seq_len=8, ctx_len=40, batch_size=3)
    assert model.lora_slots.layout.slots == 2 and model.lora_slots.layout.max_rank == 8
    vocab = model.hf_model.config.vocab_size
    prompts = [[t % vocab for t in p] for p in PROMPTS]
    names = ["a", "b", None]
    out = model.generate(prompts=prompts, generation_len=NEW_TOKENS, adapter_names=names)
    for prompt, name, got in zip(prompts, names, out.generated_ids):
        assert got == hf_greedy(reference(family, dirs[name] if name else None), prompt), (family, name)


# ---- every reference family of the sweep ------------------------------------------------------------------------

# config fields holding an MoE model's expert count (the sweep's tiny configs set them)
EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
# what the MoE families' adapters target: the attention projections (their experts are fused parameters)
ATTENTION_PROJECTIONS = r".*self_attn\.\w*proj\w*"


def _is_moe(config) -> bool:  # noqa: ANN001
    return any(getattr(config, field, None) for field in EXPERT_COUNTS)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", list(REFERENCE_FAMILIES.values()))
def test_lora_on_every_reference_family(model_type: str, tmp_path: Path) -> None:
    """The sweep's tiny model of each reference causal family (built and seeded as the sweep builds it) with two peft
    adapters of ranks 8 and 4 on all linear modules (MoE families: on the attention projections): a batch on
    adapters a, b and none gives each prompt the greedy tokens of peft's model for that adapter alone, and of the
    base model for none; one prefill step with a row per adapter gives their logits (5e-5).

    An MoE family's "all-linear" adapter, where peft extends it to the fused experts and router
    (`target_parameters`), is refused at load with an AdapterError that says so."""
    config, model = build_tiny(AutoModelForCausalLM, model_type)
    model.save_pretrained(tmp_path / "base")
    del model

    def base() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()

    targets = ATTENTION_PROJECTIONS if _is_moe(config) else "all-linear"
    dirs = {
        "a": save_adapter(tmp_path / "a", base(), seed=1, target_modules=targets),
        "b": save_adapter(tmp_path / "b", base(), seed=2, r=4, lora_alpha=8, target_modules=targets),
    }
    model = QEFFAutoLoraModelForCausalLM.from_pretrained(str(tmp_path / "base"))
    model.load_adapter(dirs["a"], "a")
    model.load_adapter(dirs["b"], "b")
    if targets != "all-linear":
        everything = save_adapter(tmp_path / "all", base(), seed=3)
        if json.loads((everything / "adapter_config.json").read_text()).get("target_parameters"):
            with pytest.raises(AdapterError, match=r"target_parameters .*MoE experts"):
                model.load_adapter(everything, "all")
    model.compile(prefill_seq_len=8, ctx_len=32, batch_size=3)
    assert model.lora_slots.layout.modules  # LoRA inputs for the targeted modules

    prompts, names = [*sweep_prompts(), [40, 41, 42, 43]], ["a", "b", None]
    out = model.generate(prompts=prompts, generation_len=4, adapter_names=names)
    plain = base()
    references = {name: PeftModel.from_pretrained(base(), folder).eval() for name, folder in dirs.items()}
    references[None] = plain
    for prompt, name, got in zip(prompts, names, out.generated_ids):
        assert got == _hf_greedy(references[name], prompt, 4), (model_type, name)

    short = sweep_prompts()[1]  # fits one prefill chunk
    logits = program_logits(model, short, [model.lora_slots.slot_of(name) for name in names])
    for row, name in enumerate(names):
        expected = hf_logits(references[name], short)
        np.testing.assert_allclose(logits[row], expected, atol=5e-5, rtol=0, err_msg=f"{model_type} {name}")
        if name is not None:  # the adapter changes the model: the comparison is not the base model's twice
            assert np.abs(expected - hf_logits(plain, short)).max() > 1e-2, (model_type, name)


def test_continuous_batching_keeps_each_request_on_its_adapter(family_dirs) -> None:
    """Four requests over two cache rows: each request keeps its adapter in whichever row it is admitted to."""
    dirs = family_dirs("llama")
    model = QEFFAutoLoraModelForCausalLM.from_pretrained(str(dirs["base"]), continuous_batching=True)
    model.load_adapter(dirs["a"], "a")
    model.load_adapter(dirs["b"], "b")
    model.compile(prefill_seq_len=8, ctx_len=40, full_batch_size=2)
    prompts, names = [*PROMPTS, [7, 8, 9]], ["b", None, "a", "b"]
    out = model.generate(prompts=prompts, generation_len=NEW_TOKENS, adapter_names=names)
    for prompt, name, got in zip(prompts, names, out.generated_ids):
        assert got == hf_greedy(reference("llama", dirs[name] if name else None), prompt), name


def test_adapters_take_turns_in_fewer_slots(family_dirs) -> None:
    """With one slot, each generate call writes the adapter it needs into it (no recompile); two at once is an
    error that says how to compile."""
    dirs = family_dirs("llama")
    model = QEFFAutoLoraModelForCausalLM.from_pretrained(str(dirs["base"]))
    model.load_adapter(dirs["a"], "a")
    model.load_adapter(dirs["b"], "b")
    path = model.compile(prefill_seq_len=8, ctx_len=40, max_adapters=1)
    for name in ("b", "a", "b"):
        got = model.generate(prompts=[PROMPTS[1]], generation_len=NEW_TOKENS, adapter_name=name).generated_ids[0]
        assert got == hf_greedy(reference("llama", dirs[name]), PROMPTS[1])
        assert model.lora_slots.resident == [name]
    with pytest.raises(AdapterError, match=r"2 adapters are used at once .* max_adapters=1"):
        model.generate(prompts=PROMPTS[:2], adapter_names=["a", "b"])
    assert model.program_path == path


# ---- the CLI --------------------------------------------------------------------------------------------------------


def test_cli_infer_with_adapters(family_dirs, minilm_path: str, capsys) -> None:
    """`qeff infer --adapter NAME=PATH ... --prompt-adapter NAME` (one per prompt, 'none' for the base model) prints
    what generate gives."""
    dirs = family_dirs("llama")
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(dirs["base"])
    prompts, names = ["hello world", "the weather is", "good morning"], ["b", "none", "a"]
    argv = ["infer", "--model", str(dirs["base"]), "--adapter", f"a={dirs['a']}", "--adapter", f"b={dirs['b']}"]
    argv += [x for p, n in zip(prompts, names) for x in ("--prompt", p, "--prompt-adapter", n)]
    argv += ["--prompt-len", "8", "--ctx-len", "32", "--generation-len", "4", "--batch-size", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    model = QEFFAutoLoraModelForCausalLM.from_pretrained(str(dirs["base"]))
    model.load_adapter(dirs["a"], "a")
    model.load_adapter(dirs["b"], "b")
    model.compile(prefill_seq_len=8, ctx_len=32, batch_size=3)
    expected = model.generate(prompts=prompts, generation_len=4, adapter_names=["b", None, "a"]).generated_texts
    for prompt, name, text in zip(prompts, ["b", "none (base model)", "a"], expected):
        assert f"prompt: {prompt}\nadapter: {name}\nanswer: {text.strip()}\n" in printed
    assert main([*argv[:7], "--prompt", "x", "--prompt-adapter", "c"]) != 0
    assert "--prompt-adapter names unknown adapter(s) ['c']; the adapters are ['a', 'b']" in capsys.readouterr().err


# ---- errors ---------------------------------------------------------------------------------------------------------


def test_clear_errors(family_dirs, tmp_path: Path) -> None:
    dirs = family_dirs("llama")
    narrow = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("llama", **{**DECODER_CONFIGS["llama"], "hidden_size": 32})
    )
    other = save_adapter(tmp_path / "other", narrow, seed=3)  # a llama of another width
    gpt2 = save_adapter(tmp_path / "gpt2", tiny_decoder("gpt2"), seed=3, target_modules=["c_attn"])
    model = QEFFAutoLoraModelForCausalLM.from_pretrained(str(dirs["base"]))
    with pytest.raises(AdapterError, match="No LoRA adapter is loaded"):
        model.compile(prefill_seq_len=8, ctx_len=32)
    with pytest.raises(
        AdapterError,
        match=r"does not fit module 'model\.layers\.0\.mlp\.down_proj': its LoRA maps 128 -> 32 features, the "
        r"base module 128 -> 64",
    ):
        model.load_adapter(other, "other")
    with pytest.raises(AdapterError, match=r"targets module 'transformer\.h\.0\.attn\.c_attn', which LlamaForCausalLM"):
        model.load_adapter(gpt2, "gpt2")
    model.load_adapter(dirs["b"], "b")
    with pytest.raises(AdapterError, match="named 'b' is loaded already"):
        model.load_adapter(dirs["b"], "b")
    with pytest.raises(AdapterError, match=r"rank 4, above max_lora_rank 2"):
        model.compile(prefill_seq_len=8, ctx_len=32, max_lora_rank=2)
    model.compile(prefill_seq_len=8, ctx_len=32)  # rank 4, b's modules
    with pytest.raises(AdapterError, match=r"Unknown adapter 'c'; loaded adapters: \['b'\]"):
        model.generate(prompts=[PROMPTS[0]], adapter_name="c")
    with pytest.raises(AdapterError, match="Unknown adapter 'c'"):
        model.set_adapter("c")
    with pytest.raises(
        AdapterError,
        match=r"targets \['model\.layers\.0\.mlp\.down_proj'.*which the compiled program has no LoRA inputs for",
    ):
        model.load_adapter(dirs["a"], "a")  # all-linear: modules b does not target
    rank8 = save_adapter(tmp_path / "rank8", tiny_decoder("llama"), seed=4, target_modules=["q_proj"])
    with pytest.raises(AdapterError, match=r"rank 8, above the compiled max_lora_rank 4.*max_lora_rank=8"):
        model.load_adapter(rank8, "rank8")
    with pytest.raises(ValueError, match="adapter_names has 1 entries for 2 prompts"):
        model.generate(prompts=PROMPTS[:2], adapter_names=["b"])

    for config, kind in (
        (IA3Config(target_modules=["k_proj", "down_proj"]), "IA3"),
        (PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"), "PREFIX_TUNING"),
    ):
        folder = tmp_path / kind
        get_peft_model(tiny_decoder("llama"), config).save_pretrained(folder)
        with pytest.raises(AdapterError, match=rf"holds a {kind} adapter.*only LoRA"):
            QEFFAutoPeftModelForCausalLM.from_pretrained(folder, base_model=str(dirs["base"]))
    dora = save_adapter(tmp_path / "dora", tiny_decoder("llama"), seed=5, use_dora=True)
    with pytest.raises(AdapterError, match="DoRA"):
        model.load_adapter(dora, "dora")
    unnamed = json.loads((dirs["b"] / "adapter_config.json").read_text())
    (tmp_path / "unnamed").mkdir()
    (tmp_path / "unnamed" / "adapter_config.json").write_text(json.dumps({**unnamed, "base_model_name_or_path": None}))
    with pytest.raises(AdapterError, match="pass base_model="):
        QEFFAutoPeftModelForCausalLM.from_pretrained(tmp_path / "unnamed")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        model.load_adapter(tmp_path, "nothing")


# ---- serving --------------------------------------------------------------------------------------------------------


def test_serve_runs_each_request_on_its_adapter(family_dirs, minilm_path: str, tmp_path: Path) -> None:
    """`qeff serve --adapter a=... --adapter b=...` (a real server in a subprocess, the official client): each adapter
    is a model of its own in /v1/models, and a request naming it gets the completion `generate` gives on that adapter
    alone (peft's, by the tests above), concurrently with requests on the other adapter and on the base model."""
    import concurrent.futures

    import openai

    from QEfficient.serving.process import ServerProcess, free_port

    dirs = family_dirs("llama")
    base = tmp_path / "base"  # the base model with a tokenizer, as a server loads it
    tiny_decoder("llama").save_pretrained(base)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(base)
    model = QEFFAutoLoraModelForCausalLM.from_pretrained(str(base))
    model.load_adapter(dirs["a"], "a")
    model.load_adapter(dirs["b"], "b")
    model.compile(prefill_seq_len=8, ctx_len=64)
    prompt = "the capital of france is"
    expected = {
        name: model.generate(prompts=[prompt], generation_len=6, adapter_name=None if name == "base" else name)
        .generated_texts[0]
        for name in ("a", "b", "base")
    }
    assert len(set(expected.values())) == 3  # the adapters change the answer

    port = free_port()
    command = [sys.executable, "-m", "QEfficient.cli.main", "serve", "--model", str(base), "--port", str(port),
               "--ctx-len", "64", "--slots", "3", "--prompt-len", "8", "--served-model-name", "base",
               "--adapter", f"a={dirs['a']}", "--adapter", f"b={dirs['b']}"]  # fmt: skip
    server = ServerProcess("qeff serve", command, tmp_path / "serve.log")
    try:
        server.wait_ready(f"http://127.0.0.1:{port}/health", 600)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        listed = {card.id: card for card in client.models.list().data}
        assert set(listed) == {"base", "a", "b"} and listed["a"].model_extra["parent"] == "base"

        def complete(name: str) -> str:
            out = client.completions.create(model=name, prompt=prompt, max_tokens=6, temperature=0)
            return out.choices[0].text

        names = [*expected, *expected]  # each twice, all at once over 3 cache rows: one prompt, three answers
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            assert list(pool.map(complete, names)) == [expected[name] for name in names]
        with pytest.raises(openai.NotFoundError, match="'c'"):
            client.completions.create(model="c", prompt="x", max_tokens=2)
    finally:
        server.stop()
