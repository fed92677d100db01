"""A server in a subprocess on a free loopback port, as a user starts it: for the server tests and the load benchmark.

The process runs in its own process group with its output in a log file; `wait_ready` polls a URL (bounded) and
fails with the log's end if the process exits first; `stop` ends the whole group (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server subprocess in its own process group, logging to a file; `stop` ends the group."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.command, self.log_path = name, command, log_path
        self.health_codes: list[int] = []  # the answers `wait_ready` saw, in order
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        """Everything the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_ready(self, url: str, timeout_s: float) -> None:
        """Poll `url` until it answers 200; raise if the process exits or `timeout_s` passes."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before it was ready; the end of its log "
                    f"({self.log_path}):\n{self.log_tail()}"
                )
            try:
                self.health_codes.append(httpx.get(url, timeout=5.0, trust_env=False).status_code)
                if self.health_codes[-1] == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready within {timeout_s:.0f} s; its log ({self.log_path}):\n"
                           f"{self.log_tail()}")  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
            except ProcessLookupError:
                pass
        self.log.close()
