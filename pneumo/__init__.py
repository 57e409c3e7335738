"""pneumo: train, tune, evaluate and serve pneumonia classifiers for chest X-rays on Ray."""

__version__ = "0.1.0"
