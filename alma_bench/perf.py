"""alma-bench perf: the harness measured against a bare PyTorch loop (placeholder)."""

from __future__ import annotations


def configure_parser(p) -> None:
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from alma_bench.errors import UserError

    raise UserError("perf is not implemented yet")
