"""What every gaplab command does with bad input: one line on stderr, `error: <what and how to fix>`, exit 2.

`fail` prints that line and gives the exit code; `ArgumentParser` makes argparse's own errors
(an unknown flag, a value of the wrong type) the same one line, and takes no abbreviations.
`python -m gaplab` uses both, and so do the study's commands (study.commands re-exports them). Nothing
here imports Keras.
"""

from __future__ import annotations

import argparse
import sys

USAGE_EXIT_CODE = 2


def fail(message: str, exit_code: int = USAGE_EXIT_CODE) -> int:
    """Print `error: <message>` as one line on stderr; the command's exit code (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    return exit_code


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and no abbreviations: `--tri 2` is not `--trials 2`."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(USAGE_EXIT_CODE, f"error: {message}; see {self.prog} --help\n")
