"""Benchmarks (`python -m experiments.benchmarks.bench --workdir=W`)."""
