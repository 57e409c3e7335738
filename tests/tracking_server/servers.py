"""A throwaway PostgreSQL cluster and a team MLflow server over it, for tests and bench/tracking_bench.py.

`start_postgres` runs Debian's initdb and pg_ctl on a data folder of its own and a free loopback port
(as the `postgres` user when this runs as root: PostgreSQL refuses to run as root). `start_team_server`
starts the server the way docs/how-to/team-mlflow.md does, through `make mlflow-server`: PostgreSQL
behind it, artifacts proxied into a folder, basic-auth logins; every secret passes in the environment.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests

REPO = Path(__file__).resolve().parents[2]
SERVER_READY_S = 400  # `mlflow server` with basic-auth: ~15 s on a quiet machine, 3 min under load 40
DB_USER = "mlflow"  # the PostgreSQL role MLflow connects as; it owns both databases
ADMIN = "admin"  # the MLflow admin the auth app creates at its first start


def postgres_bin() -> Optional[Path]:
    """The newest Debian PostgreSQL's bin folder, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_owner(command: list[str]) -> list[str]:
    """PostgreSQL's programs refuse root: run them as `postgres` then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Postgres:
    root: Path  # holds data/ (the cluster), the server log and its socket
    port: int
    password: str  # DB_USER's; clients take it from PGPASSWORD, never from a URI
    bin: Path

    def uri(self, database: str = "mlflow") -> str:
        """The SQLAlchemy URI MLflow is given: psycopg 3, no password in it."""
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def run(self, program: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """A client program (psql, pg_dump, createdb…) against this cluster as DB_USER."""
        command = [str(self.bin / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, *args]
        return subprocess.run(command, env=self.env(), check=True, capture_output=True, text=True, **kwargs)

    def pg_ctl(self, *args: str) -> None:
        command = [str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), *args]
        subprocess.run(_as_owner(command), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self.pg_ctl("-l", str(self.root / "postgres.log"), "-w", "-t", "120", "-o", options, "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")


def start_postgres(databases: tuple[str, ...] = ("mlflow", "mlflow_auth")) -> Postgres:
    """A new cluster with password logins over TCP (scram-sha-256) and `databases` owned by DB_USER."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, "PostgreSQL is not installed (apt-get install postgresql)"
    root = Path(tempfile.mkdtemp(prefix="pneumo-postgres-"))  # under /tmp: the postgres user must reach it
    password = secrets.token_urlsafe(16)
    (root / "password").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "password", "postgres", "postgres")
    initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", DB_USER, f"--pwfile={root / 'password'}"]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]
    subprocess.run(_as_owner(initdb), check=True, capture_output=True, timeout=300)
    (root / "password").unlink()
    cluster = Postgres(root, free_port(), password, bin_dir)
    cluster.start()
    for database in databases:
        cluster.run("createdb", database)
    return cluster


def remove_postgres(cluster: Postgres) -> None:
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        cluster.pg_ctl("-m", "immediate", "stop")
    shutil.rmtree(cluster.root, ignore_errors=True)


@dataclass
class TeamServer:
    url: str  # http://127.0.0.1:PORT
    admin_password: str
    artifacts: Path  # --artifacts-destination: where proxied artifacts land
    process: subprocess.Popen
    postgres: Postgres
    log: Path

    def login(self, user: str = ADMIN, password: Optional[str] = None) -> dict[str, str]:
        """The environment variables a client logs in with (pneumo reads nothing else)."""
        return {
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password if password is None else password,
        }

    def create_user(self, user: str, password: str) -> None:
        """A user with the server's default permission (READ): may read others' experiments, not write them."""
        answer = requests.post(
            f"{self.url}/api/2.0/mlflow/users/create",
            json={"username": user, "password": password},
            auth=(ADMIN, self.admin_password),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text

    def grant(self, user: str, resource_type: str, resource_id: str, permission: str) -> None:
        """`permission` (READ, EDIT, MANAGE, NO_PERMISSIONS) for `user` on one experiment or registered model."""
        answer = requests.post(
            f"{self.url}/api/3.0/mlflow/users/permissions/grant",
            json={
                "username": user,
                "resource_type": resource_type,
                "resource_id": resource_id,
                "permission": permission,
            },
            auth=(ADMIN, self.admin_password),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = SERVER_READY_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited with {process.returncode}: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"mlflow server not ready in {timeout_s} s: {log.read_text()[-3000:]}")
        time.sleep(1)


def start_team_server(
    postgres: Postgres, artifacts: Path, workers: int = 1, port: Optional[int] = None, admin_password: str = ""
) -> TeamServer:
    """`make mlflow-server` over `postgres`, on `port` (else a free one); returned once /health answers.
    `admin_password` is the first admin's, used when the logins database is new (else a random one).

    One worker by default: uvicorn's supervisor of several kills a worker that does not answer its
    health check within 5 s, which a loaded 2-core machine misses while the worker imports MLflow."""
    port, admin_password = port or free_port(), admin_password or secrets.token_urlsafe(16)
    settings = {
        "MLFLOW_DB": postgres.uri("mlflow"),
        "MLFLOW_AUTH_DB": postgres.uri("mlflow_auth"),
        "MLFLOW_ARTIFACTS": str(artifacts),
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": str(workers),
        "VENV": sys.prefix,  # this interpreter's mlflow
    }
    env = {
        **postgres.env(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
    }
    log = postgres.root / f"mlflow-{port}.log"
    command = ["make", "-s", "--no-print-directory", "mlflow-server", *(f"{k}={v}" for k, v in settings.items())]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, log)
    except AssertionError:
        stop_server(process)
        raise
    return TeamServer(url, admin_password, artifacts, process, postgres, log)


def restart_team_server(server: TeamServer, down_s: float) -> None:
    """Kill `server`, wait `down_s`, start it again over the same database, folder and port: a team server
    that died and came back. `server` then holds the new process."""
    stop_server(server.process)
    time.sleep(down_s)
    port = int(server.url.rsplit(":", 1)[1])
    started = start_team_server(server.postgres, server.artifacts, port=port, admin_password=server.admin_password)
    server.process, server.log = started.process, started.log


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server and every process it started (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


@contextlib.contextmanager
def team_server(artifacts: Path) -> Iterator[TeamServer]:
    """A PostgreSQL cluster and a team server over it, both removed afterwards."""
    postgres = start_postgres()
    try:
        server = start_team_server(postgres, artifacts)
        try:
            yield server
        finally:
            stop_server(server.process)
    finally:
        remove_postgres(postgres)
