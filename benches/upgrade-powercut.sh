#!/bin/bash
# Power cuts during `ovl.upgrade=reset` with a keep-list, many trials (not part of CI, which
# runs 3): each trial boots lower v2 over an upper filled under v1, with the upper disk opened
# cache=unsafe, SIGKILLs QEMU at a random instant within WINDOW ms after the upper is mounted,
# and checks a journal-replayed copy of the disk: the old upper with the reset still to come,
# or the new upper with every kept entry. Needs root (loop mounts) and what the QEMU tests need.
#
# Usage: benches/upgrade-powercut.sh [TRIALS] [WINDOW_MS]     (default 30, 400)
# Prints one line per trial and the count of each outcome; replays a run with
# OVL_UPGRADE_POWERCUT_SEED=N (printed first).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export OVL_UPGRADE_POWERCUT_TRIALS="${1:-30}"
export OVL_UPGRADE_POWERCUT_WINDOW_MS="${2:-400}"
export OVL_QEMU_JOBS="${OVL_QEMU_JOBS:-1}"
cargo test --quiet --test qemu upgrade::power_cut_during_upgrade_reset_leaves_old_or_new \
    -- --nocapture 2>&1 | grep -E '^power cut|test result|panicked'
