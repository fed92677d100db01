"""Causal LMs on tiny random configs: the compiled program's greedy tokens equal HF `generate`'s exactly."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.generation.text_generation import plan_chunks
from tests.tiny_models import DECODER_TYPES, hf_greedy, tiny_decoder

SHORT = "hello world"  # shorter than prefill_seq_len
LONG = "the capital of france is a city with a long history, many museums and even more people living there"
NEW_TOKENS = 24


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_greedy_tokens_match_hf(model_type: str, tokenizer) -> None:
    hf = tiny_decoder(model_type)
    expected = [hf_greedy(hf, tokenizer, p) for p in (SHORT, LONG)]
    assert len(tokenizer(LONG)["input_ids"]) > 16  # past the sliding window (8) and two prefill chunks

    model = QEFFAutoModelForCausalLM(hf)
    model.compile(prefill_seq_len=8, ctx_len=64, batch_size=2)
    out = model.generate(tokenizer, [SHORT, LONG], generation_len=NEW_TOKENS)
    assert out.generated_ids == expected
    assert out.finish_reasons == ["length", "length"]

    model.compile(prefill_seq_len=8, ctx_len=64, batch_size=1)
    assert model.generate(tokenizer, [LONG], generation_len=NEW_TOKENS).generated_ids == expected[1:]


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_continuous_batching_matches_running_alone(model_type: str, tokenizer) -> None:
    hf = tiny_decoder(model_type)
    prompts = [SHORT, LONG, "a third prompt", LONG + " and more", "five"]
    lengths = [5, 24, 11, 17, 9]
    expected = [hf_greedy(hf, tokenizer, p, n) for p, n in zip(prompts, lengths)]
    model = QEFFAutoModelForCausalLM(hf, continuous_batching=True)
    model.compile(prefill_seq_len=8, ctx_len=64, full_batch_size=2)
    outputs = [model.generate(tokenizer, prompts, generation_len=n).generated_ids[i] for i, n in enumerate(lengths)]
    assert outputs == expected
    together = model.generate(tokenizer, prompts, generation_len=24)
    assert [ids[:n] for ids, n in zip(together.generated_ids, lengths)] == [e for e in expected]


def test_more_prompts_than_batch_run_in_rounds(tokenizer) -> None:
    hf = tiny_decoder("qwen3")
    prompts = [SHORT, LONG, "three", "four four"]
    model = QEFFAutoModelForCausalLM(hf)
    model.compile(prefill_seq_len=8, ctx_len=64, batch_size=3)
    out = model.generate(tokenizer, prompts, generation_len=10)
    assert out.generated_ids == [hf_greedy(hf, tokenizer, p, 10) for p in prompts]


def test_several_prefill_widths_take_the_fewest_chunks(tokenizer) -> None:
    """`prefill_seq_len=(4, 16)`: each chunk is the narrowest width that holds the rest of the prompt, else the widest;
    the tokens equal HF's, alone, batched and under continuous batching."""
    hf = tiny_decoder("gemma2")  # sliding layers: a wide chunk's window mask is exercised too
    prompts = [SHORT, LONG, LONG + " " + LONG]
    expected = [hf_greedy(hf, tokenizer, p, 8) for p in prompts]
    model = QEFFAutoModelForCausalLM(hf)
    model.compile(prefill_seq_len=[16, 4], ctx_len=96, batch_size=1)
    generator = model.text_generator(tokenizer=tokenizer)
    assert model.compile_config["prefill_seq_lens"] == [4, 16]
    # a chunk costs its width + 20 tokens: [4] (24) beats [16] (36), [4, 4] (48) does not
    assert [generator.chunk_plan(n) for n in (3, 4, 5, 16, 17, 21, 40)] == [
        [4], [4], [16], [16], [16, 4], [16, 16], [16, 16, 16]
    ]
    assert plan_chunks(37, [32, 128]) == [32, 32] and plan_chunks(100, [32, 128]) == [128]
    assert plan_chunks(140, [32, 128]) == [128, 32] and plan_chunks(512, [32, 128]) == [128] * 4
    assert sorted(spec["seq_len"] for spec in model.program.specializations) == [1, 4, 16]
    assert [model.generate(tokenizer, [p], generation_len=8).generated_ids[0] for p in prompts] == expected

    model.compile(prefill_seq_len=(4, 16), ctx_len=96, batch_size=3)
    assert model.generate(tokenizer, prompts, generation_len=8).generated_ids == expected

    cb = QEFFAutoModelForCausalLM(hf, continuous_batching=True)
    cb.compile(prefill_seq_len=(4, 16), ctx_len=96, full_batch_size=2)
    assert cb.generate(tokenizer, prompts, generation_len=8).generated_ids == expected

    with pytest.raises(ValueError, match="must divide the next wider one; got \\[4, 6, 12\\]"):
        model.compile(prefill_seq_len=(6, 12, 4), ctx_len=96)
    with pytest.raises(ValueError, match="positive int or a sequence"):
        model.compile(prefill_seq_len=(4, 0), ctx_len=96)
    with pytest.raises(ValueError, match="prefill_seq_len \\(128\\) must not exceed ctx_len \\(96\\)"):
        model.compile(prefill_seq_len=(4, 128), ctx_len=96)


@pytest.fixture(scope="module")
def llama(tokenizer) -> QEFFAutoModelForCausalLM:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"), tokenizer=tokenizer)
    model.compile(prefill_seq_len=8, ctx_len=32, batch_size=1)
    return model


def test_context_full_stops_cleanly(llama, tokenizer) -> None:
    prompt = " ".join(["word"] * 25)
    n_prompt = len(tokenizer(prompt)["input_ids"])
    out = llama.generate(prompts=[prompt], generation_len=100)
    assert out.finish_reasons == ["ctx_full"]
    assert len(out.generated_ids[0]) == 32 - n_prompt


def test_kv_cache_is_updated_in_place(llama) -> None:
    """Every KV buffer's retained output is written into the input's own memory: one buffer per layer, no copy."""
    program = llama.program
    assert program.in_place_state == set(program.state_names())
    state = program.new_state({"batch_size": 1, "seq_len": 1})
    before = dict(state.current)
    program.run_with_state({"input_ids": np.array([[5]]), "position_ids": np.array([[0]])}, state)
    assert all(state.current[name] is before[name] for name in state.names)
    assert np.abs(state.numpy()["past_key.0"][0, :, 0]).sum() > 0  # the write landed in that buffer


def test_writing_past_ctx_len_is_an_error(llama) -> None:
    program = llama.program
    state = program.new_state({"batch_size": 1, "seq_len": 1})
    with pytest.raises(Exception, match="(?i)out of range|out of bounds"):
        program.run_with_state({"input_ids": np.array([[5]]), "position_ids": np.array([[32]])}, state)


def test_eos_and_stop_strings(llama, tokenizer) -> None:
    free = llama.generate(prompts=[SHORT], generation_len=12).generated_ids[0]
    eos_model = QEFFAutoModelForCausalLM(tiny_decoder("llama"), tokenizer=tokenizer)
    eos_model.hf_model.generation_config.eos_token_id = free[3]
    eos_model.compile(prefill_seq_len=8, ctx_len=32)
    out = eos_model.generate(prompts=[SHORT], generation_len=12)
    assert out.finish_reasons == ["eos"] and out.generated_ids[0] == free[: free.index(free[3]) + 1]
    stop = tokenizer.decode(free[:3])[-3:]
    out = llama.generate(prompts=[SHORT], generation_len=12, stop_strings=[stop])
    assert out.finish_reasons == ["stop_string"] and len(out.generated_ids[0]) <= 3


def test_sampling_is_seeded_and_top_k_1_is_greedy(llama) -> None:
    greedy = llama.generate(prompts=[LONG], generation_len=10).generated_ids
    assert llama.generate(prompts=[LONG], generation_len=10, do_sample=True, top_k=1, seed=3).generated_ids == greedy
    a = llama.generate(prompts=[LONG], generation_len=10, do_sample=True, temperature=1.5, top_p=0.9, seed=7)
    b = llama.generate(prompts=[LONG], generation_len=10, do_sample=True, temperature=1.5, top_p=0.9, seed=7)
    assert a.generated_ids == b.generated_ids


def test_streamer_receives_every_token(llama, tokenizer) -> None:
    class Collect:
        def __init__(self) -> None:
            self.chunks: list[list[int]] = []
            self.ended = False

        def put(self, value) -> None:
            self.chunks.append(list(np.asarray(value).reshape(-1)))

        def end(self) -> None:
            self.ended = True

    streamer = Collect()
    out = llama.generate(prompts=[SHORT], generation_len=6, streamer=streamer)
    assert streamer.chunks[0] == tokenizer(SHORT)["input_ids"]  # the prompt first, as transformers' generate
    assert [c[0] for c in streamer.chunks[1:]] == out.generated_ids[0] and streamer.ended


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": [""]}, "Prompt 0 is empty"),
        ({"prompts": [" ".join(["word"] * 40)]}, "ctx_len is 32"),
        ({"prompts": [SHORT], "generation_len": 0}, "generation_len must be a positive"),
        ({"prompts": []}, "at least one prompt"),
        ({"prompts": [SHORT], "temperature": 0.0, "do_sample": True}, "temperature must be > 0"),
    ],
)
def test_bad_generate_input(llama, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        llama.generate(**kwargs)


def test_bad_compile_input(tokenizer) -> None:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="prefill_seq_len \\(64\\) must not exceed ctx_len \\(32\\)"):
        model.compile(prefill_seq_len=64, ctx_len=32)
    with pytest.raises(ValueError, match="continuous_batching=True"):
        model.compile(prefill_seq_len=8, ctx_len=32, full_batch_size=4)
    with pytest.raises(RuntimeError, match="not compiled"):
        model.generate(prompts=[SHORT])


def test_tokenizer_without_pad_token(llama, tokenizer) -> None:
    no_pad = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    with_pad = llama.generate(prompts=[LONG], generation_len=8).generated_ids
    assert llama.generate(no_pad, prompts=[LONG], generation_len=8).generated_ids == with_pad


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_decoder("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_validate_causal_lm_table(tiny_lm_dir) -> None:
    from QEfficient import validate

    report = validate(str(tiny_lm_dir), sentences=[SHORT, LONG])
    table = report.table()
    assert report.passed, table
    assert "exact greedy tokens" in table
    assert [s.stage for s in report.stages] == [
        "HF generate",
        "transformed PyTorch",
        "ONNX Runtime",
        "compiled program",
    ]


def test_qeff_infer_and_reference_entry_point(tiny_lm_dir, capsys) -> None:
    from QEfficient.cli.main import main
    from QEfficient.cloud.infer import main as cloud_infer

    hf = tiny_decoder("llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    expected = tokenizer.decode(hf_greedy(hf, tokenizer, LONG, 12), skip_special_tokens=True).strip()
    assert (
        main(
            [
                "infer",
                "--model",
                str(tiny_lm_dir),
                "--prompt",
                LONG,
                "--prompt-len",
                "8",
                "--ctx-len",
                "64",
                "--generation-len",
                "12",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"answer: {expected}" in out and "decode" in out and "tokens/s" in out and "program: " in out
    assert (
        cloud_infer(
            [
                "--model_name",
                str(tiny_lm_dir),
                "--prompt",
                f"{SHORT}|{LONG}",
                "--prompt_len",
                "8",
                "--ctx_len",
                "64",
                "--generation_len",
                "12",
                "--batch_size",
                "2",
                "--num_cores",
                "16",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert f"answer: {expected}" in captured.out and captured.out.count("answer: ") == 2
    assert "num_cores" in captured.err  # accepted, and said to be ignored


def test_qeff_infer_streams(tiny_lm_dir, capsys) -> None:
    from QEfficient.cli.main import main

    for extra in ([], ["--full-batch-size", "2"]):
        assert (
            main(
                [
                    "infer",
                    "--model",
                    str(tiny_lm_dir),
                    "--prompt",
                    SHORT,
                    "--prompt-len",
                    "8",
                    "--ctx-len",
                    "32",
                    "--generation-len",
                    "5",
                    "--stream",
                    *extra,
                ]
            )
            == 0
        )
        assert "(stopped: length)" in capsys.readouterr().out
    assert main(["infer", "--model", str(tiny_lm_dir), "--prompt", f"{SHORT}|{LONG}", "--stream"]) == 2
    assert "one prompt" in capsys.readouterr().err


def test_grouped_attention_is_used_without_touching_the_hf_model(tokenizer) -> None:
    hf = tiny_decoder("llama")
    loaded = hf.config._attn_implementation
    model = QEFFAutoModelForCausalLM(hf)
    assert model.model.attention == "qeff_grouped"  # no repeat_kv copies of the cache in the graph
    assert hf.config._attn_implementation == loaded
    assert hf_greedy(hf, tokenizer, LONG, 8) == hf_greedy(tiny_decoder("llama"), tokenizer, LONG, 8)


def test_stream_iterator(llama, tokenizer) -> None:
    pieces = list(llama.stream(LONG, generation_len=10))
    expected = llama.generate(prompts=[LONG], generation_len=10).generated_texts[0]
    assert "".join(pieces).strip() == expected.strip() and len(pieces) > 1
    with pytest.raises(ValueError, match="generation_len must be a positive"):
        list(llama.stream(LONG, generation_len=0))


def test_prefill_and_decode_share_one_session(llama) -> None:
    program = llama.program
    assert [s["seq_len"] for s in program.specializations] == [8, 1]
    assert program.pinned_dims == {"batch_size": 1}  # seq_len stays symbolic: one session, one copy of weights
    assert program.session() is program.session()


@pytest.mark.parametrize("model_type", ["deepseek_v32", "hy_v4"])
def test_sparse_indexed_attention_keeps_indexer_keys(model_type: str, tmp_path) -> None:
    """DeepSeek Sparse Attention with a top-k (4) far below ctx_len: the indexer keys are retained state too.

    Enough indexer heads that no key scores exactly 0 (relu of every head), which would leave the top-k to
    tie-breaking; hy_v4 also has a layer that reuses the previous layer's selection and attention sinks.
    """
    from transformers import AutoModelForCausalLM

    from QEfficient.sweep.checks import build_tiny, sweep_prompts
    from QEfficient.validation import validate_causal_lm

    _, hf = build_tiny(AutoModelForCausalLM, model_type, index_topk=4, index_n_heads=16)
    hf.save_pretrained(tmp_path)
    model = QEFFAutoModelForCausalLM.from_pretrained(tmp_path)
    assert "past_indexer_key.0" in model.model.past_names()
    assert "past_indexer_key.0_RetainedState" in model.model.output_names()
    report = validate_causal_lm(model, sweep_prompts(), None, generation_len=24, prefill_seq_len=8, ctx_len=64)
    assert report.passed, report.table()


def test_compiled_program_runs_on_its_own(llama, tokenizer) -> None:
    """`TextGenerator.from_program(dir)` gives the model's own tokens, in a process that never imports torch."""
    import json
    import subprocess
    import sys

    from QEfficient.generation.text_generation import TextGenerator

    expected = llama.generate(prompts=[LONG], generation_len=8).generated_ids
    assert TextGenerator.from_program(llama.program_path, tokenizer).generate([LONG], 8).generated_ids == expected
    ids = tokenizer(LONG)["input_ids"]
    script = (
        "import json, sys\n"
        "from QEfficient.generation.text_generation import TextGenerator\n"
        f"out = TextGenerator.from_program({str(llama.program_path)!r}).generate([{ids!r}], 8)\n"
        "print(json.dumps({'ids': out.generated_ids, 'torch': 'torch' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"ids": expected, "torch": False}


def test_opening_something_that_is_not_a_program(llama, tmp_path) -> None:
    from QEfficient.backends import open_program

    with pytest.raises(FileNotFoundError, match="No compiled program"):
        open_program(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a compiled program"):
        open_program(llama.onnx_path.parent)  # the export, not a program
