"""`rulesctl up`: runs the service's processes in the foreground with one prefixed log stream."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from worker.errors import CommandFailed, WorkerError


class AlreadyRunning(WorkerError):
    """Another `rulesctl up` holds the data directory."""


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the service: its name in the log, its command, and how to tell it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool] | None = None
    env: dict[str, str] = field(default_factory=dict)


class InstanceLock:
    """An exclusive lock on `<data_dir>/up.lock`, so that two `rulesctl up` never share a data directory."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._path = data_dir / "up.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Takes the lock or raises AlreadyRunning naming the holder's pid."""
        handle = open(self._path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(f"rulesctl up is already running on {self._path.parent} (pid {holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Gives the lock back."""
        if self._file:
            self._file.close()
            self._file = None


class Supervisor:
    """Starts processes, prefixes each line they print with their name, and stops them all together."""

    def __init__(self, out: IO[str] = sys.stdout) -> None:
        self._out = out
        self._print_lock = threading.Lock()
        self._children: list[tuple[ProcessSpec, subprocess.Popen]] = []
        self._width = 12

    def log(self, name: str, line: str) -> None:
        """Writes one line to the shared stream under `name`."""
        with self._print_lock:
            self._out.write(f"{name:<{self._width}}| {line.rstrip()}\n")
            self._out.flush()

    def start(self, spec: ProcessSpec, env: dict[str, str], timeout: float = 60.0) -> None:
        """Starts `spec` and waits until its readiness check passes; raises CommandFailed if it dies or is late."""
        process = subprocess.Popen(
            spec.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, **spec.env},
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._children.append((spec, process))
        threading.Thread(target=self._pump, args=(spec.name, process), daemon=True).start()
        deadline = time.monotonic() + timeout
        while spec.ready and not spec.ready():
            if process.poll() is not None:
                raise CommandFailed(f"{spec.name} exited with code {process.returncode} while starting")
            if time.monotonic() > deadline:
                raise CommandFailed(f"{spec.name} was not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def _pump(self, name: str, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.log(name, line)

    def wait(self) -> str:
        """Blocks until a child exits or SIGINT/SIGTERM arrives; returns what ended the wait."""
        stop = threading.Event()
        reason: list[str] = []

        def on_signal(signum: int, _frame: object) -> None:
            reason.append(signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.5):
                for spec, process in self._children:
                    if process.poll() is not None:
                        return f"{spec.name} exited with code {process.returncode}"
            return reason[0]
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop_all(self, grace: float = 10.0) -> None:
        """Asks every child to stop (SIGTERM to the child itself, last started first: a Celery worker then finishes
        or requeues the task in hand), then kills what is left of each child's process group after `grace` seconds."""
        for _spec, process in reversed(self._children):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for spec, process in reversed(self._children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(spec.name, "did not stop in time; killed")
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """Stops a process started in a session of its own: SIGTERM to its group, SIGKILL after `grace` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
