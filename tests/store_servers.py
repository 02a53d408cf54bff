"""Throwaway servers for the shared-store tests: a PostgreSQL cluster and an `mlflow server` on it.

    with postgres_cluster(["mlflow", "optuna"]) as pg:    # pg.url("optuna"): postgresql://s2s@127.0.0.1:PORT/optuna
        with mlflow_server(pg.url("mlflow"), artifacts, log) as uri:  # http://127.0.0.1:PORT
            ...

Both bind 127.0.0.1 on a free port, live in temporary directories, and are stopped (and their
directories removed) when the block ends, also on failure. The cluster uses Debian's binaries
(`apt-get install postgresql`: scripts/setup.sh), found on PATH or in /usr/lib/postgresql/<v>/bin.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

USER = "s2s"  # the cluster's superuser; trust authentication on 127.0.0.1 only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and Path(found).resolve().with_name("pg_ctl").exists():
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0])
    return versions[-1].parent if versions else None


def _run_as() -> dict:
    """Popen arguments that drop root: initdb and postgres refuse to run as root. Debian's package makes a
    `postgres` user; a bare system still has `nobody`."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


@dataclass
class Cluster:
    port: int
    dir: Path

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def postgres_cluster(databases: list[str]):
    """A fresh cluster with `databases` created, stopped and deleted afterwards."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL's initdb is neither on PATH nor in /usr/lib/postgresql/*/bin: run "
                           "scripts/setup.sh (it installs Debian's postgresql package)")
    as_user = _run_as()
    # Not pytest's tmp_path: that lies under a root-only directory the unprivileged server cannot enter.
    root = Path(tempfile.mkdtemp(prefix="s2s-pg-"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    kw = {**as_user, "cwd": root, "capture_output": True, "text": True,
          "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(root)}}
    data, sock, port = root / "data", root / "sock", free_port()
    started = False
    try:
        _check(subprocess.run([bindir / "initdb", "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
                              timeout=120, **kw))
        sock.mkdir()
        if as_user:
            os.chown(sock, as_user["user"], as_user["group"])
        # fsync off: a throwaway cluster, and the test measures s2s, not the disk
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} -c fsync=off"
        started = True
        _check(subprocess.run([bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", opts, "-w", "-t", "60",
                               "start"], timeout=90, **kw), root / "server.log")
        import psycopg

        with psycopg.connect(f"postgresql://{USER}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            for db in databases:
                conn.execute(f'CREATE DATABASE "{db}"')
        yield Cluster(port, root)
    finally:
        if started:
            subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "-t", "30", "stop"],
                           timeout=60, **kw)
        shutil.rmtree(root, ignore_errors=True)


def _check(proc: subprocess.CompletedProcess, log: Path | None = None) -> None:
    if proc.returncode != 0:
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{proc.args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}{tail}")


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, log: Path, timeout: float = 180):
    """`mlflow server` on `backend` (artifacts proxied into the directory `artifacts`), yielding its
    http URI once /health answers; its whole process group is stopped afterwards."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend,
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    out = log.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout  # the first start creates MLflow's tables: ~25 s on 2 cores
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {proc.returncode}: {log.read_text()[-3000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"mlflow server not answering after {timeout:.0f} s: {log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{uri}/health", timeout=2).ok:
                    break
            time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
