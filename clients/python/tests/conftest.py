"""Shared fixtures: the fedgate binary (``$FEDGATE_BIN``), `fedgate init` domains, and process
management for the end-to-end tests (every process started here is stopped here, by pid)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from fedgate_agent import BundleSet, SigningKey, X509Svid, load_bundles, load_svid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # clients/python
EXAMPLES = ROOT / "examples"


def _bin() -> str | None:
    b = os.environ.get("FEDGATE_BIN")
    if not b:
        return None
    p = Path(b)
    if not p.is_absolute():
        # CI passes target/debug/fedgate relative to the repository root.
        for base in (Path.cwd(), ROOT.parent.parent):
            if (base / p).exists():
                return str((base / p).resolve())
    return str(p)


@pytest.fixture(scope="session")
def fedgate_bin() -> str:
    b = _bin()
    if b is None or not Path(b).exists():
        if os.environ.get("FEDGATE_REQUIRE_BIN"):
            pytest.fail(f"FEDGATE_BIN={os.environ.get('FEDGATE_BIN')!r} does not exist")
        pytest.skip("FEDGATE_BIN is not set (the fedgate binary, e.g. target/debug/fedgate)")
    return b


def run_fedgate(binary: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"fedgate {' '.join(args)} exited {r.returncode}: {r.stderr}{r.stdout}")
    return r


@dataclass
class Domain:
    """An ``fedgate init`` directory."""

    td: str
    dir: Path

    @property
    def bundles_dir(self) -> Path:
        return self.dir / "bundles"

    @property
    def bundles(self) -> BundleSet:
        return load_bundles(self.bundles_dir)

    def agent(self, name: str) -> X509Svid:
        return load_svid(self.dir / "agents" / f"{name}.pem", self.dir / "agents" / f"{name}.key")

    def agent_id(self, name: str) -> str:
        return f"spiffe://{self.td}/agent/{name}"

    def key(self, name: str) -> SigningKey:
        return SigningKey.from_file(self.dir / "keys" / f"{name}.key")


def init_domain(binary: str, out: Path, td: str, *agents: str) -> Domain:
    args = ["init", "--trust-domain", td, "--out", str(out)]
    for a in agents:
        args += ["--agent", a]
    run_fedgate(binary, *args)
    return Domain(td, out)


@pytest.fixture(scope="session")
def company(fedgate_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Domain:
    return init_domain(
        fedgate_bin, tmp_path_factory.mktemp("co") / "company.com", "company.com", "planning/p1", "inventory/i1"
    )


@pytest.fixture(scope="session")
def impostor(fedgate_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Domain:
    """Another CA claiming company.com: its SVIDs are not company.com's."""
    return init_domain(
        fedgate_bin, tmp_path_factory.mktemp("imp") / "company.com", "company.com", "planning/p1"
    )


@pytest.fixture(scope="session")
def vendor(fedgate_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Domain:
    return init_domain(
        fedgate_bin, tmp_path_factory.mktemp("ve") / "vendor.example", "vendor.example", "analytics/a1"
    )


def issue(binary: str, d: Domain, *, to: str, scope: str, task: str = "t1", ttl: str = "1h", human: str = "alice@company.com") -> str:
    return run_fedgate(
        binary, "chain", "issue", "--dir", str(d.dir), "--human", human, "--to", to,
        "--scope", scope, "--task", task, "--ttl", ttl,
    ).stdout.strip()


def binary_verify(binary: str, bundles: Path, chain: str, tmp: Path, *extra: str) -> dict[str, Any]:
    f = tmp / f"chain-{time.monotonic_ns()}.txt"
    f.write_text(chain)
    r = run_fedgate(binary, "chain", "verify", "--bundles", str(bundles), "--chain", str(f), "--json", *extra, check=False)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


# ---- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log and log.exists() else ""
            raise AssertionError(f"process exited {proc.returncode} before listening on {port}:\n{text[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Processes:
    """Processes started by a test; stopped (TERM, then KILL) by their pid, never by name."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.logdir / f"{name}.log"
        f = log.open("wb")
        p = subprocess.Popen(
            args,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        f.close()
        self.procs.append((name, p))
        return p, log

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 8
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs.clear()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    ps = Processes(tmp_path)
    try:
        yield ps
    finally:
        ps.stop()


def uvicorn_args(module: str, app_dir: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", f"{module}:app", "--app-dir", str(app_dir),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]


def copytree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
