"""Triton kernels of fusednorm (installed as ``fusednorm.kernels``).

Each module holds the @triton.jit kernels of one norm and the launchers that implement the
backend interface described in ``fusednorm/backends/__init__.py``.  Launch heuristics live in
``_config.py``, shared reduction helpers in ``_reduce.py``.  Nothing here runs at import
except defining kernels: no environment reads, no device queries.
"""
