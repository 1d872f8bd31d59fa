#!/bin/bash
# Power cuts during a factory reset, many trials (not part of CI, which runs 2 per case):
# (a) a boot with `ovl.reset` on an upper of 4,000 files, and (b) `overlay-init reset` in the
# booted system. Each trial copies the filled upper, boots with the upper disk opened
# cache=unsafe, SIGKILLs QEMU at a random instant, checks a journal-replayed copy of the disk
# (the old upper whole, with or without the reset pending, or the factory upper: never a mix),
# then boots again without ovl.reset, which must come up in the factory state (or the old one
# when the cut fell before the reset was recorded). Needs root (loop mounts) and what the QEMU
# tests need.
#
# Usage: benches/reset-powercut.sh [TRIALS] [WINDOW_MS]     (default 30 per case, 3000)
# Case (a) cuts at a random instant after the console shows the upper mounted: the odd trials
# within 200 ms (the reset's durable steps end some 60-120 ms after it under TCG), the even ones
# within WINDOW_MS (the overlay, the switch, the 2 s background removal of the old files).
# Case (b) cuts within 60 ms after a marker printed right before the command (which takes some
# 20 ms). Trial 0 of each cuts at once. Prints one line per trial (how far the boot got, what
# the disk held) and the count of each outcome per case; replays a run with
# OVL_RESET_POWERCUT_SEED=N (printed first).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export OVL_RESET_POWERCUT_TRIALS="${1:-30}"
export OVL_RESET_POWERCUT_WINDOW_MS="${2:-3000}"
export OVL_QEMU_JOBS="${OVL_QEMU_JOBS:-1}"
cargo test --quiet --test qemu reset_powercut:: -- --nocapture --test-threads=1 2>&1 |
    grep -E 'power cut|test result|panicked'
