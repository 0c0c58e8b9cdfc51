"""What to run: suites (YAML), their grids, composed strategies, the ALMA split, run specs
and run ids. Pure configuration: no torch, no data (docs/architecture.md)."""
