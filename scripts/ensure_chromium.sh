#!/usr/bin/env bash
# Make sure headless Chromium is available for the HTML report's browser test.
# Idempotent and quiet: does nothing when /usr/bin/chromium exists. Without root or apt-get it
# prints why and exits 0, so the test skips with a reason instead of the build failing.
set -u

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}  # overridable to exercise the other branches

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get not found; install Chromium yourself to run the browser test" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: not root; run 'sudo apt-get install chromium' to run the browser test" >&2
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium fonts-dejavu-core; } >"$log" 2>&1; then
    echo "ensure_chromium: installing chromium failed (the browser test will skip):" >&2
    tail -n 20 "$log" >&2
    exit 0
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "ensure_chromium: chromium installed but $CHROMIUM is missing" >&2
fi
exit 0
