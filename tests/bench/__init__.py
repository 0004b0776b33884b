"""Benchmarks: ``python -m tests.bench.run_all`` runs every ``bench_*.py`` module here.

Each module has ``main(quick: bool = False)`` and prints one JSON object per measurement on
stdout (each with a ``"name"``); progress and other chatter go to stderr. Helper modules
start with an underscore so that the runner does not pick them up.
"""
