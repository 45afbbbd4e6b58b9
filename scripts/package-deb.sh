#!/usr/bin/env bash
# Builds the Debian package of patchmesh with cargo-deb (installed with `cargo install` when
# missing): man pages and shell completions are generated from the binary first, then
# `cargo deb` packs the binary, the systemd unit, the default /etc/patchmesh/node.toml, the
# maintainer scripts, the man pages and the completions (cli/Cargo.toml, [package.metadata.deb]).
#
#   scripts/package-deb.sh                 release build → target/debian/patchmesh_<v>_<arch>.deb
#   scripts/package-deb.sh --profile dev   the debug binary, already built (what the test uses)
#   scripts/package-deb.sh --out DIR       write the .deb into DIR
#
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
out=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--profile release|dev] [--out DIR]" >&2; exit 2 ;;
  esac
done
if ! cargo deb --version > /dev/null 2>&1; then
  echo "installing cargo-deb (once)..." >&2
  cargo install cargo-deb --locked --version 3.8.0 >&2
fi
dir=target/release
build=()
if [ "$profile" = dev ]; then
  dir=target/debug
  build=(--no-build)
  [ -x "$dir/patchmesh" ] || cargo build -p patchmesh >&2
else
  cargo build --release -p patchmesh >&2
  build=(--no-build)
fi
assets=cli/debian/generated
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$dir/patchmesh" man --out "$assets/man"
gzip -9n "$assets"/man/*.1
"$dir/patchmesh" completion bash > "$assets/completions/patchmesh.bash"
"$dir/patchmesh" completion zsh > "$assets/completions/_patchmesh"
"$dir/patchmesh" completion fish > "$assets/completions/patchmesh.fish"
mkdir -p "$out"
args=(-p patchmesh "${build[@]}" --output "$out")
[ "$profile" = dev ] && args+=(--profile dev --fast)
cargo deb "${args[@]}" >&2
ls -t "$out"/patchmesh_*.deb | head -1
