"""CPU clock ticks used so far by every PostgreSQL server of a sandbox: each postmaster (found by
the postmaster.pid files under the directory given), its live children (backends, walsenders,
the startup process replaying WAL), and the children it has already reaped (cutime + cstime),
so backends of connections that ended during a run are counted too.

    python3 benches/pg_ticks.py <sandbox dir>
"""
import os
import sys

postmasters = set()
for root, _, files in os.walk(sys.argv[1]):
    if "postmaster.pid" in files:
        with open(os.path.join(root, "postmaster.pid")) as f:
            postmasters.add(int(f.readline()))
ticks = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(pid) in postmasters:
        ticks += sum(int(x) for x in fields[11:15])
    elif int(fields[1]) in postmasters:
        ticks += int(fields[11]) + int(fields[12])
print(ticks)
