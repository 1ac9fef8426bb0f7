"""Run one measurement in a fresh spawned interpreter, so its peak memory is its own.

Linux carries a parent's RSS high-water mark into forked children and RUSAGE_CHILDREN is a
maximum over all children, so per-row memory comes from the child's own /proc VmHWM.
"""
from __future__ import annotations

import multiprocessing
import re
import traceback


def vm_kib(field: str) -> int:
    """A /proc/self/status memory field (VmHWM: peak RSS, VmRSS: current) in KiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later VmHWM is one phase's peak."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(target, spec: dict, conn) -> None:
    try:
        conn.send({"ok": True, **target(spec)})
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops the run
        conn.send({"ok": False, "error": traceback.format_exc()})
    finally:
        conn.close()


def in_child(target, spec: dict, label: str) -> dict:
    """Run `target(spec)` in a spawned interpreter; return its result dict (exit on failure)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(target, spec, send))
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"ok": False, "error": "child died without a result (killed? out of memory?)"}
    process.join()
    if not result.pop("ok"):
        raise SystemExit(f"{label} failed (exit code {process.exitcode}):\n{result['error']}")
    return result
