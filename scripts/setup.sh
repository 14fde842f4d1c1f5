#!/usr/bin/env bash
# Installs what the relay and its tests need on a Debian machine that has Node and npm:
# Deno 2 (from npm), FFmpeg, and the real RTMP peers the tests use (GStreamer, rtmpdump, nginx with
# the RTMP module) and Chromium (the dashboard test). Safe to run again: it installs only what is
# missing.
#   bash scripts/setup.sh          # everything (relay + tests)
#   bash scripts/setup.sh --run    # only what running the relay needs (Deno, FFmpeg)
set -euo pipefail

want_tests=1
[ "${1:-}" = "--run" ] && want_tests=0

say() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v deno >/dev/null 2>&1 || ! deno --version 2>/dev/null | grep -q '^deno 2\.'; then
  say "installing Deno 2 from npm"
  if ! npm install -g deno@2 >/dev/null 2>&1; then
    say "ERROR: 'npm install -g deno@2' failed. Install Deno 2 yourself (https://deno.com) and retry."
    exit 1
  fi
fi

need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
if [ "$want_tests" = 1 ]; then
  command -v gst-launch-1.0 >/dev/null 2>&1 || need+=(gstreamer1.0-tools)
  gst-inspect-1.0 rtmp2sink >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-bad)
  gst-inspect-1.0 rtmpsink >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-bad)
  gst-inspect-1.0 flvmux >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-good)
  command -v rtmpdump >/dev/null 2>&1 || need+=(rtmpdump)
  command -v nginx >/dev/null 2>&1 || need+=(nginx)
  [ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need+=(libnginx-mod-rtmp)
  command -v ps >/dev/null 2>&1 || need+=(procps)
  # The dashboard test drives a real browser (tests/e2e/dashboard_test.ts).
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
if [ "${#need[@]}" -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  say "installing from apt: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends "${need[@]}" gstreamer1.0-plugins-ugly >/dev/null; }; then
    say "ERROR: could not install ${need[*]} with apt-get."
    say "Install them yourself (Debian/Ubuntu: apt-get install ${need[*]}) and retry."
    exit 1
  fi
  # The nginx package may start a default server on port 80; the tests run their own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    $sudo systemctl stop nginx || true
  fi
fi
say "ready: $(deno --version | head -n 1), $(ffmpeg -version | head -n 1 | cut -d' ' -f1-3)"
