"""CPU time and memory of a benchmark target's processes, read from /proc (Linux).

A target is named by its root pids (a postmaster, an nginx master, a node process);
each root counts with every process below it:

    cpu_seconds(roots)   utime + stime of the roots and their living descendants, plus
                         the roots' cutime + cstime (children already reaped, such as
                         PostgreSQL backends that came and went)
    memory_kib(roots)    {"rss": ..., "hwm": ...}: VmRSS and VmHWM summed over the same
                         processes, in KiB
    machine_busy_seconds()
                         CPU time the whole machine spent busy (all CPUs, /proc/stat):
                         what the target, the mock and the load generator did not
                         take of it was some other process's
    pss_kib(roots)       Pss summed over the same processes (/proc/<pid>/smaps_rollup):
                         each shared page divided among the processes that map it
    reset_peak(roots)    VmHWM := VmRSS (writes 5 to /proc/<pid>/clear_refs, Linux 4.0+,
                         as root or the owner), so the next memory_kib()["hwm"] is the
                         peak since this call rather than since the process started

Sums of RSS count pages shared between processes (PostgreSQL's shared buffers, nginx's
master and workers) once per process: an upper bound, the same way for every target.
"""

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (field 3 is index 0), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields:
                kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def tree(roots):
    """The roots (those still alive) and every living descendant, each once."""
    kids = _children_map()
    seen, stack = [], [r for r in roots if r and os.path.exists(f"/proc/{r}")]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(kids.get(pid, []))
    return seen


def cpu_seconds(roots):
    total = 0
    roots = [r for r in roots if r]
    for pid in tree(roots):
        fields = _stat_fields(pid)
        if not fields:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid in roots:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped children
    return total / CLK_TCK


def machine_busy_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def _status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_kib(roots):
    pids = tree(roots)
    return {"rss": sum(_status_kib(p, "VmRSS") for p in pids), "hwm": sum(_status_kib(p, "VmHWM") for p in pids)}


def pss_kib(roots):
    total = 0
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
        except OSError:
            pass
    return total


def reset_peak(roots):
    """Start a new VmHWM period; False when the kernel refused for some process."""
    ok = True
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok
