"""A real redis-server and real `locus serve` gateway processes on loopback, for tests and benchmarks.

    with RedisServer() as redis_url:              # its own instance on an ephemeral port
        with Gateways(config_path, count=3) as gateways:
            gateways.urls                          # http://127.0.0.1:PORT per replica

redis-server is the Debian package (scripts/setup.sh installs it). Without it these fail with a
message naming the package: a missing Redis is never a skipped test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
REDIS_SERVER = os.environ.get("LOCUS_REDIS_SERVER", "/usr/bin/redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_binary() -> str:
    path = REDIS_SERVER if Path(REDIS_SERVER).exists() else shutil.which("redis-server")
    if not path:
        raise RuntimeError(
            f"redis-server not found at {REDIS_SERVER} nor on PATH: the state-backend tests need "
            "a real Redis. Install the Debian package (apt-get install redis-server; "
            "scripts/setup.sh does) or point LOCUS_REDIS_SERVER at the binary."
        )
    return path


class RedisServer:
    """redis-server on 127.0.0.1:<ephemeral>, no persistence; `kill()`, `pause()`, `resume()`."""

    def __init__(self) -> None:
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self, port: int | None = None) -> None:
        binary = redis_binary()
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in 10 s")

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the port stays open and nothing answers (a hung Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)


class Gateways:
    """`count` processes of `locus serve --config <config>` on loopback ports."""

    def __init__(
        self,
        config: Path,
        count: int,
        *,
        env: dict[str, str] | None = None,
        startup_timeout: float = 120.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.count = count
        self.env = env or {}
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args
        self.urls: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self._folder = Path(tempfile.mkdtemp(prefix="locus-gateways-"))

    def __enter__(self) -> Gateways:
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
            **self.env,
        }
        try:
            for i in range(self.count):
                port = free_port()
                log = self._folder / f"replica-{i}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "locus_llm.cli",
                            "serve",
                            "--config",
                            str(self.config),
                            "--port",
                            str(port),
                            *self.extra_args,
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=REPO,
                    )
                self.processes.append(process)
                self.urls.append(f"http://127.0.0.1:{port}")
                self.logs.append(log)
            for i in range(self.count):
                self.wait_healthy(i)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def wait_healthy(self, i: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.processes[i].poll() is not None:
                raise RuntimeError(
                    f"replica {i} exited with {self.processes[i].returncode}:\n"
                    f"{self.log(i)[-3000:]}"
                )
            try:
                if httpx.get(self.urls[i] + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"replica {i} did not answer /health in {self.startup_timeout:.0f} s:"
            f"\n{self.log(i)[-3000:]}"
        )

    def log(self, i: int) -> str:
        return self.logs[i].read_text(encoding="utf-8", errors="replace")

    def kill(self, i: int) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed."""
        self.processes[i].kill()
        self.processes[i].wait(10)

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(self._folder, ignore_errors=True)
