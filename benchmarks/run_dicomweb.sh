#!/usr/bin/env bash
# Side-by-side DICOMweb benchmark: a pacsmesh node (encryption on, default settings, SQLite)
# and Orthanc (../shared/peers/orthanc), same machine, same client, same data.
# Usage: benchmarks/run_dicomweb.sh [dicomweb-bench.py options, e.g. --small 1000 --large 40]
#        TOOL=scale benchmarks/run_dicomweb.sh --instances 100000   (benchmarks/qido_scale.py)
#        TOOL=one-patient benchmarks/run_dicomweb.sh   (the same tool, one patient per study)
#        TARGETS=node (or orthanc) ... runs one server alone.
# Writes benchmarks/out/<tool>-<time>.json and prints it. Needs curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$(mktemp -d /tmp/pacsmesh-bench.XXXXXX)
mkdir -p benchmarks/out
TOOL=${TOOL:-bench} TARGETS=${TARGETS:-both}
out=benchmarks/out/$TOOL-$stamp.json
node_port=$(free_port) orthanc_port=$(free_port) orthanc_dicom=$(free_port)
node_pid=""

cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
  "$SHARED/peers/orthanc" stop "$work/orthanc" || true
  rm -rf "$work"
}
trap cleanup EXIT

[ "$TARGETS" = node ] || "$SHARED/peers/orthanc" start "$work/orthanc" "$orthanc_port" "$orthanc_dicom" >/dev/null
# Bearer tokens off for this run only: the shared tool sends its extra headers with curl's
# first request alone (its -H comes after a config of `next`-separated requests), so a token
# would reach one STOW of a thousand. Every request is still audited; the token check's own
# cost is measured by benchmarks/auth_overhead.py (0.5 ms at p50).
NODE_AUTH_ENABLED=false PYTHONPATH=$ROOT "$PY" -m node.cli node serve --data-dir "$work/node" \
  --port "$node_port" --dimse-port 0 --hl7-port 0 >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$node_port/healthz" >/dev/null && break
  sleep 0.1
done

node_root=http://127.0.0.1:$node_port/dicom-web
orthanc_root=http://127.0.0.1:$orthanc_port/dicom-web
roots=()
[ "$TARGETS" = orthanc ] || roots+=("$node_root")
[ "$TARGETS" = node ] || roots+=("$orthanc_root")
tool=$SHARED/tools/dicomweb-bench.py
[ "$TOOL" = scale ] && tool=benchmarks/qido_scale.py
[ "$TOOL" = one-patient ] && tool=benchmarks/dicomweb_one_patient.py
echo "node $node_root (pid $node_pid), orthanc $orthanc_root" >&2
echo "$PY $tool ${roots[*]} $*" >&2
"$PY" "$tool" "${roots[@]}" "$@" | tee "$out"
echo "written: $out" >&2
