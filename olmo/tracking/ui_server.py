"""One ``mlflow ui`` per store, started in the background and found again by later commands.

``ensure_ui(uri)`` reuses the UI recorded for the store (its process alive and answering) or starts one on
127.0.0.1 (port 5000, MLflow's default, or a free port when 5000 is taken) in a session of its own, so that it
outlives the command that started it and ``stop_ui`` can stop it together with the helper processes MLflow 3
starts (a job runner, huey consumers). A store that is an MLflow server (http[s]://) is its own UI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from olmo.errors import bad_value

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
URL_ENV = "OLMO_MLFLOW_UI_URL"  # the UI's address where it is not ours to start (a proxy, another host)
STATE_DIR_ENV = "OLMO_MLFLOW_UI_STATE"
START_TIMEOUT_S = 180.0  # a cold `mlflow ui` imports for ~10 s on 2 busy cores; its first request migrates the DB


@dataclass
class UIServer:
    url: str
    pid: int | None  # None: not started by us (a remote tracking server, or URL_ENV)
    uri: str
    log: str | None = None
    started: bool = False  # started by this call (not reused)


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def state_file(uri: str) -> Path:
    """Where the UI of ``uri`` is recorded (one file per store, in the temp folder: a UI dies with the machine)."""
    folder = Path(os.environ.get(STATE_DIR_ENV) or Path(tempfile.gettempdir()) / "olmo-mlflow-ui")
    return folder / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}.json"


def running_ui(uri: str) -> UIServer | None:
    """The UI serving ``uri``, if one is known and answers."""
    if os.environ.get(URL_ENV):
        return UIServer(url=os.environ[URL_ENV].rstrip("/"), pid=None, uri=uri)
    if is_server_uri(uri):
        return UIServer(url=uri.rstrip("/"), pid=None, uri=uri)
    try:
        found = UIServer(**json.loads(state_file(uri).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if found.uri != uri or found.pid is None or not _alive(found.pid) or not _answers(found.url):
        return None
    found.started = False  # reused
    return found


def dashboard_url(uri: str | None = None) -> str:
    """The base URL of the UI of ``uri``: the running one, else where ``ensure_ui`` starts it by default."""
    found = running_ui(uri) if uri else None
    if found is not None:
        return found.url
    return os.environ.get(URL_ENV, f"http://{HOST}:{DEFAULT_PORT}").rstrip("/")


def ensure_ui(uri: str, port: int | None = None, timeout: float = START_TIMEOUT_S) -> UIServer:
    """The UI of ``uri``: the running one, else a new ``mlflow ui`` on ``port`` (default 5000, else a free one)."""
    found = running_ui(uri)
    if found is not None:
        return found
    if port is not None and not _port_free(port):
        raise bad_value("port", port, "a TCP port on 127.0.0.1 that no other program listens on")
    port = port if port is not None else (DEFAULT_PORT if _port_free(DEFAULT_PORT) else _free_port())
    state = state_file(uri)
    state.parent.mkdir(parents=True, exist_ok=True)
    log_path = state.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [_mlflow(), "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    server = UIServer(url=f"http://{HOST}:{port}", pid=proc.pid, uri=uri, log=str(log_path), started=True)
    deadline = time.monotonic() + timeout
    while not _answers(server.url):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_group(proc.pid)
            tail = log_path.read_text()[-2000:] if log_path.exists() else ""
            raise RuntimeError(f"mlflow ui on port {port} did not start (log {log_path}):\n{tail}")
        time.sleep(0.3)
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(server)))
    os.replace(tmp, state)
    return server


def stop_ui(uri: str, timeout: float = 30.0) -> bool:
    """Stop the UI recorded for ``uri`` and its helper processes; False when none was running."""
    state = state_file(uri)
    try:
        found = UIServer(**json.loads(state.read_text()))
    except (OSError, ValueError, TypeError):
        return False
    state.unlink(missing_ok=True)
    if found.pid is None or not _alive(found.pid):
        return False
    _stop_group(found.pid, timeout)
    return True


def _mlflow() -> str:
    """The mlflow executable of this environment (a venv's bin/ need not be on PATH)."""
    return shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow") or "mlflow"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    return _exists(os.kill, pid)


def _exists(send_signal, target: int) -> bool:
    """Whether a process (os.kill) or process group (os.killpg) exists: signal 0 checks without sending."""
    try:
        send_signal(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to someone else
        return True
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    return _exists(os.killpg, pgid)


def _stop_group(pgid: int, timeout: float = 30.0) -> None:
    """SIGTERM the UI's process group; wait for every member (helpers exit seconds after the server); SIGKILL
    what is left at the deadline."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    for sig, wait_s in ((None, timeout), (signal.SIGKILL, 5.0)):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pgid, os.WNOHANG)  # reap it when it is our child (started in this process)
            time.sleep(0.2)
        if not _group_alive(pgid):
            return
