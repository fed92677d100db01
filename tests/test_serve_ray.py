"""`qeff serve --ray`: two Ray Serve replicas of the OpenAI server behind one port, driven by the official client.

The server runs as `qeff serve` does, in a subprocess (with its own, private, local Ray instance); the test talks to
it over 127.0.0.1 only, and ends it (and every process Ray started under it) whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import openai
import psutil
import pytest

from QEfficient.serving.process import ServerProcess, free_port

STARTUP_S = 300  # the first replica converts the GGUF and compiles; the second then loads from the cache
PROMPTS = ("What is the capital of France?", "Name three primary colors.")


def _stop(proc: subprocess.Popen, timeout: float) -> tuple[int | None, list]:
    """Ctrl-C the server; kill it (and what Ray left) if it does not end. Its exit code and the survivors."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(descendants, timeout=30)
    for leftover in alive:
        leftover.kill()
    psutil.wait_procs(alive, timeout=10)
    return code, alive


async def _chat_round(port: int) -> tuple[str, list[tuple[str, str, str]]]:
    """The served model's name, and 8 concurrent greedy chats: (prompt, replica id, text) each."""
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        model = (await client.models.list()).data[0].id

        async def ask(prompt: str) -> tuple[str, str, str]:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=16
            )
            return prompt, raw.headers["x-qeff-replica"], raw.parse().choices[0].message.content

        return model, list(await asyncio.gather(*(ask(PROMPTS[i % len(PROMPTS)]) for i in range(8))))
    finally:
        await client.close()


@pytest.mark.slow  # 87-101 s on 2 busy cores: a GGUF conversion, an export and a compile, then two loads
def test_ray_serve_two_replicas(qeff_home: Path, tmp_path: Path) -> None:
    """`qeff serve --ray --replicas 2`: both replicas answer, identically; Ctrl-C ends Serve and Ray cleanly."""
    from QEfficient.cli.serve import ready_message

    port = free_port()
    env = {**os.environ, "QEFF_HOME": str(qeff_home), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # a private local Ray instance, never a cluster someone runs on this machine
    command = [sys.executable, "-m", "QEfficient.cli.main", "serve", "--ray", "--replicas", "2", "--threads", "1",
               "--slots", "2", "--ctx-len", "256", "--port", str(port)]  # fmt: skip
    server = ServerProcess("qeff serve --ray", command, tmp_path / "qeff-serve-ray.log", env)
    proc = server.process
    try:
        server.wait_ready(f"http://127.0.0.1:{port}/health", STARTUP_S)
        answers: list[tuple[str, str, str]] = []
        for _ in range(3):  # Ray routes to the replica with the shorter queue: a round of 8 normally uses both
            model, round_answers = asyncio.run(_chat_round(port))
            answers += round_answers
            if len({replica for _, replica, _ in answers}) == 2:
                break
        replicas = {replica for _, replica, _ in answers}
        assert len(replicas) == 2, f"every request went to one replica: {answers}"
        texts = defaultdict(set)
        for prompt, _, text in answers:
            texts[prompt].add(text)
        for prompt, seen in texts.items():
            assert len(seen) == 1 and next(iter(seen)), f"{prompt!r} got different (or empty) answers: {seen}"

        code, leftovers = _stop(proc, timeout=90)
        output = server.output()
        assert code == 0, f"qeff serve --ray did not end cleanly on Ctrl-C ({code}):\n{output}"
        assert not leftovers, f"Ray processes outlived the server: {leftovers}"
        assert ready_message(f"http://127.0.0.1:{port}", model, None) in output, output
        assert len(output.splitlines()) < 10, f"Ray's logs reached the terminal:\n{output}"
    finally:
        if proc.poll() is None:
            _stop(proc, timeout=30)
        server.log.close()
