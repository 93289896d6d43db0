"""Hostile files and text: what crossmesh reads is a regular file within a bound, inside the
project; names are length-checked before any regex; HTTP-rule regexes run in RE2 (linear time);
user text reaches rich as text, never as markup.

The cases that hung or took seconds before (a FIFO, a link to /dev/zero, a 100,000-character
port name, `/(a+)+$`) each run under a deadline that fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.errors import Problem
from crossmesh.load import mesh as load_mesh
from crossmesh.load.yamlpos import MAX_FILE_BYTES, read_text
from crossmesh.policy import parse as policy_parse
from crossmesh.policy.model import HttpRequest, HttpRule, http_regex_problem
from crossmesh.workspace import check

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEADLINE = 2  # seconds: each case below took from 3.7 s to forever before

MESH = """\
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata:
  name: hostile
spec:
  sites:
    - name: site-a
      provider: aws
      network: 10.0.0.0/16
  clusters:
    - name: one
      id: 1
      cni: cilium
      podCIDR: 10.10.0.0/16
      nodes:
        - name: a-1
          site: site-a
          address: 10.0.1.5
      manifests:
        - {entry}
"""
ENTRY_LINE, ENTRY_COLUMN = 20, 11  # where `- {entry}` puts the entry

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n"


@contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail, instead of hanging, when the block runs past `seconds`."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _project(root: Path, entry: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    mesh = root / "mesh.yaml"
    mesh.write_text(MESH.format(entry=json.dumps(entry)))
    return mesh


def _errors(mesh: Path) -> list[Problem]:
    with within(DEADLINE):
        _, problems = check(mesh)
    return [p for p in problems if p.severity == "error"]


# --- only regular files, read with a bound ----------------------------------------------------


def test_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "mesh.yaml"
    os.mkfifo(fifo)

    with within(DEADLINE):  # before: open() waited for a writer forever
        text, problem = read_text(fifo, "mesh.yaml")

    assert text is None and problem is not None
    assert str(problem) == "mesh.yaml:1:1: is a FIFO (named pipe), not a regular file — crossmesh reads only files"


def test_link_to_dev_zero_is_refused_without_reading(tmp_path: Path) -> None:
    link = tmp_path / "mesh.yaml"
    link.symlink_to("/dev/zero")

    with within(DEADLINE):  # before: 3.7 GB read, as the reported size (0) passed the cap
        text, problem = read_text(link, "mesh.yaml")

    assert text is None and problem is not None
    assert "is a character device, not a regular file" in problem.message


def test_socket_and_directory_are_refused() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # a socket path has at most 107 bytes
        path = Path(short) / "s.yaml"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(path))
            text, problem = read_text(path, "s.yaml")
        finally:
            server.close()
        assert text is None and problem is not None
        assert "is a socket, not a regular file" in problem.message

        text, problem = read_text(Path(short), "d")
        assert problem is not None and problem.message == "is a directory, expected a YAML file"


def test_bound_is_on_bytes_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    exact = tmp_path / "exact.yaml"
    exact.write_bytes(b"#" * MAX_FILE_BYTES)

    _, too_big = read_text(big, "big.yaml")
    text, fits = read_text(exact, "exact.yaml")

    assert too_big is not None and "larger than 4 MiB" in too_big.message
    assert fits is None and text is not None and len(text) == MAX_FILE_BYTES


def test_cli_refuses_a_fifo_mesh_with_exit_2(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "mesh.yaml")

    proc = subprocess.run(
        [sys.executable, "-m", "crossmesh.cli.main", "validate", "mesh.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,  # a hang guard: the answer takes as long as starting Python
        check=False,
    )

    assert proc.returncode == 2
    assert "mesh.yaml:1:1: is a FIFO (named pipe), not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_mesh_path_that_is_a_link_loop_is_a_named_refusal(tmp_path: Path, command: str) -> None:
    (tmp_path / "mesh.yaml").symlink_to("mesh.yaml")

    with within(DEADLINE):
        code, _, err = _run(command, str(tmp_path / "mesh.yaml"))

    assert code == 2  # it was 70, an internal error: Path.resolve raises RuntimeError on a loop
    assert "mesh.yaml:1:1: cannot read file: Too many levels of symbolic links" in err


def test_manifest_that_is_a_device_names_the_mesh_line(tmp_path: Path) -> None:
    mesh = _project(tmp_path, "apps/")
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "ns.yaml").write_text(NAMESPACE)
    os.mkfifo(tmp_path / "apps" / "pipe.yaml")

    (problem,) = _errors(mesh)

    assert problem.file.endswith("apps/pipe.yaml")
    assert "is a FIFO (named pipe), not a regular file" in problem.message
    assert problem.message.endswith(f"(named at {load_mesh.shown_path(mesh)}:{ENTRY_LINE}:{ENTRY_COLUMN})")


# --- manifest paths stay inside the mesh file's folder ------------------------------------------


@pytest.mark.parametrize("entry", ["/etc/hostname", "../outside/ns.yaml", "apps/../../outside"])
def test_manifest_path_leaving_the_project_is_refused(tmp_path: Path, entry: str) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "ns.yaml").write_text(NAMESPACE)
    project = tmp_path / "project"
    (project / "apps").mkdir(parents=True)
    mesh = _project(project, entry)

    (problem,) = _errors(mesh)

    assert (problem.line, problem.column) == (ENTRY_LINE, ENTRY_COLUMN)
    assert problem.path == "spec.clusters[0].manifests[0]"
    assert f"manifest paths must stay inside {project.resolve()}: copy the file into the project" in problem.message


@pytest.mark.parametrize("depth", ["", "deep/er/"])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_link_leading_outside_is_refused_at_any_depth(tmp_path: Path, depth: str, kind: str) -> None:
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "ns.yaml").write_text(NAMESPACE)
    project = tmp_path / "project"
    folder = project / "apps" / depth
    folder.mkdir(parents=True)
    (folder / "link.yaml").symlink_to(secret / "ns.yaml" if kind == "file" else secret)
    mesh = _project(project, "apps")

    (problem,) = _errors(mesh)

    assert (problem.line, problem.column) == (ENTRY_LINE, ENTRY_COLUMN)
    assert f"{depth}link.yaml (under manifest path 'apps') is a link to {secret.resolve()}" in problem.message
    assert "copy the file into the project" in problem.message


def test_links_inside_are_followed_and_cycles_walked_once(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    (apps / "sub").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "ns.yaml").write_text(NAMESPACE)
    (apps / "ns.yaml").symlink_to(tmp_path / "shared" / "ns.yaml")
    (apps / "sub" / "loop").symlink_to(apps)  # a cycle
    (apps / "sub" / "self").symlink_to(apps / "sub")
    mesh = _project(tmp_path, "apps")

    with within(DEADLINE):
        files, why = load_mesh.manifest_files(tmp_path, "apps")
    assert why is None
    assert files == [(tmp_path / "shared" / "ns.yaml").resolve()]
    assert _errors(mesh) == []


def test_link_loop_is_a_named_refusal(tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "x.yaml").symlink_to("x.yaml")  # Path.resolve raises RuntimeError on it
    mesh = _project(tmp_path, "apps")

    (problem,) = _errors(mesh)

    assert problem.file.endswith("apps/x.yaml")
    assert "cannot read file: Too many levels of symbolic links (named at " in problem.message


def test_overlong_manifest_path_is_an_error_shown_briefly(tmp_path: Path) -> None:
    mesh = _project(tmp_path, "x" * 5000)

    (problem,) = _errors(mesh)

    assert (problem.line, problem.column) == (ENTRY_LINE, ENTRY_COLUMN)
    assert "cannot be read: File name too long" in problem.message and len(problem.message) < 200


def test_folder_walk_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_mesh, "MAX_MANIFEST_ENTRIES", 20)
    apps = tmp_path / "apps"
    apps.mkdir()
    for i in range(21):
        (apps / f"f{i}.txt").write_text("")
    mesh = _project(tmp_path, "apps")

    (problem,) = _errors(mesh)

    assert (problem.line, problem.column) == (ENTRY_LINE, ENTRY_COLUMN)
    assert "holds more than 20 files and folders" in problem.message


# --- lengths before regexes; the Cilium port name in one pass -----------------------------------

OLD_CILIUM_PORT_NAME = re.compile(r"([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*")  # what Cilium writes


@given(st.text(alphabet="aZ09-_.\n é", max_size=12))
def test_port_name_check_accepts_what_cilium_regex_accepts(text: str) -> None:
    assert policy_parse.cilium_port_name(text) == bool(OLD_CILIUM_PORT_NAME.fullmatch(text))


def _cnp_with_port(port: str) -> str:
    return (
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: default}\n"
        "spec:\n  endpointSelector: {}\n  ingress:\n    - toPorts:\n"
        f"        - ports: [{{port: {json.dumps(port)}, protocol: TCP}}]\n"
    )


@pytest.mark.parametrize(
    ("port", "words"),
    [
        ("a" * 100_000 + "-", "is 100001 characters: a port number or a port name has at most 15"),
        ("9" * 5_000, "is 5000 characters"),  # int() of it raised ValueError (an internal error)
        ("http\n", "is neither a number nor a port name"),  # `$` matched before the newline
        ("http", None),
    ],
)
def test_cilium_port_is_length_checked_first(tmp_path: Path, port: str, words: str | None) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(_cnp_with_port(port))

    with within(DEADLINE):  # before: 20,000 characters took 9 s, 100,000 never ended
        _, problems = load_mesh.load_manifest_file(f, policy_parse.check_manifest)

    if words is None:
        assert problems == []
    else:
        (problem,) = problems
        assert (problem.line, problem.path) == (8, "spec.ingress[0].toPorts[0].ports[0].port")
        assert words in problem.message


@pytest.mark.parametrize("name", ["web\n", "a" * 64, "a" * 100_000])
def test_mesh_names_are_whole_dns_labels(tmp_path: Path, name: str) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(MESH.replace("- name: a-1", f"- name: {json.dumps(name)}").format(entry="apps"))
    (tmp_path / "apps").mkdir()

    errors = _errors(mesh)

    assert any("is not a DNS-1123 label" in p.message for p in errors)


# --- HTTP rules in RE2 ------------------------------------------------------------------------


def test_catastrophic_http_regex_matches_in_linear_time() -> None:
    rule = HttpRule("http[0]", url_path="/(a+)+$")

    with within(DEADLINE):  # before: 9.8 s for 28 characters, twice that per added character
        assert not rule.matches(HttpRequest("GET", "/" + "a" * 27 + "!", ()))
        assert not rule.matches(HttpRequest("GET", "/" + "a" * 60_000 + "!", ()))
    assert rule.matches(HttpRequest("GET", "/aaa", ()))


def test_http_regex_is_a_full_match() -> None:
    rule = HttpRule("http[0]", method="GET", url_path="/public")

    assert rule.matches(HttpRequest("GET", "/public", ()))
    assert not rule.matches(HttpRequest("GET", "/public/x", ()))
    assert not rule.matches(HttpRequest("GETX", "/public", ()))


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("/(?!admin).*", "no lookaround and no backreferences"),
        ("/(a)\\1", "no lookaround and no backreferences"),
        ("/a{2000}", "invalid repetition size"),  # Python accepts it; RE2, like Envoy, does not
        ("/" + "a" * 2000, "may have at most 1024"),
    ],
)
def test_patterns_re2_refuses_are_validation_errors(pattern: str, words: str) -> None:
    why = http_regex_problem(pattern)
    assert why is not None and words in why


def test_policy_trace_with_catastrophic_regex_answers(tmp_path: Path) -> None:
    project = tmp_path / "three-clouds"
    shutil.copytree(EXAMPLES / "three-clouds", project, ignore=shutil.ignore_patterns(".crossmesh"))
    hq = project / "apps" / "cluster2" / "hq.yaml"
    hq.write_text(hq.read_text().replace('path: "/public"}', 'path: "/(a+)+$"}'))

    proc = subprocess.run(
        [sys.executable, "-m", "crossmesh.cli.main", "policy", "trace", "mesh.yaml"]
        + ["--from", "cluster1/default/x-wing-0", "--to", "cluster2/default/hq-0", "--port", "80/TCP"]
        + ["--http-path", "/" + "a" * 27 + "!", "-o", "json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,  # before: 14.6 s here, a minute at 30 characters; now the ~2 s of planning
        check=False,
    )

    assert proc.returncode == 1, proc.stderr  # denied
    assert json.loads(proc.stdout)["verdict"] == "denied"


# --- user text reaches rich as text ------------------------------------------------------------


@pytest.fixture(scope="module")
def bracketed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three-clouds example in a folder whose name is rich markup."""
    copy = tmp_path_factory.mktemp("rich") / "mesh[/x]"
    shutil.copytree(EXAMPLES / "three-clouds", copy, ignore=shutil.ignore_patterns(".crossmesh"))
    return copy / "mesh.yaml"


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "500"})
    return result.exit_code, result.stdout, result.stderr


def test_markup_in_from_is_printed_literally(bracketed: Path) -> None:
    code, _, err = _run("policy", "trace", str(bracketed), "--from", "[/x]", "--to", "10.10.0.1", "--port", "53/UDP")

    assert code == 2
    assert "error: [/x] is neither a pod" in err


def test_markup_in_http_path_and_mesh_path_is_printed_literally(bracketed: Path) -> None:
    code, out, err = _run(
        "policy",
        "trace",
        str(bracketed),
        "--from",
        "cluster1/default/x-wing-0",
        "--to",
        "cluster2/default/hq-0",
        "--port",
        "80/TCP",
        "--http-path",
        "/[/x][bold]",
    )

    assert code == 1, err  # denied
    assert "80/TCP GET /[/x][bold]: denied" in out


def test_markup_in_validated_path_is_printed_literally(bracketed: Path) -> None:
    code, out, _ = _run("validate", str(bracketed))

    assert code == 0
    assert f"valid: {bracketed} —" in out


def test_markup_in_render_output_dir_is_printed_literally(bracketed: Path) -> None:
    target = bracketed.parent / "out[/x]"

    code, out, err = _run("render", str(bracketed), "--output-dir", str(target))

    assert code == 0, err
    assert f"to {target} (" in out
    assert (target / ".crossmesh-rendered").is_file()


def test_bad_test_pattern_is_a_usage_error_not_a_bug(bracketed: Path) -> None:
    code, _, err = _run("test", str(bracketed), "--test", "[/x")  # refused before any lab is looked for

    assert code == 2
    assert "error: --test '[/x' is not a regular expression" in err
