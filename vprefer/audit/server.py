"""A local Label Studio: installed in its own virtual environment, started on 127.0.0.1, stopped cleanly.

Label Studio pins its own Django and SDK, so it never shares vprefer's
environment: ``ensure_installed`` creates a virtual environment and pip-installs
``label-studio`` there.

Where it lives: an installed vprefer has no repository to write into, so the
environment and the data folder (database, media, log, pid) live in a user cache
folder, ``$VPREFER_CACHE`` if set, else ``$XDG_CACHE_HOME/vprefer`` or
``~/.cache/vprefer`` (``venv-ls/`` and ``label-studio/`` in it). A checkout that
already has ``.venv-ls/`` (or ``.label-studio/``) at its root keeps using it:
CI's ``.ci/run`` creates ``.venv-ls/`` there before the audit tests, and a
developer's existing database is not left behind. Every function takes an
explicit folder as well. The admin user and its API token come from the
environment (``VPREFER_LS_USERNAME``, ``VPREFER_LS_PASSWORD``, ``VPREFER_LS_TOKEN``),
are passed to the server only through its environment, and are never written
to disk by vprefer. Local-files serving is enabled with ``document_root`` as
root, so a run's images are served without copying them into the database.

Safe by default: every file under the document root is one URL away from anyone
with a login (any user may add a storage under it), so the root is a run's folder
(whose images folder is the storage ``audit push`` creates; Label Studio wants the
storage strictly inside the root) or a folder the user names,
``/`` is refused unless ``serve_whole_filesystem`` is asked for explicitly, and the
server listens on 127.0.0.1 unless another host is given (with a warning).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vprefer.errors import ServiceError
from vprefer.recipes import REPO


def cache_dir() -> Path:
    """vprefer's user cache folder: ``$VPREFER_CACHE``, else ``$XDG_CACHE_HOME/vprefer``, else ``~/.cache/vprefer``."""
    if os.environ.get("VPREFER_CACHE"):
        return Path(os.environ["VPREFER_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vprefer"


def default_venv() -> Path:
    """Label Studio's virtual environment: a checkout's ``.venv-ls/`` if it has one, else the cache's ``venv-ls/``."""
    return REPO / ".venv-ls" if (REPO / ".venv-ls").is_dir() else cache_dir() / "venv-ls"


def default_data() -> Path:
    """Label Studio's data folder: a checkout's ``.label-studio/`` if it has one, else the cache's ``label-studio/``."""
    return REPO / ".label-studio" if (REPO / ".label-studio").is_dir() else cache_dir() / "label-studio"


class ServerError(ServiceError):
    """The local Label Studio cannot be installed, started or stopped."""


@dataclass
class Credentials:
    username: str
    password: str
    token: str

    @classmethod
    def from_env(cls) -> "Credentials":
        missing = [k for k in ("VPREFER_LS_USERNAME", "VPREFER_LS_PASSWORD", "VPREFER_LS_TOKEN") if not os.environ.get(k)]
        if missing:
            raise ServerError(f"set {', '.join(missing)} in the environment (the admin user and API token of the "
                              "local Label Studio; they are never written to disk)")
        return cls(os.environ["VPREFER_LS_USERNAME"], os.environ["VPREFER_LS_PASSWORD"], os.environ["VPREFER_LS_TOKEN"])


def ensure_installed(venv: Path | None = None, quiet: bool = True) -> Path:
    venv = Path(venv) if venv is not None else default_venv()
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cmd = [str(venv / "bin" / "pip"), "install", "label-studio"] + (["-q"] if quiet else [])
    r = subprocess.run(cmd, capture_output=quiet, text=True)
    if r.returncode != 0 or not exe.exists():
        raise ServerError(f"could not install label-studio into {venv}: {(r.stderr or '')[-500:]}")
    return exe


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(document_root: Path | str | None, host: str = "127.0.0.1", *,
                   serve_whole_filesystem: bool = False) -> tuple[Path, list[str]]:
    """The resolved document root and the warnings to print; refuses what would expose the whole machine."""
    if document_root is None:
        raise ServerError("name the folder Label Studio may serve: --run RUN (its images folder) or --document-root DIR")
    root = Path(document_root).expanduser().resolve()
    if root == Path(root.anchor) and not serve_whole_filesystem:
        raise ServerError(f"refusing to serve {root} (every file on this machine) to anyone with a Label Studio login; "
                          "name a run's images folder, or pass --serve-whole-filesystem if you really mean it")
    if not root.is_dir():
        raise ServerError(f"document root {root} is not a folder")
    warnings = []
    if root == Path(root.anchor):
        warnings.append(f"WARNING: serving every file under {root} to anyone with a Label Studio login")
    if host not in LOOPBACK:
        warnings.append(f"WARNING: Label Studio will listen on {host}, reachable from other machines; files under "
                        f"{root} can be read by anyone with a login")
    return root, warnings


def start(port: int = 8080, *, data_dir: Path | None = None, document_root: Path | str | None = None,
          host: str = "127.0.0.1", serve_whole_filesystem: bool = False, venv: Path | None = None,
          wait_s: float = 300.0, log: Path | None = None, warn=print) -> str:
    """Start Label Studio in the background; returns its URL once /health answers."""
    root, warnings = check_exposure(document_root, host, serve_whole_filesystem=serve_whole_filesystem)
    for w in warnings:
        warn(w)
    url = f"http://{'127.0.0.1' if host in LOOPBACK or host in ('0.0.0.0', '::') else host}:{port}"
    if healthy(url):
        return url
    creds = Credentials.from_env()
    exe = ensure_installed(venv)
    data_dir = Path(data_dir) if data_dir is not None else default_data()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPREFER_")}
    env.update({
        "LABEL_STUDIO_USERNAME": creds.username, "LABEL_STUDIO_PASSWORD": creds.password,
        "LABEL_STUDIO_USER_TOKEN": creds.token, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
    })
    logf = open(log or data_dir / "server.log", "ab")
    proc = subprocess.Popen([str(exe), "start", "--no-browser", "--host", host, "--port", str(port),
                             "--data-dir", str(data_dir)], env=env, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    (data_dir / "server.pid").write_text(str(proc.pid))
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait_s:
        if proc.poll() is not None:
            raise ServerError(f"Label Studio exited with code {proc.returncode}; see {logf.name}")
        if healthy(url):
            return url
        time.sleep(1)
    stop(data_dir)
    raise ServerError(f"Label Studio did not become healthy within {wait_s:.0f}s; see {logf.name}")


def stop(data_dir: Path | None = None, timeout: float = 20.0) -> bool:
    pidf = (Path(data_dir) if data_dir is not None else default_data()) / "server.pid"
    if not pidf.exists():
        return False
    pid = int(pidf.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            os.killpg(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidf.unlink(missing_ok=True)
    return True
