"""The process a measured client run lives in: ``python -m benchmarks._worker SPEC``.

``SPEC`` is JSON: the scenario module and function to call with ``params``, the CPU to pin this
process to (or null) and the file to write the function's result to. The function measures its
own workload (CPU time from ``getrusage`` before and after, wall time, what it saw); this wrapper
adds the whole process's CPU totals, imports included, for reference. (``ru_maxrss`` is left out:
on Linux a child starts with its parent's high-water mark, so it would describe the parent.)
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
from pathlib import Path


def main() -> None:
    spec = json.loads(sys.argv[1])
    cpu = spec.get("cpu")
    pinned = False
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(cpu)})
            pinned = True
        except OSError:
            pinned = False
    module = importlib.import_module(spec["module"])
    result = getattr(module, spec["function"])(spec["params"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["process"] = {
        "pinned_cpu": cpu if pinned else None,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
    }
    Path(spec["out"]).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
