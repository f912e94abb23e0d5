#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers (Debian trixie's libonnxruntime-dev, 1.21) into BUILD_DIR/ort
# without installing anything and without touching root-owned apt state: the PyPI wheel ships no
# headers, and these machines run bookworm, so a private apt configuration pulls the one .deb.
# Prints the include directory. Idempotent: does nothing when the headers are already there.
set -euo pipefail

build_dir=${1:?usage: fetch_ort_headers.sh BUILD_DIR}
mkdir -p "$build_dir"
root=$(cd "$build_dir" && pwd)/ort
inc="$root/usr/include/onnxruntime"
if [ -f "$inc/onnxruntime_cxx_api.h" ]; then
    echo "$inc"
    exit 0
fi

# The archive host comes from the machine's own Debian source, never from this repository.
sources=/etc/apt/sources.list.d/debian.sources
uri=$(awk '/^URIs:/ {print $2; exit}' "$sources" 2>/dev/null || true)
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
fi
if [ -z "$uri" ]; then
    echo "fetch_ort_headers: no Debian archive URI found in $sources; set ONNXRUNTIME_ROOT instead" >&2
    exit 1
fi

apt_dir="$root/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/deb"
echo "deb $uri trixie main" > "$apt_dir/sources.list"
: > "$apt_dir/status"
# Every piece of state apt would write lives under $apt_dir, so no root is needed and the
# system's package lists and cache stay as they were. The system keyring verifies trixie.
opts=(-q -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::State::status=$apt_dir/status"
      -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")
apt-get "${opts[@]}" update >&2
(cd "$apt_dir/deb" && apt-get "${opts[@]}" download libonnxruntime-dev >&2)
deb=$(ls "$apt_dir"/deb/libonnxruntime-dev_*.deb | head -n 1)
dpkg -x "$deb" "$root"
if [ ! -f "$inc/onnxruntime_cxx_api.h" ]; then
    echo "fetch_ort_headers: $deb did not contain onnxruntime_cxx_api.h" >&2
    exit 1
fi
rm -rf "$apt_dir/lists" "$apt_dir/cache"
echo "$inc"
