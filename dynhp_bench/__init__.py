"""dynhp-bench: train and benchmark neural networks under a memory budget with Dynamic Hard Pruning."""

__version__ = "0.1.0"
