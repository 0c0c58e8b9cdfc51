"""Measuring speed: the ``perf`` command (command), the bare PyTorch loop it compares with
(bare) and the end-to-end runs (runs) (docs/architecture.md)."""
