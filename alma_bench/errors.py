"""User-facing errors: one line naming the problem and the valid choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (config, CLI, data path). The CLI prints it as one line, exit 2."""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """An error for an unknown name that names the closest match and all valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {kind} '{name}'.{hint} Valid: {', '.join(choices) or '(none)'}")
