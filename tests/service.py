"""Running the service's processes for tests: workers, Flower, a disposable PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests


def wait_for(condition, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{message} not met within {timeout} s")


class Process:
    """A command in its own process group, logging to a file."""

    def __init__(self, command: list[str], log: Path, env: dict | None = None) -> None:
        self.log = log
        self.handle = log.open("ab")
        self.process = subprocess.Popen(
            command, stdout=self.handle, stderr=subprocess.STDOUT, env=env or dict(os.environ), start_new_session=True
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 30, group: bool = True) -> None:
        """SIGTERM to the whole process group, or (``group=False``) to the main process only, as an orchestrator
        stopping a container does; SIGKILL after ``timeout`` seconds."""
        if group:
            self.signal(signal.SIGTERM)
        elif self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(10)
        self.handle.close()


class Workers(Process):
    """``python -m workers --processes N`` on the CPU."""

    def __init__(self, log: Path, processes: int = 1, env: dict | None = None) -> None:
        super().__init__([sys.executable, "-m", "workers", "--processes", str(processes)], log, env)
        self.processes = processes

    def wait_ready(self, timeout: float = 90) -> Workers:
        wait_for(lambda: self.output().count(" ready.") >= self.processes, timeout, message="workers ready")
        return self


class Flower(Process):
    def __init__(self, log: Path, port: int, env: dict, *args: str) -> None:
        super().__init__([sys.executable, "-m", "mei_service.cli", "flower", "--port", str(port), *args], log, env)
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, auth: tuple[str, str] | None) -> requests.Response:
        return requests.get(self.url + path, auth=auth, timeout=10)

    def answers(self, auth: tuple[str, str]) -> bool:
        try:
            return self.get("/api/workers", auth).status_code == 200
        except OSError:
            return False


class DisposablePostgres:
    """A PostgreSQL server of our own on another port, to stop and start; owned by the postgres user."""

    def __init__(self, port: int) -> None:
        # Outside pytest's private temporary folders, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="mei-test-postgres-"))
        self.directory = self.root / "data"
        self.port = port
        self.bin = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
        subprocess.run(["chown", "postgres", str(self.root)], check=True)
        self._as_postgres("initdb", "-D", str(self.directory), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _as_postgres(self, program: str, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", str(self.bin / program), *args]
        subprocess.run(command, check=True, capture_output=True, cwd="/tmp")

    def start(self) -> None:
        options = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1"
        self._as_postgres(
            "pg_ctl", "-D", str(self.directory), "-o", options, "-l", str(self.directory / "log"), "-w", "start"
        )

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", str(self.directory), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
