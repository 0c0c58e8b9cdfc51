"""Reading results: load a results folder (results), group runs by config (groups), tables,
paired comparisons (compare), figures and the README report (figures, report), and the
``show``, ``compare`` and ``report`` commands (docs/architecture.md)."""
