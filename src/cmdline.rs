//! /proc/cmdline -> typed Config.
