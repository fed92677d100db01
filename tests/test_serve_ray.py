"""`qeff serve --ray`: two Ray Serve replicas of the OpenAI server behind one port, driven by the official client.

The server runs as `qeff serve` does, in a subprocess (with its own, private, local Ray instance); the test talks to
it over 127.0.0.1 only, and ends it (and every process Ray started under it) whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'qefficient[ray]'")
openai = pytest.importorskip("openai")
psutil = pytest.importorskip("psutil")

STARTUP_S = 300  # the first replica converts the GGUF and compiles; the second then loads from the cache
PROMPTS = ("What is the capital of France?", "Name three primary colors.")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"qeff serve --ray exited with {proc.returncode} before /health answered:\n{log.read_text()}")
        if _health(port) == 200:
            return
        time.sleep(1.0)
    pytest.fail(f"/health did not answer 200 within {STARTUP_S} s:\n{log.read_text()}")


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

    port = _free_port()
    log = tmp_path / "qeff-serve-ray.log"
    env = {**os.environ, "QEFF_HOME": str(qeff_home), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # a private local Ray instance, never a cluster someone runs on this machine
    command = [sys.executable, "-m", "QEfficient.cli.main", "serve", "--ray", "--replicas", "2", "--threads", "1",
               "--slots", "2", "--ctx-len", "256", "--port", str(port)]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(proc, port, log)
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
        output = log.read_text()
        assert code == 0, f"qeff serve --ray did not end cleanly on Ctrl-C ({code}):\n{output}"
        assert not leftovers, f"Ray processes outlived the server: {leftovers}"
        assert ready_message(f"http://127.0.0.1:{port}", model, None) in output, output
        assert len(output.splitlines()) < 10, f"Ray's logs reached the terminal:\n{output}"
    finally:
        if proc.poll() is None:
            _stop(proc, timeout=30)
