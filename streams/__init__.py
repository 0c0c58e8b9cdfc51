"""Built-in stream sources. Importing this package registers them (entry point
``alma_bench.streams``), exactly as a third-party package registers its own."""

from alma_bench.streams import digits, imagefolder, synthetic, torchvision_sets  # noqa: F401
