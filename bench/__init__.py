"""Benchmarks with their baselines (run as modules: python -m bench.serve_bench)."""
