"""What a result is tagged with: device, versions, commit, date, and the tuned-config table the
Triton launch heuristics read during the run."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess

import torch

from bench.cases import ROOT


def git_commit() -> str:
    """FUSEDNORM_COMMIT when the caller sets it (the GPU machine's copy of the tree has the last
    landed commit as git HEAD plus the working changes: git alone says "<landed>-dirty"),
    else git's HEAD (+ "-dirty")."""
    if os.environ.get("FUSEDNORM_COMMIT"):
        return os.environ["FUSEDNORM_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def collect_meta(device: str) -> dict:
    try:
        import triton
        triton_v = triton.__version__
    except ImportError:
        triton_v = "none"
    gpu = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton_v,
            "cuda": torch.version.cuda or "none", "commit": git_commit(), "date": utc_now()}


def tuned_configs_info(device: str) -> str:
    """One line on the tuned-config table the Triton heuristics read in this process: its path,
    its entries for this device's arch and when they were tuned; or why there is none."""
    try:
        from bench.providers import import_fusednorm
        import_fusednorm()
        from fusednorm.kernels import _tuning
        path = _tuning.table_path()
        if path is None:
            return f"off (${_tuning.TABLE_ENV}=off: analytic heuristics only)"
        try:
            rel = os.path.relpath(path, ROOT)
            shown = path if rel.startswith("..") else rel
        except ValueError:
            shown = path
        if not os.path.exists(path):
            return f"none ({shown} does not exist: analytic heuristics only)"
        with open(path) as f:
            data = json.load(f)
        arch = _tuning.arch_of(torch.device(device))
        n = sum(1 for fam in data.get("entries", {}).values() for k in fam
                if k.startswith(arch + "|"))
        run = data.get("runs", {}).get(arch)
        when = (f"; tuned {run.get('date')} at {run.get('commit')} on {run.get('device')}"
                if run else "")
        return f"{shown}: {n} entries for {arch}{when}"
    except Exception as e:  # noqa: BLE001 -- metadata must not stop a run
        return f"unknown ({type(e).__name__}: {e})".splitlines()[0][:200]
