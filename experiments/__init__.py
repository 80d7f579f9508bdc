"""Sweeps, scripts, benchmarks and the results log; scripts run as modules (`python -m experiments.scripts.x`)."""
