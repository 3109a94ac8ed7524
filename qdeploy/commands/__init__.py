"""Registry of CLI sub-commands, one module per stage, added to the `qdeploy` group."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Attach every stage's commands to `group` (imported lazily to keep start-up fast)."""
    from qdeploy.commands.bench import bench
    from qdeploy.commands.build import build
    from qdeploy.commands.demo import demo
    from qdeploy.commands.export import export
    from qdeploy.commands.nqm import catapult, lr_probe
    from qdeploy.commands.plugins import plugins
    from qdeploy.commands.pipeline import pipeline
    from qdeploy.commands.serve import serve, triton_repo
    from qdeploy.commands.train import train
    from qdeploy.commands.verify import verify_command

    group.add_command(demo)
    group.add_command(lr_probe)
    group.add_command(catapult)
    group.add_command(serve)
    group.add_command(triton_repo)
    group.add_command(export)
    group.add_command(train)
    group.add_command(verify_command)
    group.add_command(bench)
    group.add_command(pipeline)
    group.add_command(plugins)
    group.add_command(build)
