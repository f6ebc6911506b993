#!/usr/bin/env bash
# `make image-check`: build the runtime image with a daemonless builder (buildah, from Debian's packages), run it
# on a tiny corpus, wait for /readyz, send one search, stop it; the result goes to docs/deploy/image-check.json.
# Where the registry base cannot be pulled, the base is built from Debian's packages (deploy/base-debootstrap.sh);
# where `podman run` cannot start a container, the image runs under buildah's chroot isolation (same filesystem,
# user, env and command; the host's network namespace). Needs root for both.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/deploy/image-check.json}
TAG=localhost/siftrank:check
PORT=${PORT:-18080}
WORK=$(mktemp -d /var/tmp/siftrank-image.XXXXXX)
LOG=$WORK/steps.log
runner_pid=""; container=""
cleanup() {
  [ -n "$runner_pid" ] && kill "$runner_pid" 2>/dev/null || true
  [ -n "$container" ] && buildah rm "$container" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for tool in buildah podman curl; do
  command -v $tool >/dev/null || { echo "error: $tool not found (apt-get install podman buildah)"; exit 2; }
done

base=docker.io/library/python:3.11-slim
if ! timeout 90 podman pull -q "$base" >"$LOG" 2>&1; then
  pull_error=$(tail -1 "$LOG")
  echo "cannot pull $base ($pull_error): building the base from Debian's packages"
  base=localhost/siftrank-base:bookworm
  deploy/base-debootstrap.sh "$base"
fi

args=(--isolation chroot --layers -f Dockerfile -t "$TAG" --build-arg "BASE=$base")
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then  # this workplace: torch's CPU wheel lies on disk
  args+=(-v /opt/wheels:/opt/wheels:ro --build-arg PIP_FIND_LINKS=/opt/wheels --build-arg TORCH_INDEX=)
fi
if [ -n "${PIP_CERT:-}" ]; then  # a proxy's certificate authority that pip on this machine trusts: trusted in the build too
  args+=(-v "$PIP_CERT:/etc/ssl/build-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/build-ca.crt)
fi
start=$(date +%s.%N)
buildah bud "${args[@]}" . 2>&1 | tail -3
build_seconds=$(echo "$(date +%s.%N) - $start" | bc)
size=$(podman image inspect "$TAG" --format '{{.Size}}')
echo "built $TAG in ${build_seconds}s, $size bytes"

# a tiny corpus, mounted read-only as the image's data folder
mkdir -p "$WORK/data/tiny"
python3 - "$WORK/data/tiny/corpus.jsonl" <<'PY'
import json, sys
docs = {"d1": "Volcanoes erupt when magma rises through the crust.", "d2": "Bread rises because yeast makes carbon dioxide.",
        "d3": "Statins lower cholesterol and cardiovascular risk.", "d4": "The boiling point of water is 100 degrees Celsius.",
        "d5": "Exercise improves heart health and mood.", "d6": "Glaciers carve valleys over thousands of years."}
with open(sys.argv[1], "w") as f:
    for i, t in docs.items():
        f.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
PY
chmod -R a+rX "$WORK/data"
serve=(siftrank serve --dataset /data/tiny --pipeline /app/configs/serve.toml --host 127.0.0.1 --port "$PORT")
runner=podman
if ! timeout 120 podman run --rm --network none "$TAG" --version >"$LOG" 2>&1; then
  podman_error=$(grep -m1 -i error "$LOG" || tail -1 "$LOG")
  echo "podman run fails here ($podman_error): running the image under buildah's chroot isolation"
  runner="buildah run --isolation chroot"
  container=$(buildah from "$TAG")
  start=$(date +%s.%N)
  buildah run --isolation chroot -v "$WORK/data:/data:ro" "$container" -- "${serve[@]}" >"$WORK/serve.log" 2>&1 &
  runner_pid=$!
else
  start=$(date +%s.%N)
  podman run --rm --name siftrank-check -p "127.0.0.1:$PORT:$PORT" -v "$WORK/data:/data:ro" --entrypoint siftrank "$TAG" \
    "${serve[@]:1:5}" --host 0.0.0.0 --port "$PORT" >"$WORK/serve.log" 2>&1 &
  runner_pid=$!
fi
ready=""
for _ in $(seq 600); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" >"$WORK/ready.json" 2>/dev/null; then ready=yes; break; fi
  kill -0 "$runner_pid" 2>/dev/null || break
  sleep 1
done
ready_seconds=$(echo "$(date +%s.%N) - $start" | bc)
if [ -z "$ready" ]; then echo "error: /readyz never answered"; tail -20 "$WORK/serve.log"; exit 1; fi
curl -fsS -X POST "http://127.0.0.1:$PORT/search" -H 'content-type: application/json' \
  -d '{"query": "why do volcanoes erupt", "k": 3}' >"$WORK/search.json"
echo "ready after ${ready_seconds}s; search answered"
mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "$WORK" <<PY
import json, platform, subprocess, sys
out, work = sys.argv[1], sys.argv[2]
search = json.load(open(f"{work}/search.json"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
version = lambda tool: subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()
record = {"builder": version("buildah"), "runner": "$runner", "podman": version("podman"),
          "podman_run_error": """${podman_error:-}""" or None, "base": "$base", "base_pull_error": """${pull_error:-}""" or None,
          "build_seconds": round(float("$build_seconds"), 1), "image_bytes": int("$size"), "ready_seconds": round(float("$ready_seconds"), 1),
          "readyz": json.load(open(f"{work}/ready.json")), "search": {"query": "why do volcanoes erupt",
          "hits": [[h["id"], round(h["score"], 4)] for h in search["hits"]], "variant": search.get("variant")},
          "serve_stderr": open(f"{work}/serve.log").read().strip().splitlines()[-4:], "cpu": cpu}
tmp = out + ".tmp"
json.dump(record, open(tmp, "w"), indent=2)
open(tmp, "a").write("\n")
import os; os.replace(tmp, out)
print(json.dumps(record, indent=2))
PY
