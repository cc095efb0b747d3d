#!/usr/bin/env bash
# Builds dist/wxmp-x86_64-linux: one file that runs on any x86-64 Linux from CentOS 7
# (glibc 2.17, common under the Baota panel) on, then checks that claim.
#
#   deploy/build-release.sh          static musl build (no glibc needed at all); if the musl
#                                    target cannot be had, a glibc 2.17 build with cargo-zigbuild
#   deploy/build-release.sh --zig    the glibc 2.17 build with cargo-zigbuild directly
#   deploy/build-release.sh --check FILE   only the check, on an existing binary
#
# The musl route needs `rustup target add x86_64-unknown-linux-musl` (done here; Rust ships the
# musl C library, musl-tools is not needed). The zig route installs what it needs: cargo-zigbuild
# (crates.io) and zig (`pip install ziglang`, PyPI). The check needs readelf/objdump (binutils).
# It fails if the binary needs a glibc symbol version above 2.17.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=dist/wxmp-x86_64-linux
MAX_GLIBC=2.17
MUSL=x86_64-unknown-linux-musl
GNU=x86_64-unknown-linux-gnu

say() { echo "build-release: $*" >&2; }
die() { say "$*"; exit 1; }

# Where cargo puts what it builds: target/, unless CARGO_TARGET_DIR or build.target-dir says
# otherwise.
target_dir() {
  local dir
  dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  echo "${dir:-target}"
}

build_musl() {
  if command -v rustup >/dev/null 2>&1; then
    rustup target add "$MUSL" >&2 || return 1
  fi
  say "building a static binary for $MUSL"
  cargo build --release --locked --target "$MUSL" || return 1
  cp "$(target_dir)/$MUSL/release/wxmp" "$OUT"
}

build_zig() {
  if ! command -v cargo-zigbuild >/dev/null 2>&1; then
    say "installing cargo-zigbuild from crates.io"
    cargo install --locked cargo-zigbuild
  fi
  if ! command -v zig >/dev/null 2>&1 && ! python3 -c 'import ziglang' 2>/dev/null; then
    say "installing zig from PyPI (pip install ziglang)"
    python3 -m pip install --quiet ziglang
  fi
  say "building for $GNU against glibc $MAX_GLIBC with cargo-zigbuild"
  cargo zigbuild --release --locked --target "$GNU.$MAX_GLIBC"
  cp "$(target_dir)/$GNU/release/wxmp" "$OUT"
}

start=$SECONDS
verb=built
if [ "${1:-}" = "--check" ]; then
  verb=checked
  OUT=${2:?--check needs a binary}
else
  mkdir -p dist
  rm -f "$OUT"
  if [ "${1:-}" = "--zig" ]; then
    build_zig
  elif ! build_musl; then
    say "the musl build failed (see above); falling back to cargo-zigbuild"
    build_zig
  fi
  command -v strip >/dev/null 2>&1 && strip "$OUT"
fi

# The check: which glibc does the binary need?
command -v readelf >/dev/null 2>&1 || die "readelf is missing: install binutils to check $OUT"
if ! readelf -d "$OUT" | grep -q '(NEEDED)'; then
  glibc="none (statically linked)"
else
  command -v objdump >/dev/null 2>&1 || die "objdump is missing: install binutils to check $OUT"
  glibc=$(objdump -T "$OUT" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  [ -n "$glibc" ] || die "cannot read the glibc versions $OUT needs (objdump -T shows none)"
  if [ "$(printf '%s\n%s\n' "$glibc" "$MAX_GLIBC" | sort -V | tail -n 1)" != "$MAX_GLIBC" ]; then
    die "$OUT needs GLIBC_$glibc, above $MAX_GLIBC: it would not start on CentOS 7. \
Build with --zig (cargo zigbuild --target $GNU.$MAX_GLIBC)"
  fi
  glibc="GLIBC_$glibc (at most $MAX_GLIBC: OK)"
fi
"$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")" --version >/dev/null ||
  die "$OUT does not run here"

echo "$verb $OUT in $((SECONDS - start)) s"
echo "  size:  $(du -h "$OUT" | cut -f1)"
echo "  glibc: $glibc"
echo "  $(file -b "$OUT" 2>/dev/null || true)"
echo "copy it to the server (then README, Deploy, step 2): scp $OUT root@YOUR-SERVER:/tmp/"
