"""`qeff serve` in a subprocess on a free loopback port, for the server tests (as a user starts it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`qeff serve ARGS --port P` running until `stop()`; its output is kept in `lines`."""

    def __init__(self, *args: str, timeout_s: float = 600.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "QEfficient.cli.main", "serve", *args, "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.health_codes: list[int] = []  # /health answers seen while waiting, in order
        self._wait_ready(timeout_s)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"qeff serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                code = httpx.get(f"{self.url}/health", timeout=5).status_code
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            self.health_codes.append(code)
            if code == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"qeff serve was not healthy after {timeout_s} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
