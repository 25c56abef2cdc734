"""How much of the machine others used during a bench step.

Other sessions may run QEMU guests beside a bench, some in PID namespaces this one
cannot see, yet ``/proc/stat`` counts their CPU time. :class:`Busy` samples every 2 s
the machine's busy CPU time (user, nice, system, irq, softirq, steal) and the CPU time
of our processes: this process's descendants and those of any process whose command
line names our work folder. Per step it reports the peak 1-minute load and the CPUs
the rest used on average (busy time minus ours, over wall time). A process that lives
less than one interval is not seen, so its CPU counts as another's.

    busy = Busy(workdir)
    busy.start()
    ...                                 # a step
    print(busy.since_last())            # "peak load 3.1, others used 0.95 of 2 CPUs"
    busy.stop.set()
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICK


class Busy(threading.Thread):
    def __init__(self, ours: Path, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.marker, self.interval = str(ours).encode(), interval
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.peak, self.other, self.started = os.getloadavg()[0], 0.0, time.monotonic()
        self.total, self.mine = machine_busy(), self.ours()

    def ours(self) -> dict[int, float]:
        """PID -> CPU seconds of every process of ours that runs now."""
        procs: dict[int, tuple[int, float, bool]] = {}  # pid -> (ppid, cpu s, names ours)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    named = self.marker in (entry / "cmdline").read_bytes()
                except (OSError, IndexError):
                    continue
                cpu = (int(fields[11]) + int(fields[12])) / TICK
                procs[int(entry.name)] = (int(fields[1]), cpu, named)
        me = os.getpid()

        def mine(pid: int) -> bool:
            for _ in range(64):  # up the parent chain
                if pid == me or (pid in procs and procs[pid][2]):
                    return True
                if pid not in procs or pid <= 1:
                    return False
                pid = procs[pid][0]
            return False

        return {pid: cpu for pid, (_, cpu, _) in procs.items() if mine(pid)}

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            total, mine = machine_busy(), self.ours()
            used = sum(cpu - self.mine.get(pid, 0.0) for pid, cpu in mine.items())
            with self.lock:
                self.other += max(0.0, total - self.total - used)
                self.peak = max(self.peak, os.getloadavg()[0])
            self.total, self.mine = total, mine

    def since_last(self) -> str:
        """Peak load and the others' average CPUs since the last call (or the start)."""
        with self.lock:
            now = time.monotonic()
            cpus = self.other / max(now - self.started, 1e-6)
            text = f"peak load {self.peak:.1f}, others used {cpus:.2f} of {os.cpu_count()} CPUs"
            self.peak, self.other, self.started = os.getloadavg()[0], 0.0, now
        return text
