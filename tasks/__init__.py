"""The pipeline's stages, one module each, run by DVC as `python -m tasks.<stage>` (dvc.yaml's commands).

While the tasks package is being imported for such a command, and before any of the stage's own imports, the command
is handed to a warm stage server when one is running (groundwork.forkserver): the stage then skips importing torch
and MLflow again. Imported any other way (tests, `import tasks.ingest`), this does nothing."""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m tasks.<stage>` sets argv[0] to "-m" while it locates the module
    from groundwork.forkserver import hand_over_command

    hand_over_command()
