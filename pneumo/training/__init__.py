"""Training: the per-worker loop and TorchTrainer, its callbacks, the Tune search, the run's progress display and phase marks, storage errors."""
