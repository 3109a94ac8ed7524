"""How the CLI ends on an error: one line (status 2) for bad input, a report request (status 3) for a bug,
and the chained traceback with --debug or QDEPLOY_DEBUG=1."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qdeploy.cli import main
from qdeploy.errors import QDeployError


def _fail_with(exc: BaseException):
    def verify_model(*args, **kwargs):
        try:
            raise ValueError("the root cause")
        except ValueError as cause:
            raise exc from cause
    return verify_model


@pytest.mark.parametrize("exc, status, line", [
    (QDeployError("model.onnx is broken; re-export it"), 2, "error: model.onnx is broken; re-export it"),
    (ZeroDivisionError("division by zero"), 3, "internal error: ZeroDivisionError: division by zero; this is a qdeploy "
                                              "bug, please report it"),
])
def test_errors_are_one_line_unless_debugging(monkeypatch, exc, status, line) -> None:
    monkeypatch.setattr("qdeploy.commands.verify.verify_model", _fail_with(exc))
    monkeypatch.delenv("QDEPLOY_DEBUG", raising=False)
    quiet = CliRunner().invoke(main, ["verify", "model.onnx"])
    assert quiet.exit_code == status and quiet.output.startswith(line) and "Traceback" not in quiet.output
    for args, env in ((["--debug", "verify", "model.onnx"], {}), (["verify", "model.onnx"], {"QDEPLOY_DEBUG": "1"})):
        loud = CliRunner().invoke(main, args, env=env)
        assert loud.exit_code == status and line in loud.output
        assert "ValueError: the root cause" in loud.output and "direct cause of the following exception" in loud.output
