#!/usr/bin/env bash
# Make sure the Debian tools that system-level tests drive are installed: headless Chromium (the
# HTML report's browser test) and slurm-wlm + munge (the SLURM profile test brings up a one-node
# cluster). Idempotent and quiet: installs only what is missing, with one apt-get update.
# Without root or apt-get it prints why and exits 0, so those tests skip with a reason instead
# of the build failing.
set -u

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}  # overridable to exercise the other branches
SLURMCTLD=${SLURMCTLD:-/usr/sbin/slurmctld}

packages=()
[ -x "$CHROMIUM" ] || packages+=(chromium fonts-dejavu-core)
[ -x "$SLURMCTLD" ] || packages+=(slurm-wlm munge)
if [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_test_tools: apt-get not found; install ${packages[*]} yourself to run" \
        "the browser and SLURM tests" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_test_tools: not root; run 'sudo apt-get install ${packages[*]}' to run" \
        "the browser and SLURM tests" >&2
    exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
    echo "ensure_test_tools: installing ${packages[*]} failed (their tests will skip):" >&2
    tail -n 20 "$log" >&2
    exit 0
fi
for tool in "$CHROMIUM" "$SLURMCTLD"; do
    [ -x "$tool" ] || echo "ensure_test_tools: installed, but $tool is missing" >&2
done
exit 0
