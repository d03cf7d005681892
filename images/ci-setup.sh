#!/usr/bin/env bash
# Installs what the image builds and the podman tests need on a fresh Debian/Ubuntu CI
# machine (root): podman, runc (images/containers.conf selects it) and debootstrap (the base
# image where no registry is reachable). A no-op where they are all present.
#   images/ci-setup.sh
# On success it leaves ${DPSERVE_CI_STATE:-/var/tmp/dpserve-ci}/podman-ready: with CI=true,
# the tests then fail (not skip) a podman test that cannot run (tests/podman_support.py).
set -euo pipefail
marker_dir="${DPSERVE_CI_STATE:-/var/tmp/dpserve-ci}"
ready() {
  mkdir -p "$marker_dir" && touch "$marker_dir/podman-ready"
}
missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  ready
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "images/ci-setup.sh: ${missing[*]} missing and not root: the podman tests will skip" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "images/ci-setup.sh: ${missing[*]} missing and no apt-get: install them yourself" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# With Debian's recommends: conmon, netavark, fuse-overlayfs, catatonit come along.
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "images/ci-setup.sh: installed ${missing[*]}"
ready
