"""Tuned launch parameters: a table measured on a GPU by ``bench/tune.py`` and read by the
launch heuristics (``kernels/*_config.py``).  The analytic heuristic stays the answer for
every shape, dtype or device the table does not list.

The table is ``kernels/tuned_configs.json``:

    {"version": 1,
     "runs": {"sm90": {"device": "NVIDIA H200", "date": ..., "commit": ..., "triton": ...}},
     "entries": {"<family>": {"<arch>|<key>": {<config fields>}, ...}, ...}}

``family`` names one launcher's configuration (e.g. "layer_norm_fwd"), ``arch`` the compute
capability the row was measured on ("sm90"; see ``arch_of``) and ``key`` a string the family's
config module builds from the launch's shape class (e.g. "bf16|4096").  A config module:

* ``candidates(...)``: the configurations ``bench/tune.py`` may time for one case (each must
  be valid for the launcher's ``config=`` argument);
* in its heuristic, ``lookup(family, arch, key)`` first, the analytic choice otherwise.

Read once, lazily (no file access at import); pure Python, no device queries here.
``$FUSEDNORM_TUNED_CONFIGS`` names another table ("off": none, the analytic heuristics
everywhere); it is read at each lookup, not at import.
"""
import functools
import json
import os
from typing import Optional

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned_configs.json")
TABLE_ENV = "FUSEDNORM_TUNED_CONFIGS"


def table_path() -> Optional[str]:
    """The table lookups read: ``$FUSEDNORM_TUNED_CONFIGS`` when set and not empty, None when
    it says "off", else ``TABLE``."""
    path = os.environ.get(TABLE_ENV)
    if not path:
        return TABLE
    return None if path.lower() in ("off", "none", "0") else path


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    if data.get("version") != 1:
        return {}
    return data.get("entries", {})


def _table() -> dict:
    path = table_path()
    return {} if path is None else _load(path)


def reload() -> None:
    """Forget the tables read so far (after ``bench/tune.py`` rewrote one in this process).
    Config functions that cache their own answers keep them."""
    _load.cache_clear()


def lookup(family: str, arch: str, key: str) -> Optional[dict]:
    """The tuned config fields for (family, arch, key), or None."""
    return _table().get(family, {}).get(f"{arch}|{key}")


@functools.lru_cache(maxsize=64)
def _arch_of_index(index: int) -> str:
    import torch
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm{major}{minor}"


def arch_of(device) -> str:
    """"sm90" for a CUDA device of compute capability 9.0; "cpu" otherwise (the
    interpreter, whose table entries never exist)."""
    if getattr(device, "type", device) != "cuda":
        return "cpu"
    import torch
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _arch_of_index(index)


class TuneTarget:
    """One thing ``bench/tune.py`` times: a family's launch for one benchmark case.

    family:     the table's family name (e.g. "layer_norm_fwd")
    key:        the shape-class key the family's heuristic looks up (e.g. "bf16|4096")
    candidates: configurations to time (dataclass instances; the first is the heuristic's
                own choice); each must be accepted by ``run``
    run:        run(config) launches the family's kernel(s) once on inputs the target
                allocated on the device (no allocation of large tensors inside run)
    nbytes:     bytes the launch moves by the op's bytes model (for GB/s in the report)

    A kernel module offers ``tune_targets(op, shape, dtype, layout, device) -> [TuneTarget]``
    for the benchmark cases of its op (bench/bench_<norm>.py); the winner's fields are
    stored as ``dataclasses.asdict(config)`` and rebuilt as ``type(config)(**fields)``.
    bench/tune.py calls it with op "layer_norm" | "rms_norm" | "group_norm" | "instance_norm"
    | "batch_norm", shape a tuple (LN/RMS (M, N); else (N, C, *spatial)), dtype a
    torch.dtype, layout "rows" | "nchw" | "nhwc", device a torch.device; GroupNorm cases add
    ``num_groups=`` when the function has such a parameter (or **kwargs).
    """

    __slots__ = ("family", "key", "candidates", "run", "nbytes")

    def __init__(self, family, key, candidates, run, nbytes=0):
        self.family, self.key, self.candidates, self.run = family, key, list(candidates), run
        self.nbytes = nbytes
