"""`qdeploy demo` (adaptation alone) on the built-in default, and the CLI's one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

from click.testing import CliRunner

from qdeploy.store import load_model, model_config
from qdeploy.cli import main


def test_demo_runs_offline_and_writes_a_reloadable_model(tmp_path) -> None:
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "tiger cat" in result.output and "reload bit-exact" in result.output
    assert "0.0e+00" in result.output  # zero-start error
    config = model_config(tmp_path / "demo")
    assert config["base"]["name"] == "efficientnet_lite0" and len(config["targets"]) == 16
    assert len(load_model(tmp_path / "demo").state_dict()) > 296


def test_unknown_model_is_a_one_line_error(tmp_path) -> None:
    result = CliRunner().invoke(main, ["demo", "--model", "efficientnet_lite00", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'efficientnet_lite00'")
    assert "Did you mean efficientnet_lite0" in lines[0]
    assert not (tmp_path / "x").exists()


def test_commands_load_only_their_own_stage() -> None:
    """`qdeploy serve --help` must not import torch: each stage's module loads on demand.

    The server's model repository reads ONNX files through export.validate, so the export
    package must load its torch-bound names lazily too.
    """
    code = ("import sys; from click.testing import CliRunner; from qdeploy.cli import main; "
            "import qdeploy.serving.repository, qdeploy.export.validate, qdeploy.nqm; "
            "result = CliRunner().invoke(main, ['serve', '--help']); "
            "listing = CliRunner().invoke(main, ['--help']).output; "
            "print(result.exit_code, 'torch' in sys.modules, '--repo' in result.output, "
            "'onnxruntime' in sys.modules); print(listing)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    flags, listing = out.split("\n", 1)
    assert flags.split() == ["0", "False", "True", "False"]  # `qdeploy --help` loads no stage either
    from qdeploy.commands import COMMANDS

    for name, (_, summary) in COMMANDS.items():  # every command listed with its registry summary
        assert re.search(rf"^  {re.escape(name)} +{re.escape(summary.split()[0])}", listing, re.M), (name, listing)


def test_every_listed_command_loads() -> None:
    from qdeploy.commands import COMMANDS, load_command

    for name in COMMANDS:
        assert load_command(name).name == name
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2 and "No such command 'no-such-command'" in result.output
