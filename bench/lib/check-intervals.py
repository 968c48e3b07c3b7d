# The intervals between the daemon's checks of service `db` logged in LOG (a daemon run with
# LIFEBOAT_LOG_EVERY_CHECK=1) between two instants (epoch seconds), and how late each started.
# Usage: python3 bench/lib/check-intervals.py LOG FROM TO
import json, sys, datetime
log, lo, hi = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ts, late = [], []
for line in open(log, errors="replace"):
    try:
        e = json.loads(line)
    except Exception:
        continue
    if e.get("event") != "check" or e.get("service") != "db":
        continue
    t = e["time"].rstrip("Z")
    main, _, frac = t.partition(".")
    s = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
    s += float("0." + frac) if frac else 0.0
    if lo <= s < hi:
        ts.append(s)
        late.append(e.get("late_ms", 0.0))
d = sorted((b - a) * 1000 for a, b in zip(ts, ts[1:]))
if not d:
    print("  no checks logged"); sys.exit()
q = lambda p: d[min(len(d) - 1, int(round(p * (len(d) - 1))))]
within = sum(1 for x in d if abs(x - 500) <= 50) / len(d) * 100
late.sort()
ql = lambda p: late[min(len(late) - 1, int(round(p * (len(late) - 1))))]
print(f"  checks: {len(d)} intervals  p50 {q(.5):.1f} ms  p99 {q(.99):.1f} ms  max {d[-1]:.1f} ms  within 10% of 500 ms: {within:.1f}%")
print(f"  started late by: p50 {ql(.5):.2f} ms  p99 {ql(.99):.2f} ms  max {late[-1]:.2f} ms")
