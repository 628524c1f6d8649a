"""jaxunlearn: machine unlearning in JAX/Flax (NNX), on one sharded training loop."""

__version__ = '0.1.0'
