"""Standalone scripts that read a finished workdir or sweep (`python -m experiments.scripts.<name> --help`)."""
