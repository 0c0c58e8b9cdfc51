"""Where and in which order runs execute: the plan of a suite (threads, dependencies), the
executors (this process, a pool, Ray), the cost estimate that orders a pool, and the ``run``
and ``train-agent`` commands (docs/architecture.md)."""
