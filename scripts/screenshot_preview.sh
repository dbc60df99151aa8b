#!/usr/bin/env bash
# Render a `finehard preview` page in headless Chromium and save a PNG screenshot.
#   usage: scripts/screenshot_preview.sh preview.html [shot.png] [WIDTHxHEIGHT]
# Needs the Debian package: apt-get update && apt-get install -y chromium
# The page is self-contained (inline images, no script), so Chromium needs no network; the flags
# below keep it from trying (no background networking, no component updates, fresh profile).
set -euo pipefail
page=${1:?usage: $0 preview.html [shot.png] [WIDTHxHEIGHT]}
shot=${2:-${page%.html}.png}
size=${3:-1280x2000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no chromium found: apt-get install -y chromium" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --no-first-run --hide-scrollbars --user-data-dir="$profile" \
  --screenshot="$(realpath -m "$shot")" --window-size="${size/x/,}" "file://$(realpath "$page")" 2>/dev/null
echo "screenshot: $shot"
