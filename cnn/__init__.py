"""cnn: the layers and architectures of a classic CNN course as Flax modules, with a
sharded training engine and the tools to reproduce the papers' figures."""

__version__ = "0.1.0"
