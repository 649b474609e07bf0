"""fusednorm microbenchmarks: ``python -m bench`` or ``python bench/run.py`` (see bench/README.md)."""
