"""Built-in strategies. Importing this package registers them through the entry-point group
``alma_bench.strategies``, the same path a user's plugin package takes."""

from alma_bench.strategies import (  # noqa: F401
    app,
    avalanche_cl,
    dense,
    dpr,
    gmp,
    imp,
    imp_q,
    osp,
    prune_regrow,
    rl_schedule,
    scratch,
    static,
)
