#!/usr/bin/env bash
# The embedded default, end to end on this machine: a chunk server and a peer server at a
# "second site" on loopback, replication between them, a practice repository backed up from a
# sample of real DICOM (the pydicom-data package), a second backup that sends nothing new, then a
# restore from each site, compared byte for byte, and a full read-back check.
#
# Its files go to a fresh temp folder, removed at the end; DICOMVAULT_DEMO_DIR=DIR uses DIR and
# keeps it (as does DICOMVAULT_DEMO_KEEP=1). DICOMVAULT_DEMO_SAMPLE=DIR backs up DIR instead of
# the pydicom-data sample; DICOMVAULT_DEMO_PEER_PORT and _PRIMARY_PORT fix the two ports.
set -euo pipefail
PY=${PY:-python3}
keep=${DICOMVAULT_DEMO_KEEP:-}
if [ -n "${DICOMVAULT_DEMO_DIR:-}" ]; then work=$DICOMVAULT_DEMO_DIR; keep=1
else work=$(mktemp -d -t dicomvault-demo.XXXXXX); fi
sample=${DICOMVAULT_DEMO_SAMPLE:-$($PY -c 'import data_store, os; print(os.path.join(os.path.dirname(data_store.__file__), "data"))')}
free_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
json() { $PY -c "import json, sys; d = json.load(sys.stdin); print(d$1)"; }

mkdir -p "$work"
rm -rf "$work"/{primary,peer,cache,cache-*,restored-*}
pids=()
finish() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -n "$keep" ]; then
    echo "== demo files kept in $work ($(du -sh "$work" | cut -f1)); remove them with: rm -rf $work"
  else
    rm -rf "$work" && echo "== removed the demo files in $work (DICOMVAULT_DEMO_KEEP=1 keeps them)"
  fi
}
trap finish EXIT
wait_up() {  # port, pid, log: the server answers /v1/health, or the end of its log says why not
  for _ in $(seq 100); do
    $PY -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$1/v1/health', timeout=1)" 2>/dev/null && return
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "server on port $1 did not start; the end of its log ($3):" >&2
  tail -n 20 "$3" >&2
  exit 1
}

echo "== dicomvault demo in $work"
echo "== sample: $(ls "$sample" | wc -l) real DICOM files, $(du -sh "$sample" | cut -f1)"
peer_port=${DICOMVAULT_DEMO_PEER_PORT:-$(free_port)}
primary_port=${DICOMVAULT_DEMO_PRIMARY_PORT:-$(free_port)}
replica_token=$(dicomvault-server peer-token create --data "$work/peer" --name primary --repo demo --json | json '["token"]')
dicomvault-server serve --data "$work/peer" --listen "127.0.0.1:$peer_port" --site-name peer \
  >"$work/peer.log" 2>&1 & pids+=($!)
tokens=$(dicomvault-server repo create demo --data "$work/primary" --json)
# Tokens in the `--option=VALUE` form: an option's value is never mistaken for an option.
dicomvault-server serve --data "$work/primary" --listen "127.0.0.1:$primary_port" --site-name primary \
  --peer "peer=http://127.0.0.1:$peer_port" --peer-token="$replica_token" >"$work/primary.log" 2>&1 & pids+=($!)
wait_up "$peer_port" "${pids[0]}" "$work/peer.log"
wait_up "$primary_port" "${pids[1]}" "$work/primary.log"
echo "== primary server on :$primary_port replicating to the peer on :$peer_port"

export DICOMVAULT_REPO="http://127.0.0.1:$primary_port/demo"
export DICOMVAULT_TOKEN=$(echo "$tokens" | json '["tokens"]["backup"]')
export DICOMVAULT_PASSWORD_FILE="$work/passphrase"
export DICOMVAULT_CACHE_DIR="$work/cache"
restore_token=$(echo "$tokens" | json '["tokens"]["restore"]')
head -c 24 /dev/urandom | base64 > "$DICOMVAULT_PASSWORD_FILE"

dicomvault init
echo "== first backup (only new chunks cross the link; bytes_uploaded is counted on the socket)"
dicomvault backup "$sample"
echo "== second backup of the unchanged tree (reads nothing, sends almost nothing)"
dicomvault backup "$sample"
for _ in $(seq 100); do  # continuous replication: wait until the peer holds every snapshot
  dicomvault snapshots --json | $PY -c 'import json, sys; d = json.load(sys.stdin); sys.exit(0 if all(all(s.get("sites", {"x": True}).values()) for s in d["snapshots"]) else 1)' && break
  sleep 0.2
done
dicomvault snapshots

for site in primary peer; do
  port=$primary_port; [ "$site" = peer ] && port=$peer_port
  echo "== restore from the $site with the practice's restore token"
  DICOMVAULT_REPO="http://127.0.0.1:$port/demo" DICOMVAULT_TOKEN="$restore_token" \
    DICOMVAULT_CACHE_DIR="$work/cache-$site" dicomvault restore latest --target "$work/restored-$site"
  diff -r "$sample" "$work/restored-$site$sample" && echo "restored tree from the $site is bit-exact"
done
echo "== check --read-data (every pack fetched, hashed and decrypted)"
dicomvault check --read-data
echo "== stored at each site: primary $(du -sh "$work/primary/repos" | cut -f1), peer $(du -sh "$work/peer/repos" | cut -f1), for $(du -sh "$sample" | cut -f1) of DICOM"
