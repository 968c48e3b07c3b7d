#!/usr/bin/env bash
# Lifeboat vs restic 0.14 (the anchor) on the shared ~2 GB mixed dataset, side by side in one run:
# first backup, second backup after changing 1% of files, full restore. Page cache dropped before
# each step (as root); rounds alternate the two tools so machine noise hits both alike.
# Usage: bench/files.sh [RUNS=3] [WORK=/var/tmp/lifeboat-bench]   (run as root, from the repo)
# Prints raw lines and a summary (median wall s, MB/s, peak RSS, repo size, ratio lifeboat/restic).
set -euo pipefail
runs=${1:-3}
work=${2:-/var/tmp/lifeboat-bench}
here=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "$here/../shared" && pwd)
command -v restic >/dev/null || bash "$here/scripts/install-deps.sh"
command -v /usr/bin/time >/dev/null 2>&1 || { apt-get install -y -qq time >/dev/null; }
cargo build --release --manifest-path "$here/Cargo.toml" >/dev/null
lb="$here/target/release/lifeboat"
mkdir -p "$work"
ds="$work/dataset"
[ -d "$ds" ] || python3 "$shared/anchors/gen-dataset.py" "$ds"
export RESTIC_PASSWORD=bench-password
echo bench-password > "$work/key"
cat > "$work/lifeboat.yaml" <<YAML
name: bench
tiers: { std: { rpo: 1h, rto: 4h } }
services: { ds: { kind: paths, tier: std, paths: [ $work/ds ] } }
repositories: { main: { url: $work/lb-repo, key_file: $work/key } }
backups: { ds: { service: ds } }
YAML
measure() { # tool label cmd...  -> "tool label wall_s maxrss_kb"
  local tool=$1 label=$2; shift 2
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$work/time.out" "$@" >/dev/null 2>"$work/err.out" || { echo "$tool $label FAILED: $(tail -3 "$work/err.out")"; return 1; }
  read -r wall rss < "$work/time.out"; echo "$tool $label $wall $rss"
}
change1pct() {
  python3 - "$1" <<'PY'
import os, sys, random
rng = random.Random(7); files = sorted(os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs)
for p in rng.sample(files, len(files) // 100):
    with open(p, 'r+b') as f:
        size = os.path.getsize(p); f.seek(rng.randrange(max(size, 1))); f.write(rng.randbytes(64))
PY
}
bytes=$(du -sb "$ds" | cut -f1)
out="$work/raw.txt"; : > "$out"
echo "dataset_bytes $bytes" | tee -a "$out"
export LIFEBOAT_PROGRESS=0 LIFEBOAT_STATE_DIR="$work/lb-state"
for r in $(seq 1 "$runs"); do
  # restic (anchor)
  rm -rf "$work/repo" "$work/restore" "$work/ds"; cp -a "$ds" "$work/ds"
  restic init -q --repo "$work/repo" --repository-version 2 >/dev/null
  measure restic "first_backup" restic -q --repo "$work/repo" backup "$work/ds" | tee -a "$out"
  change1pct "$work/ds"
  measure restic "second_backup" restic -q --repo "$work/repo" backup "$work/ds" | tee -a "$out"
  measure restic "restore" restic -q --repo "$work/repo" restore latest --target "$work/restore" | tee -a "$out"
  echo "restic repo_bytes $(du -sb "$work/repo" | cut -f1)" | tee -a "$out"
  rm -rf "$work/repo" "$work/restore"
  # lifeboat
  rm -rf "$work/lb-repo" "$work/lb-state" "$work/ds"; cp -a "$ds" "$work/ds"
  "$lb" --plan "$work/lifeboat.yaml" repo init >/dev/null
  measure lifeboat "first_backup" "$lb" --plan "$work/lifeboat.yaml" backup ds | tee -a "$out"
  change1pct "$work/ds"
  measure lifeboat "second_backup" "$lb" --plan "$work/lifeboat.yaml" backup ds | tee -a "$out"
  measure lifeboat "restore" "$lb" --plan "$work/lifeboat.yaml" restore latest --target "$work/restore" | tee -a "$out"
  echo "lifeboat repo_bytes $(du -sb "$work/lb-repo" | cut -f1)" | tee -a "$out"
  rm -rf "$work/lb-repo" "$work/restore"
done
rm -rf "$work/ds"
python3 - "$out" <<'PY'
import sys, statistics as st, collections
rows = [l.split() for l in open(sys.argv[1])]
size = int(rows[0][1]); d = collections.defaultdict(list)
for r in rows[1:]:
    if r[1] == "repo_bytes": d[(r[0], "repo")].append(int(r[2]))
    elif len(r) == 4: d[(r[0], r[1])].append((float(r[2]), int(r[3])))
print(f"\nsummary (median of {len(d[('restic','first_backup')])} runs; dataset {size/1e9:.2f} GB)")
print(f"{'step':15} {'restic s':>9} {'lifeboat s':>10} {'restic MB/s':>11} {'lifeboat MB/s':>13} {'speed ratio':>11} {'restic RSS MB':>13} {'lifeboat RSS MB':>15}")
for step in ["first_backup", "second_backup", "restore"]:
    r = d[("restic", step)]; l = d[("lifeboat", step)]
    rw, lw = st.median(x[0] for x in r), st.median(x[0] for x in l)
    rr, lr = st.median(x[1] for x in r) / 1024, st.median(x[1] for x in l) / 1024
    print(f"{step:15} {rw:9.1f} {lw:10.1f} {size/1e6/rw:11.0f} {size/1e6/lw:13.0f} {rw/lw:10.2f}x {rr:13.0f} {lr:15.0f}")
print(f"repo bytes: restic {st.median(d[('restic','repo')])/1e6:.0f} MB, lifeboat {st.median(d[('lifeboat','repo')])/1e6:.0f} MB")
PY
