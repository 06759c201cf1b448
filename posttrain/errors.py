"""User-facing errors.

A `PosttrainError` is a mistake in the input (recipe, data, command line) or the
environment; the CLI prints it as one line and exits non-zero. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib


class PosttrainError(Exception):
    """A problem the user can fix; the message says what, where and how."""

    exit_code = 2
    # Raised alike on every rank of a multi-process launch (each reads the same recipe and data, or
    # rank 0's error was broadcast): only rank 0 prints it, so the user reads one line, not one per rank.
    same_on_every_rank = False


class RecipeError(PosttrainError):
    same_on_every_rank = True


class DataError(PosttrainError):
    same_on_every_rank = True


class StageError(PosttrainError):
    pass


class ReleaseBlocked(PosttrainError):
    """The run finished but a release gate failed: the build must not ship. Artifacts are kept."""

    exit_code = 3


class StageInterrupted(PosttrainError):
    """Stopped by Ctrl-C or SIGTERM after saving a checkpoint; the same command resumes."""

    exit_code = 130


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
