"""One run: a RunSpec in, a result directory out (runner), and what it trains with: the
stream, the data, the models, the training loop and its plugins, metrics, provenance, timing
(docs/architecture.md). Submodules import torch or Avalanche; this package imports nothing."""
