#!/usr/bin/env bash
# The embedded default: create a local repository, back up a sample of real DICOM (the
# pydicom-data package), back it up again (nothing new is stored), restore it, verify every byte.
set -euo pipefail
PY=${PY:-python3}
work=${DICOMVAULT_DEMO_DIR:-$(mktemp -d -t dicomvault-demo.XXXXXX)}
sample=$($PY -c 'import data_store, os; print(os.path.join(os.path.dirname(data_store.__file__), "data"))')
export DICOMVAULT_REPO="$work/repo"
export DICOMVAULT_PASSWORD_FILE="$work/passphrase"
export DICOMVAULT_CACHE_DIR="$work/cache"
mkdir -p "$work"
rm -rf "$DICOMVAULT_REPO" "$DICOMVAULT_CACHE_DIR" "$work/restored"
head -c 24 /dev/urandom | base64 > "$DICOMVAULT_PASSWORD_FILE"

echo "== dicomvault demo in $work"
echo "== sample: $(ls "$sample" | wc -l) real DICOM files, $(du -sh "$sample" | cut -f1)"
dicomvault init
echo "== first backup"
dicomvault backup "$sample"
echo "== second backup of the unchanged tree (reads and stores nothing new)"
dicomvault backup "$sample"
dicomvault snapshots
echo "== restore and compare"
dicomvault restore latest --target "$work/restored"
diff -r "$sample" "$work/restored$sample" && echo "restored tree is bit-exact"
echo "== check --read-data"
dicomvault check --read-data
echo "== repository: $(du -sh "$DICOMVAULT_REPO" | cut -f1) for $(du -sh "$sample" | cut -f1) of DICOM"
