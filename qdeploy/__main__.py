"""`python -m qdeploy ...`: the CLI without the installed entry-point script.

Where qdeploy is only on PYTHONPATH (a GPU machine the project was copied to, a container
without `pip install`), this is how its commands run.
"""

from qdeploy.cli import main

main(prog_name="qdeploy")
