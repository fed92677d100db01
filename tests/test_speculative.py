"""Speculative decoding (docs/speculative_decoding.md): the verify step's logits, greedy parity with plain decoding for
prompt lookup and a draft model (tiny configs, continuous batching, SmolLM2), the rejection-sampling rule's output
distribution on a tiny vocabulary, the CLI, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import AutoConfig, AutoModelForCausalLM

from QEfficient import QEFFAutoModelForCausalLM
from QEfficient.generation.sampling import Sampler, SamplingParams
from QEfficient.generation.speculative import Draft, PromptLookupDrafter, accept_draft
from tests.tiny_models import DECODER_CONFIGS, hf_greedy, tiny_decoder

SHORT = "hello world"
LONG = "the capital of france is a city with a long history, many museums and even more people living there"
# repeats itself: prompt lookup finds n-grams to propose
REPEATED = "one two three four five six, one two three four five six, one two three four five"
PROMPTS = [SHORT, LONG, REPEATED]
NEW_TOKENS = 24
# proposes on one-token matches too: random tiny models rarely repeat two tokens of their input
EAGER_LOOKUP = PromptLookupDrafter(max_ngram=3, min_ngram=1)


@pytest.fixture(scope="module")
def llama_target(tokenizer) -> QEFFAutoModelForCausalLM:
    model = QEFFAutoModelForCausalLM(tiny_decoder("llama"), tokenizer=tokenizer)
    model.compile(prefill_seq_len=8, ctx_len=64, batch_size=2, num_speculative_tokens=4)
    return model


# ---- the target program: K + 1 logits per row ---------------------------------------------------------------------


def test_verify_step_returns_the_logits_of_every_position(llama_target, tokenizer) -> None:
    """A verify step of K + 1 columns gives each column's logits, equal to decoding the same tokens one by one; a
    right-padded row's valid columns end the logits; decode (S = 1) and prefill still give one row of logits per row,
    and a plain program keeps its `[B, 1, V]` logits."""
    program = llama_target.program
    assert {s["seq_len"] for s in program.specializations} == {8, 1, 2, 4, 5}
    assert llama_target.compile_config["num_speculative_tokens"] == 4
    prompt = tokenizer(LONG)["input_ids"][:6]
    tokens = [11, 2000, 3000, 4000, 5000]

    def prefilled():  # noqa: ANN202
        state = program.new_state({"batch_size": 2, "seq_len": 1})
        ids = np.zeros((2, 8), dtype=np.int64)
        positions = np.full((2, 8), -1, dtype=np.int64)
        ids[:, :6], positions[:, :6] = prompt, np.arange(6)
        logits = program.run_with_state({"input_ids": ids, "position_ids": positions}, state)["logits"]
        assert logits.shape[:2] == (2, 5)  # prefill: the last K + 1 columns up to the last valid one
        return state, logits[:, -1]

    state, last = prefilled()
    sequential = []
    for i, token in enumerate(tokens):
        run = {"input_ids": np.full((2, 1), token), "position_ids": np.full((2, 1), 6 + i)}
        logits = program.run_with_state(run, state)["logits"]
        assert logits.shape[:2] == (2, 1)  # decode: one row of logits
        sequential.append(logits[0, 0])
    state, last_again = prefilled()
    np.testing.assert_allclose(last, last_again, atol=1e-5)
    ids = np.array([tokens, [tokens[0], tokens[1], 0, 0, 0]])
    positions = np.array([np.arange(6, 11), [6, 7, -1, -1, -1]])
    verify = program.run_with_state({"input_ids": ids, "position_ids": positions}, state)["logits"]
    assert verify.shape[:2] == (2, 5)
    np.testing.assert_allclose(verify[0], np.stack(sequential), atol=1e-4)
    np.testing.assert_allclose(verify[1, -2:], np.stack(sequential[:2]), atol=1e-4)

    plain = QEFFAutoModelForCausalLM(tiny_decoder("llama"), tokenizer=tokenizer)
    plain.compile(prefill_seq_len=8, ctx_len=64, batch_size=2)
    assert plain.onnx_path != llama_target.onnx_path
    state = plain.program.new_state({"batch_size": 2, "seq_len": 1})
    run = {"input_ids": np.full((2, 8), 5), "position_ids": np.tile(np.arange(8), (2, 1))}
    assert plain.program.run_with_state(run, state)["logits"].shape[:2] == (2, 1)


# ---- greedy parity -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "qwen2"])
def test_greedy_output_equals_plain_decoding(model_type: str, tokenizer) -> None:
    """Both drafters, batch 2 (three prompts: two rounds), sliding-window layers included: HF's greedy tokens."""
    hf = tiny_decoder(model_type)
    expected = [hf_greedy(hf, tokenizer, p) for p in PROMPTS]
    target = QEFFAutoModelForCausalLM(hf, tokenizer=tokenizer)
    target.compile(prefill_seq_len=8, ctx_len=64, batch_size=2, num_speculative_tokens=4)
    lookup = target.generate(prompts=PROMPTS, generation_len=NEW_TOKENS, speculative=EAGER_LOOKUP)
    assert lookup.generated_ids == expected
    assert lookup.perf_metrics.draft_tokens > 0
    same = QEFFAutoModelForCausalLM(tiny_decoder(model_type), tokenizer=tokenizer)  # every draft accepted
    out = target.generate(prompts=PROMPTS, generation_len=NEW_TOKENS, draft_model=same, num_speculative_tokens=3)
    assert out.generated_ids == expected
    assert out.perf_metrics.acceptance_rate == 1.0 and out.perf_metrics.decode_tokens / out.perf_metrics.row_steps > 3
    other = QEFFAutoModelForCausalLM(tiny_decoder(model_type, seed=1), tokenizer=tokenizer)  # most rejected
    out = target.generate(prompts=PROMPTS, generation_len=NEW_TOKENS, speculative="draft", draft_model=other)
    assert out.generated_ids == expected
    assert out.finish_reasons == ["length"] * 3


def test_prompt_lookup_accepts_copied_text(llama_target, tokenizer) -> None:
    """A prompt that holds the model's own continuation: prompt lookup proposes it and the target accepts it."""
    ids = tokenizer(LONG)["input_ids"][:-1]  # without [SEP]
    continuation = llama_target.generate(prompts=[ids], generation_len=20).generated_ids[0]
    prompt = ids + continuation + ids
    plain = llama_target.generate(prompts=[prompt], generation_len=20)
    out = llama_target.generate(prompts=[prompt], generation_len=20, speculative="prompt_lookup")
    assert out.generated_ids == plain.generated_ids
    metrics = out.perf_metrics
    if plain.generated_ids[0][:5] == continuation[:5]:  # the model repeats itself: the drafts are right
        assert metrics.accepted_draft_tokens >= 4 and metrics.decode_tokens / metrics.row_steps > 1.5


def test_ctx_full_eos_and_stop_strings_with_speculation(llama_target, tokenizer) -> None:
    prompt = " ".join(["word"] * 50)
    plain = llama_target.generate(prompts=[prompt], generation_len=100)
    out = llama_target.generate(prompts=[prompt], generation_len=100, speculative="prompt_lookup")
    assert out.finish_reasons == plain.finish_reasons == ["ctx_full"]
    assert out.generated_ids == plain.generated_ids
    free = llama_target.generate(prompts=[LONG], generation_len=12).generated_ids[0]
    stop = tokenizer.decode(free[:3])[-3:]
    plain = llama_target.generate(prompts=[LONG], generation_len=12, stop_strings=[stop])
    out = llama_target.generate(prompts=[LONG], generation_len=12, stop_strings=[stop], speculative="prompt_lookup")
    assert out.finish_reasons == ["stop_string"] and out.generated_ids == plain.generated_ids


def test_continuous_batching(tokenizer) -> None:
    """Continuous batching with 2 cache rows and 5 prompts: rows finish at different steps and take the next prompt;
    each prompt's tokens are HF's, with prompt lookup and with draft models (the draft keeps its own cache rows)."""
    hf = tiny_decoder("llama")
    prompts = [SHORT, LONG, REPEATED, LONG + " and more", "five"]
    target = QEFFAutoModelForCausalLM(hf, continuous_batching=True, tokenizer=tokenizer)
    target.compile(prefill_seq_len=8, ctx_len=64, full_batch_size=2, num_speculative_tokens=3)
    expected = [hf_greedy(hf, tokenizer, p, 20) for p in prompts]
    out = target.generate(prompts=prompts, generation_len=20, speculative=EAGER_LOOKUP)
    assert out.generated_ids == expected and out.perf_metrics.draft_tokens > 0
    draft = QEFFAutoModelForCausalLM(tiny_decoder("llama", seed=1), continuous_batching=True, tokenizer=tokenizer)
    assert target.generate(prompts=prompts, generation_len=20, draft_model=draft).generated_ids == expected
    same = QEFFAutoModelForCausalLM(tiny_decoder("llama"), continuous_batching=True, tokenizer=tokenizer)
    out = target.generate(prompts=prompts[:3], generation_len=20, draft_model=same)
    assert out.generated_ids == expected[:3] and out.perf_metrics.acceptance_rate == 1.0


# ---- sampling: the rejection rule keeps the target's distribution -------------------------------------------------


def _chi_square_p_value(samples: list[int] | np.ndarray, probs: np.ndarray) -> float:
    """p-value of `samples` under the distribution `probs`: tokens of probability 0 must never occur; cells with an
    expected count under 5 are merged."""
    counts = np.bincount(np.asarray(samples), minlength=len(probs)).astype(float)
    assert counts[probs == 0].sum() == 0
    counts, expected = counts[probs > 0], probs[probs > 0] * len(samples)
    small = expected < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return float(stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue)


@pytest.mark.parametrize("point_mass", [False, True], ids=["draft_model", "prompt_lookup"])
def test_rejection_rule_keeps_the_target_distribution(point_mass: bool) -> None:
    """5-token vocabulary, 2 drafts: the first emitted token follows p0 and, after an accepted first draft, the
    second follows p1 (chi-square, fixed seed, 30 000 draws); top-k and temperature apply to both distributions."""
    rng = np.random.default_rng(0)
    target_logits = rng.normal(size=(3, 5)) * 1.5
    draft_logits = rng.normal(size=(2, 5)) * 1.5
    for params in (SamplingParams(do_sample=True, seed=1), SamplingParams(do_sample=True, temperature=0.7, top_k=4)):
        sampler = Sampler(params)
        p = sampler.probs(target_logits)
        q = None if point_mass else sampler.probs(draft_logits)
        firsts, seconds = [], []
        for _ in range(30_000):
            if point_mass:
                tokens = [1, 3]
            else:
                tokens = [int(sampler.rng.choice(5, p=q[0])), 0]
                tokens[1] = int(sampler.rng.choice(5, p=q[1]))
            out = accept_draft(target_logits, Draft(tokens, q), sampler)
            firsts.append(out[0])
            if out[0] == tokens[0] and len(out) > 1:
                seconds.append(out[1])
            if point_mass:
                assert len(out) == 1 or out[0] == 1
        assert _chi_square_p_value(firsts, p[0]) > 1e-3
        assert len(seconds) > 1000 and _chi_square_p_value(seconds, p[1]) > 1e-3
        # the marginal of the first token is p0: within a total-variation distance of 0.02
        assert 0.5 * np.abs(np.bincount(firsts, minlength=5) / len(firsts) - p[0]).sum() < 0.02


def test_greedy_rule_and_bonus_token() -> None:
    sampler = Sampler(SamplingParams())
    logits = np.eye(4)[[2, 1, 3]]  # argmax 2, 1, 3
    assert accept_draft(logits, Draft([2, 1]), sampler) == [2, 1, 3]
    assert accept_draft(logits, Draft([2, 0]), sampler) == [2, 1]
    assert accept_draft(logits, Draft([0, 1]), sampler) == [2]
    assert accept_draft(logits[:1], Draft([]), sampler) == [2]
    with pytest.raises(ValueError, match="rows of logits"):
        accept_draft(logits, Draft([2]), sampler)


TINY_VOCAB = 6


def _tiny_vocab_model(seed: int):  # noqa: ANN202
    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", **{**DECODER_CONFIGS["llama"], "vocab_size": TINY_VOCAB, "pad_token_id": 0})
    return AutoModelForCausalLM.from_config(config).eval()


def _exact_marginals(model, prompt: list[int], new_tokens: int) -> list[np.ndarray]:
    """The exact distribution of each generated token (temperature 1), summed over every earlier continuation."""
    marginals, prefixes = [], {(): 1.0}
    for _ in range(new_tokens):
        keys = list(prefixes)
        ids = torch.tensor([prompt + list(k) for k in keys])
        with torch.no_grad():
            probs = torch.softmax(model(ids).logits[:, -1].double(), dim=-1).numpy()
        marginal, following = np.zeros(TINY_VOCAB), {}
        for key, row in zip(keys, probs):
            marginal += prefixes[key] * row
            for token in range(TINY_VOCAB):
                following[(*key, token)] = prefixes[key] * row[token]
        marginals.append(marginal)
        prefixes = following
    return marginals


@pytest.mark.parametrize("drafter", ["prompt_lookup", "draft"])
def test_sampled_tokens_follow_the_model_end_to_end(drafter: str) -> None:
    """A 6-token vocabulary, 1200 copies of one prompt sampled through speculative decoding (K=2) in one call: the
    marginal distribution of generated tokens 2 to 4 (those the verify steps decide) is the model's (chi-square)."""
    hf = _tiny_vocab_model(0)
    prompt = [1, 2, 3, 4, 1, 2, 3]  # prompt lookup proposes continuations of "1 2 3"
    target = QEFFAutoModelForCausalLM(_tiny_vocab_model(0))
    target.compile(prefill_seq_len=8, ctx_len=16, batch_size=24, num_speculative_tokens=2)
    kwargs = {"speculative": "prompt_lookup"}
    if drafter == "draft":
        draft = QEFFAutoModelForCausalLM(_tiny_vocab_model(1))
        kwargs = {"draft_model": draft}
    out = target.generate(prompts=[prompt] * 1200, generation_len=4, do_sample=True, seed=0, **kwargs)
    assert out.perf_metrics.draft_tokens > 500 and 0 < out.perf_metrics.acceptance_rate < 1
    tokens = np.array(out.generated_ids)
    for position, marginal in enumerate(_exact_marginals(hf, prompt, 4)):
        assert _chi_square_p_value(tokens[:, position], marginal) > 1e-3, position


# ---- drafters -------------------------------------------------------------------------------------------------------


def test_prompt_lookup_drafter() -> None:
    lookup = PromptLookupDrafter(max_ngram=3, min_ngram=1)
    assert lookup.lookup([1, 2, 3, 4, 5, 1, 2, 3], 3) == [4, 5, 1]  # the longest suffix that occurs earlier
    assert lookup.lookup([1, 2, 9, 7, 2, 8, 2], 2) == [8, 2]  # the latest earlier occurrence
    assert lookup.lookup([1, 2, 3, 4, 1, 2], 10) == [3, 4, 1, 2]  # up to the end of the sequence
    assert lookup.lookup([1, 2, 3], 3) == []
    assert PromptLookupDrafter().lookup([5, 1, 9, 1], 2) == []  # min_ngram 2: a one-token match is not enough
    assert PromptLookupDrafter().lookup([5, 1, 9, 5, 1], 2) == [9, 5]
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookupDrafter(max_ngram=1, min_ngram=2)


# ---- errors ---------------------------------------------------------------------------------------------------------


def test_clear_errors(llama_target, tokenizer) -> None:
    generate = llama_target.generate
    for bad in (0, -1, "3", 2.0, True):
        with pytest.raises(ValueError, match="num_speculative_tokens must be an int >= 1"):
            generate(prompts=[SHORT], speculative="prompt_lookup", num_speculative_tokens=bad)
    with pytest.raises(ValueError, match="num_speculative_tokens must be an int >= 1"):
        QEFFAutoModelForCausalLM(tiny_decoder("llama")).compile(prefill_seq_len=8, ctx_len=32, num_speculative_tokens=0)
    with pytest.raises(ValueError, match="speculative must be one of"):
        generate(prompts=[SHORT], speculative="medusa")
    with pytest.raises(ValueError, match="needs draft_model"):
        generate(prompts=[SHORT], speculative="draft")
    with pytest.raises(ValueError, match="needs a drafter"):
        generate(prompts=[SHORT], num_speculative_tokens=3)
    with pytest.raises(ValueError, match="drafts without a model"):
        generate(prompts=[SHORT], speculative="prompt_lookup", draft_model=llama_target)
    with pytest.raises(ValueError, match="target model itself"):
        generate(prompts=[SHORT], draft_model=llama_target)
    with pytest.raises(TypeError, match="QEFFAutoModelForCausalLM"):
        generate(prompts=[SHORT], draft_model="a path")
    small_vocab = QEFFAutoModelForCausalLM(_tiny_vocab_model(0))
    with pytest.raises(ValueError, match="vocabulary has 6 tokens and the target's 30522"):
        generate(prompts=[SHORT], draft_model=small_vocab)
    batching = QEFFAutoModelForCausalLM(tiny_decoder("llama"), continuous_batching=True)
    with pytest.raises(ValueError, match="continuous_batching=False"):
        generate(prompts=[SHORT], draft_model=batching)
    uncompiled = QEFFAutoModelForCausalLM(tiny_decoder("llama"), tokenizer=tokenizer)
    with pytest.raises(RuntimeError, match="not compiled"):
        uncompiled.generate(prompts=[SHORT], speculative="prompt_lookup")


def test_generate_recompiles_for_a_wider_verify_step(tokenizer) -> None:
    """A target compiled without speculation (or for a smaller K) is compiled again with the same shapes."""
    hf = tiny_decoder("qwen3")
    model = QEFFAutoModelForCausalLM(hf, tokenizer=tokenizer)
    model.compile(prefill_seq_len=8, ctx_len=64, batch_size=1)
    out = model.generate(prompts=[LONG], generation_len=12, speculative="prompt_lookup", num_speculative_tokens=6)
    assert model.compile_config["num_speculative_tokens"] == 6 and model.compile_config["batch_size"] == 1
    assert out.generated_ids == [hf_greedy(hf, tokenizer, LONG, 12)]
    assert model.generate(prompts=[LONG], generation_len=12).generated_ids == out.generated_ids


# ---- CLI ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_llama_speculative")
    tiny_decoder("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_qeff_infer_speculative(tiny_lm_dir, tokenizer, capsys) -> None:
    from QEfficient.cli.main import main

    expected = tokenizer.decode(hf_greedy(tiny_decoder("llama"), tokenizer, REPEATED, 12), skip_special_tokens=True)
    common = ["infer", "--model", str(tiny_lm_dir), "--prompt", REPEATED, "--prompt-len", "8", "--ctx-len", "64"]
    common += ["--generation-len", "12"]
    assert main([*common, "--speculative", "prompt_lookup", "--num-speculative-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert f"answer: {expected.strip()}" in out and "speculative:" in out and "draft tokens accepted" in out
    assert main([*common, "--speculative", "draft", "--draft-model", str(tiny_lm_dir)]) == 0
    out = capsys.readouterr().out
    assert f"answer: {expected.strip()}" in out and "(100%)" in out
    assert main([*common, "--speculative", "draft"]) == 2
    assert "--speculative draft needs --draft-model" in capsys.readouterr().err
    assert main([*common, "--speculative", "prompt_lookup", "--num-speculative-tokens", "0"]) == 2
    assert "num_speculative_tokens must be an int >= 1" in capsys.readouterr().err
    assert main([*common, "--num-speculative-tokens", "3"]) == 2
    assert "need --speculative" in capsys.readouterr().err


# ---- SmolLM2 (real weights) ----------------------------------------------------------------------------------------

REWRITE = (
    "Repeat the following text exactly: The history of the city begins with a small fishing village on the river, "
    "where traders from the north and the south met every spring to exchange salt, wool and grain."
)


@pytest.mark.slow  # a SmolLM2 export and two compiles: about a minute on 2 busy cores
def test_smollm2_greedy_parity_with_both_drafters() -> None:
    """SmolLM2-135M-Instruct, fp32 target (K=6): prompt lookup on a rewrite prompt and a draft model (SmolLM2 itself
    at int8 weights) give HF's greedy tokens exactly; prompt lookup accepts most of the copied text."""
    from QEfficient.utils.default_models import default_causal_lm

    target = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    target.compile(prefill_seq_len=32, ctx_len=256, batch_size=1, num_speculative_tokens=6)
    tokenizer = target.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(tokenizer.name_or_path, dtype=torch.float32).eval()
    prompts = [REWRITE, "The capital of France is"]
    expected = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            generated = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False)
        expected.append(generated[0, ids.shape[1] :].tolist())
    lookup = target.generate(prompts=prompts, generation_len=48, chat=True, speculative="prompt_lookup")
    assert lookup.generated_ids == expected
    assert lookup.perf_metrics.acceptance_rate > 0.3
    draft = QEFFAutoModelForCausalLM.from_pretrained(default_causal_lm())
    draft.compile(prefill_seq_len=32, ctx_len=256, batch_size=1, weights="int8")
    out = target.generate(prompts=prompts, generation_len=48, chat=True, draft_model=draft, num_speculative_tokens=4)
    assert out.generated_ids == expected
    assert out.perf_metrics.acceptance_rate > 0.5
