"""The failures with a known cause that a stage reports in one line (no traceback): kept apart from the code
that raises them, so the stage entry point can name them without importing the data, model or training code."""

from __future__ import annotations


class DataError(ValueError):
    """A data file that is missing, corrupt or not in the expected format; the message names the file."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign or unsafe; the message names the file."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing trained in this run should be saved."""


class OutputNotWritten(OSError):
    """An output that could not be written for want of room (a full disk, a quota, a file size limit); the
    message names the file, and the previous version of it is left as it was."""


class JobEngineError(RuntimeError):
    """Independent jobs could not be run: the scheduler they were sent to is unreachable, or a job's worker process
    died again after the retry; the message names the address or the job."""
