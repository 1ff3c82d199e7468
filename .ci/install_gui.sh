#!/usr/bin/env bash
# System packages the napari GUI tests need: an X server (Xvfb, started by `make test` through
# xvfb-run) and the libraries Qt 6 / OpenGL load. Qt's offscreen platform cannot host napari's
# OpenGL canvas, hence a virtual X display. Installs only what is missing (a no-op otherwise);
# needs root (or sudo) the first time.
set -euo pipefail
PKGS=(xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
      libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
      libdbus-1-3 libfontconfig1)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && command -v xvfb-run >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "medseg: the GUI tests need Xvfb and Qt's X11 libraries (${missing[*]}); install them with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "medseg: installing ${missing[*]} needs root (run 'make test' as root once, or apt-get install them)" >&2
        exit 1
    fi
fi
echo "medseg: installing the GUI test packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
