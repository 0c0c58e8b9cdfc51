"""Built-in strategies. Importing this package registers them through the entry-point group
``alma_bench.strategies``, the same path a user's plugin package takes."""

from alma_bench.strategies import app, dense, gmp, osp, scratch  # noqa: F401
