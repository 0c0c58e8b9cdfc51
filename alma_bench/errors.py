"""User-facing errors: one line naming the problem and the valid choices.

Exit codes of the CLI (README, "Exit codes"): 0 all runs done, 1 an internal error (a bug:
traceback), 2 bad input (``UserError``), 3 an I/O problem with a results or data path
(``StoreError``), 4 some runs failed (recorded in their folders; the others finished),
130 interrupted (Ctrl-C, SIGTERM or SIGHUP).
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (config, CLI, data path). The CLI prints it as one line, exit 2."""

    exit_code = 2


class StoreError(UserError):
    """A results path that cannot be written: not a folder, read-only, no permission, disk
    full. A UserError (one line, never a traceback) with its own exit code, because no run can
    go on and retrying the same command will not help until the path is fixed."""

    exit_code = 3


#: errnos that say the results path itself is unusable (stop everything), not that one run
#: is broken: no space, read-only file system, no permission, quota, not a folder
FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                errno.ENOTDIR}


def store_error(path, err: OSError) -> StoreError:
    """A one-line StoreError naming ``path`` and what is wrong with it."""
    why = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a path component is a file, "
           "not a folder", errno.EEXIST: "exists and is not a folder",
           errno.EISDIR: "is a folder"}.get(err.errno, err.strerror or str(err))
    return StoreError(f"cannot write {path}: {why}")


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """An error for an unknown name that names the closest match and all valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {kind} '{name}'.{hint} Valid: {', '.join(choices) or '(none)'}")
