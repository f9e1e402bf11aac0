#!/usr/bin/env bash
# Time from `connect` to the first decoded video frame, with the real Python SDK.
#
# Starts a node (release build) on 127.0.0.71, one sora-sdk publisher, then
# RUNS sora-sdk subscribers one after another; each prints JSON lines and the
# time from its `connect` to its first decoded frame is taken from them.
# Prints every sample and the median, in milliseconds.
#
# Usage: tools/measure_first_frame.sh [RUNS (default 10)] [CODEC (default VP9)]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-10}"
CODEC="${2:-VP9}"
PY="$ROOT/.venv/bin/python"
CLIENTS="$ROOT/tests/clients/py"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cat > "$WORK/sora.conf" <<CONF
node_name = sora@127.0.0.71
listen_address = 127.0.0.71
data_dir = $WORK/data
log_level = warn
CONF
"$ROOT/target/release/sora" start --config "$WORK/sora.conf" 2> "$WORK/sora.log" &
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.71/5000) 2>/dev/null && break
    sleep 0.1
done
URL=ws://127.0.0.71:5000/signaling
"$PY" "$CLIENTS/publisher.py" --url "$URL" --channel ff --video-codec "$CODEC" \
    --duration $((RUNS * 6 + 10)) > "$WORK/pub.out" 2>&1 &
for _ in $(seq 100); do
    grep -q '"event": "connected"' "$WORK/pub.out" 2>/dev/null && break
    sleep 0.1
done

for i in $(seq "$RUNS"); do
    "$PY" "$CLIENTS/subscriber.py" --url "$URL" --channel ff --duration 3 > "$WORK/sub$i.out" 2>/dev/null || true
done

"$PY" - "$WORK" "$RUNS" <<'PYEOF'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
samples = []
for i in range(1, runs + 1):
    t_connect = t_frame = None
    for line in open(f"{work}/sub{i}.out"):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if t_connect is None and e.get("event") == "signaling" and e.get("type") == "connect":
            t_connect = e["t"]
        if t_frame is None and e.get("event") == "frame":
            t_frame = e["t"]
    if t_connect is not None and t_frame is not None:
        samples.append((t_frame - t_connect) * 1000)
        print(f"run {i}: {samples[-1]:.0f} ms")
    else:
        print(f"run {i}: no frame")
if samples:
    print(f"median connect -> first decoded frame: {statistics.median(samples):.0f} ms over {len(samples)} runs")
else:
    sys.exit("no run decoded a frame")
PYEOF
