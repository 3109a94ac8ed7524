"""Each default is written once: a CLI option and the dataclass field it fills agree."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from qdeploy.commands import load_command
from qdeploy.serving.models import ServeOptions
from qdeploy.workflows.bench import BenchOptions
from qdeploy.workflows.pipeline import PipelineOptions
from qdeploy.workflows.verify import VerifyOptions




def differing_defaults(command: str, options: type) -> list[str]:
    """'<option>: CLI <x> vs <dataclass> <y>' for every option named like a field whose defaults differ."""
    params = {p.name: p for p in load_command(command).params}
    problems = []
    for spec in fields(options):
        if spec.name not in params or spec.default is MISSING:
            continue
        cli = params[spec.name].default
        repeatable = getattr(params[spec.name], "multiple", False)
        expected = (",".join(map(str, spec.default)) if isinstance(spec.default, tuple) and not repeatable
                    else spec.default)
        if cli != expected:
            problems.append(f"--{spec.name}: CLI {cli!r} vs {options.__name__} {spec.default!r}")
    return problems


@pytest.mark.parametrize("command, options", [("verify", VerifyOptions), ("bench", BenchOptions),
                                              ("pipeline", PipelineOptions), ("serve", ServeOptions)])
def test_cli_defaults_are_the_dataclass_defaults(command, options) -> None:
    params = {p.name for p in load_command(command).params}
    assert {f.name for f in fields(options)} <= params  # every field is an option, so every default is compared
    assert differing_defaults(command, options) == []


def test_a_cli_default_written_twice_is_found(monkeypatch) -> None:
    params = load_command("serve").params
    option = next(p for p in params if p.name == "max_batch")
    monkeypatch.setattr(option, "default", 16)
    assert differing_defaults("serve", ServeOptions) == ["--max_batch: CLI 16 vs ServeOptions 8"]
