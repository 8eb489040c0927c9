"""This process's own peak memory, for the memory tests that run a fresh subprocess.

``ru_maxrss`` cannot be used there: Linux carries the parent's peak over through fork and
exec, so a child of the (large) pytest process would start at the parent's peak and a memory
test could never fail. ``VmHWM`` in /proc/self/status belongs to the process's own address
space, which exec makes new.
"""

from __future__ import annotations

import resource


def own_peak_mb() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``; ``ru_maxrss`` off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
