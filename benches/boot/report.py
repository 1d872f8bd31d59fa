#!/usr/bin/env python3
"""Turns the console logs of qemu/bench-boot into a report: DATE.md, DATE.json, DATE.tsv
and timeline.svg. Every time is a kernel printk timestamp (one clock for all inits),
relative to the kernel's "Run /init as init process" line.

Equal work is checked, not assumed: every boot's real init printed the loaded modules
(/proc/modules) and the mounts at /, /rom and /overlay; a boot whose modules are not the
expected set, or whose mounts differ from overlay-init's, is an error.

Run by qemu/bench-boot; by hand: benches/boot/report.py --logs DIR --runs N --smp "1 2" ...
"""

import argparse
import json
import os
import re
import statistics
import sys

PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
OVL_HANDOVER = re.compile(
    r"^overlay-init: handover to (\S+) after ([\d.]+) ms \(uptime [\d.]+ s.*\): (\S+=[\d.]+ms.*)$"
)
# The script's and the floor's marks: "bbinit: STEP (uptime U) [EXTRA]", "floorinit: STEP [EXTRA]".
MARK = {
    "busybox": re.compile(r"^bbinit: (\S+) \(uptime [\d.]+\)(?: (.*))?$"),
    "floor": re.compile(r"^floorinit: (\S+)(?: (.*))?$"),
}
BENCH_MODULES = re.compile(r"^bench: modules ?(.*)$")
BENCH_MOUNT = re.compile(r"^bench: mount (\S+) (.*)$")
INITS = ["overlay-init", "busybox", "floor"]
LABELS = {"overlay-init": "overlay-init", "busybox": "busybox script", "floor": "floor (C, syscalls only)"}
PEAK = re.compile(r"peak memory:? (\d+) kB")
MODULE = re.compile(r"^overlay-init: module (\S+) loaded in ([\d.]+)(ms|µs|us|s)$")

# overlay-init steps that are one or a few module-loading or mount system calls: the
# kernel's work, not the init's. Everything else in its elapsed time is its own overhead.
KERNEL_STEPS = [
    "api-mounts",
    "modules",
    "lower",
    "upper",
    "overlay",
    "move-layers",
    "move-api-mounts",
    "switch-root",
]


class BadLog(Exception):
    pass


def printk_lines(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = PRINTK.match(line.rstrip("\r\n"))
            if m:
                yield float(m.group(1)), m.group(2)


def parse_common(path):
    run_init = real_init = None
    for t, msg in printk_lines(path):
        if msg == "Run /init as init process":
            run_init = t
        elif msg == "bench: realinit":
            real_init = t
    if run_init is None or real_init is None:
        raise BadLog(f"{path}: no 'Run /init' or 'bench: realinit' line")
    return run_init, real_init


def parse_work(path):
    """What the real init saw: the loaded modules and the mounts at /, /rom, /overlay."""
    modules = None
    mounts = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            m = BENCH_MODULES.match(line)
            if m and modules is None:
                modules = sorted(m.group(1).split())
            m = BENCH_MOUNT.match(line)
            if m:
                mounts[m.group(1)] = m.group(2)
    if modules is None:
        raise BadLog(f"{path}: the real init printed no 'bench: modules' line")
    return {"modules": modules, "mounts": mounts}


def parse_overlay(path):
    run_init, real_init = parse_common(path)
    rec = None
    modules = {}
    peak_kb = None
    for t, msg in printk_lines(path):
        m = OVL_HANDOVER.match(msg)
        if m:
            steps = []
            for item in m.group(3).split():
                name, _, value = item.partition("=")
                steps.append((name, float(value.rstrip("ms"))))
            rec = {"handover_at": t, "elapsed_ms": float(m.group(2)), "steps": steps}
    # With `quiet` overlay-init's informational and debug lines are only in the kernel log
    # (the real init's dmesg); logs from before that also had them on the console.
    with open(path, encoding="utf-8", errors="replace") as f:
        console = [line.rstrip("\r\n") for line in f if not PRINTK.match(line)]
    for msg in [msg for _, msg in printk_lines(path)] + console:
        m = PEAK.search(msg)
        if m:
            peak_kb = int(m.group(1))
        m = MODULE.match(msg)
        if m:
            scale = {"ms": 1.0, "µs": 1e-3, "us": 1e-3, "s": 1e3}[m.group(3)]
            modules[m.group(1)] = float(m.group(2)) * scale
    if rec is None:
        raise BadLog(f"{path}: no overlay-init handover line")
    to_handover = (rec["handover_at"] - run_init) * 1e3
    steps = dict(rec["steps"])
    kernel_ms = sum(steps.get(s, 0.0) for s in KERNEL_STEPS)
    return {
        "init": "overlay-init",
        "log": path,
        **parse_work(path),
        "uptime_init_start_s": run_init,
        "uptime_real_init_s": real_init,
        "to_real_init_ms": (real_init - run_init) * 1e3,
        "to_handover_ms": to_handover,
        "self_elapsed_ms": rec["elapsed_ms"],
        # From the kernel's exec of /init to the init's first clock reading.
        "exec_to_main_ms": to_handover - rec["elapsed_ms"],
        "steps_ms": rec["steps"],
        "kernel_ms": kernel_ms,
        "overhead_ms": rec["elapsed_ms"] - kernel_ms,
        "unattributed_ms": rec["elapsed_ms"] - sum(steps.values()),
        "peak_kb": peak_kb,
        "module_ms": modules,
    }


def parse_marks(path, init):
    """The busybox script's or the floor's boot: the time between its marks."""
    run_init, real_init = parse_common(path)
    marks = []
    hwm = None
    for t, msg in printk_lines(path):
        m = MARK[init].match(msg)
        if m:
            if m.group(1) == "FAILED:":
                raise BadLog(f"{path}: {msg}")
            marks.append((m.group(1), t))
            hm = re.search(r"VmHWM=(\d+)kB", m.group(2) or "")
            if hm:
                hwm = int(hm.group(1))
    if not marks or marks[-1][0] != "handover":
        raise BadLog(f"{path}: {init} marks {[n for n, _ in marks]} do not end with 'handover'")
    steps = []
    prev = run_init
    for name, t in marks:
        steps.append((name, (t - prev) * 1e3))
        prev = t
    return {
        "init": init,
        "log": path,
        **parse_work(path),
        "uptime_init_start_s": run_init,
        "uptime_real_init_s": real_init,
        "to_real_init_ms": (real_init - run_init) * 1e3,
        "to_handover_ms": (marks[-1][1] - run_init) * 1e3,
        "steps_ms": steps,
        "peak_kb": hwm,
    }


def check_equal_work(boots, expected_modules):
    """Every boot loaded the expected modules; the script's and the floor's mounts are
    overlay-init's (boot i of each against overlay-init's boot i)."""
    problems = []
    for init in INITS:
        for b in boots[init]:
            if b["modules"] != expected_modules:
                problems.append(f"{b['log']}: modules {b['modules']}, expected {expected_modules}")
    for init in ("busybox", "floor"):
        for o, b in zip(boots["overlay-init"], boots[init]):
            for point in sorted(set(o["mounts"]) | set(b["mounts"])):
                if o["mounts"].get(point) != b["mounts"].get(point):
                    problems.append(
                        f"{b['log']}: mount {point} is {b['mounts'].get(point)!r}; "
                        f"overlay-init's is {o['mounts'].get(point)!r} ({o['log']})"
                    )
    if problems:
        raise BadLog("not the same work:\n  " + "\n  ".join(problems))


def stats(values):
    values = sorted(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {
        "median": statistics.median(values),
        "min": values[0],
        "max": values[-1],
        "q1": q1,
        "q3": q3,
        "n": len(values),
    }


def median_boot(boots, key="to_real_init_ms"):
    """The boot nearest the median of `key` (the lower middle one for an even count)."""
    ordered = sorted(boots, key=lambda b: b[key])
    return ordered[(len(ordered) - 1) // 2]


def fmt_ms(s):
    return f"{s['median']:.0f} ms ({s['min']:.0f}–{s['max']:.0f}, IQR {s['q1']:.0f}–{s['q3']:.0f})"


def fmt_s(s):
    return f"{s['median']:.3f} s ({s['min']:.3f}–{s['max']:.3f})"


def kib(n):
    return f"{n / 1024:.0f} KiB"


# ---------------------------------------------------------------- SVG timeline

COLOURS = {
    "exec": "#bbbbbb",
    "api-mounts": "#8fb3d9",
    "modules": "#e6a157",
    "device-wait": "#c9a0dc",
    "lower": "#7fc97f",
    "upper": "#a6d96a",
    "upper-dirs": "#a6d96a",
    "overlay": "#4daf4a",
    "move-layers": "#66c2a5",
    "check-init": "#d9d97f",
    "move-api-mounts": "#66c2a5",
    "free-initramfs": "#f0c05a",
    "switch-root": "#f0c05a",
    "handover": "#66c2a5",
    "other": "#e07b7b",
    "real-init": "#999999",
}


def ovl_segments(boot):
    """(label, start_ms, end_ms) from /init start. Steps are laid back to back from the
    init's first clock reading (the summary gives durations, not start times); the time
    outside every step (command line, logging) is shown as one bar at the end."""
    segs = [("exec + runtime start", 0.0, boot["exec_to_main_ms"], "exec")]
    t = boot["exec_to_main_ms"]
    for name, ms in boot["steps_ms"]:
        if ms < 0.05:
            continue
        segs.append((name, t, t + ms, name))
        t += ms
    if boot["unattributed_ms"] > 0.05:
        segs.append(("other (cmdline, logging)", t, t + boot["unattributed_ms"], "other"))
    segs.append(("exec real init", boot["to_handover_ms"], boot["to_real_init_ms"], "real-init"))
    return segs


def marks_segments(boot):
    labels = {
        "api-mounts": "start + api mounts",
        "handover": "move api mounts" if boot["init"] == "busybox" else "switch root",
        "device-wait": "device wait (poll)",
    }
    segs = []
    t = 0.0
    for name, ms in boot["steps_ms"]:
        segs.append((labels.get(name, name), t, t + ms, name))
        t += ms
    last = "switch_root + exec real init" if boot["init"] == "busybox" else "exec real init"
    segs.append((last, boot["to_handover_ms"], boot["to_real_init_ms"], "real-init"))
    return segs


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def timeline_svg(median_boots, title):
    groups = [
        (LABELS[init], ovl_segments(b) if init == "overlay-init" else marks_segments(b), b)
        for init, b in median_boots
    ]
    total = max(b["to_real_init_ms"] for _, b in median_boots)
    tick = 50 if total <= 600 else 100
    axis_max = (int(total / tick) + 1) * tick
    left, right, row_h, bar_h = 230, 90, 18, 12
    width = 1000
    plot_w = width - left - right
    x = lambda ms: left + ms / axis_max * plot_w  # noqa: E731
    rows = sum(len(s) + 2 for _, s, _ in groups)
    height = 70 + rows * row_h + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>',
        f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">time from the kernel starting /init (ms); '
        "one median boot of each, QEMU TCG</text>",
    ]
    y = 60
    axis_top = y
    for name, segs, boot in groups:
        out.append(
            f'<text x="10" y="{y + 13}" font-weight="bold">{esc(name)}: real init after '
            f'{boot["to_real_init_ms"]:.0f} ms</text>'
        )
        y += row_h + 4
        for label, start, end, kind in segs:
            w = max(x(end) - x(start), 1.0)
            colour = COLOURS.get(kind, "#cccccc")
            out.append(f'<text x="{left - 8}" y="{y + 11}" text-anchor="end">{esc(label)}</text>')
            out.append(
                f'<rect x="{x(start):.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}" stroke="#555" stroke-width="0.5"/>'
            )
            out.append(f'<text x="{x(start) + w + 4:.1f}" y="{y + 10}" fill="#333">{end - start:.1f}</text>')
            y += row_h
        # The whole run as one bar, for the eye.
        out.append(
            f'<rect x="{x(0):.1f}" y="{y + 2}" width="{x(boot["to_real_init_ms"]) - x(0):.1f}" height="4" fill="#333"/>'
        )
        y += row_h
    axis_bottom = y
    for ms in range(0, axis_max + 1, tick):
        out.append(
            f'<line x1="{x(ms):.1f}" y1="{axis_top}" x2="{x(ms):.1f}" y2="{axis_bottom}" stroke="#ddd" stroke-width="1"/>'
        )
        out.append(f'<text x="{x(ms):.1f}" y="{axis_bottom + 15}" text-anchor="middle" fill="#555">{ms}</text>')
    out.append(f'<text x="{x(axis_max / 2):.1f}" y="{axis_bottom + 32}" text-anchor="middle" fill="#555">ms</text>')
    out.append("</svg>")
    # Grid lines first so bars draw over them.
    grid = [line for line in out if line.startswith("<line")]
    rest = [line for line in out if not line.startswith("<line")]
    return "\n".join(rest[:4] + grid + rest[4:]) + "\n"


# ---------------------------------------------------------------- report


def summarise(boots):
    s = {
        "uptime_real_init_s": stats([b["uptime_real_init_s"] for b in boots]),
        "uptime_init_start_s": stats([b["uptime_init_start_s"] for b in boots]),
        "to_real_init_ms": stats([b["to_real_init_ms"] for b in boots]),
        "to_handover_ms": stats([b["to_handover_ms"] for b in boots]),
    }
    steps = {}
    for b in boots:
        for step, ms in b["steps_ms"]:
            steps.setdefault(step, []).append(ms)
    s["steps_ms"] = {step: stats(v) for step, v in steps.items()}
    peaks = [b["peak_kb"] for b in boots if b["peak_kb"]]
    s["peak_kb"] = statistics.median(peaks) if peaks else None
    return s


def ratios(ovl, other):
    """overlay-init ÷ other: of the medians, per interleaved pair (boot i of each ran back to
    back, so slow changes of the host's load cancel), and of the fastest boots."""
    a = [b["to_real_init_ms"] for b in ovl]
    b = [b["to_real_init_ms"] for b in other]
    return {
        "medians": statistics.median(a) / statistics.median(b),
        "pairs": stats([x / y for x, y in zip(a, b)]),
        "fastest": min(a) / min(b),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logs", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--smp", default="1")
    ap.add_argument("--out", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--upper", default="tmpfs")
    ap.add_argument("--modules", required=True, help="the modules every boot must have loaded")
    ap.add_argument("--host-load", default="?")
    ap.add_argument("--kernel-version", default="?")
    ap.add_argument("--qemu-version", default="?")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--command", default="qemu/bench-boot")
    ap.add_argument("--initramfs-dir", required=True)
    ap.add_argument("--overlay-init", required=True)
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--busybox-script", required=True)
    ap.add_argument("--floor", required=True)
    a = ap.parse_args()
    smps = [int(x) for x in a.smp.split()]
    expected_modules = sorted(a.modules.split())

    boots, debug, summary = {}, {}, {}
    for smp in smps:
        d = os.path.join(a.logs, f"smp{smp}")
        runs = range(1, a.runs + 1)
        bs = {
            "overlay-init": [parse_overlay(os.path.join(d, f"overlay-init-{i}.log")) for i in runs],
            "busybox": [parse_marks(os.path.join(d, f"busybox-{i}.log"), "busybox") for i in runs],
            "floor": [parse_marks(os.path.join(d, f"floor-{i}.log"), "floor") for i in runs],
        }
        check_equal_work(bs, expected_modules)
        for init in INITS:
            for b in bs[init]:
                b["smp"] = smp
        boots[smp] = bs
        debug[smp] = parse_overlay(os.path.join(d, "overlay-init-debug.log"))
        sm = {init: summarise(bs[init]) for init in INITS}
        ovl = bs["overlay-init"]
        for key in ("self_elapsed_ms", "exec_to_main_ms", "kernel_ms", "overhead_ms", "unattributed_ms"):
            sm["overlay-init"][key] = stats([b[key] for b in ovl])
        sm["ratio_to_busybox"] = ratios(ovl, bs["busybox"])
        sm["ratio_to_floor"] = ratios(ovl, bs["floor"])
        summary[smp] = sm

    imgs = a.initramfs_dir
    sizes = {
        "overlay-init": {
            "initramfs_gz": os.path.getsize(os.path.join(imgs, "overlay-init.cpio.gz")),
            "init_binary": os.path.getsize(a.overlay_init),
        },
        "busybox": {
            "initramfs_gz": os.path.getsize(os.path.join(imgs, "busybox.cpio.gz")),
            # The shell is the init: busybox plus the script.
            "init_binary": os.path.getsize(a.busybox) + os.path.getsize(a.busybox_script),
        },
        "floor": {
            "initramfs_gz": os.path.getsize(os.path.join(imgs, "floor.cpio.gz")),
            "init_binary": os.path.getsize(a.floor),
        },
    }

    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, a.date if a.upper == "tmpfs" else f"{a.date}-{a.upper}-upper")
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    host_cpus = os.cpu_count()
    meta = {
        "date": a.date,
        "command": a.command,
        "commit": a.commit,
        "kernel": a.kernel_version,
        "qemu": a.qemu_version,
        "host_cpu": cpu,
        "host_cpus": host_cpus,
        "host_load_at_end": a.host_load,
        "runs": a.runs,
        "smp": smps,
        "upper": a.upper,
        "modules": expected_modules,
    }
    all_boots = [b for smp in smps for init in INITS for b in boots[smp][init]]
    with open(base + ".json", "w") as f:
        json.dump(
            {"meta": meta, "sizes": sizes, "summary": summary, "boots": all_boots, "debug_boots": debug},
            f,
            indent=1,
            ensure_ascii=False,
        )
    with open(base + ".tsv", "w") as f:
        f.write("init\tsmp\trun\tuptime_init_start_s\tuptime_real_init_s\tto_handover_ms\tto_real_init_ms\tpeak_kb\tsteps\n")
        for smp in smps:
            for init in INITS:
                for i, b in enumerate(boots[smp][init], 1):
                    steps = " ".join(f"{n}={ms:.1f}" for n, ms in b["steps_ms"])
                    f.write(
                        f"{init}\t{smp}\t{i}\t{b['uptime_init_start_s']:.6f}\t{b['uptime_real_init_s']:.6f}\t"
                        f"{b['to_handover_ms']:.1f}\t{b['to_real_init_ms']:.1f}\t{b['peak_kb'] or ''}\t{steps}\n"
                    )

    title = f"Boot timeline, {a.kernel_version}, {a.upper} upper, {smps[0]} vCPU ({a.date})"
    svg_name = "timeline.svg" if a.upper == "tmpfs" else f"timeline-{a.upper}-upper.svg"
    with open(os.path.join(a.out, svg_name), "w") as f:
        f.write(timeline_svg([(init, median_boot(boots[smps[0]][init])) for init in INITS], title))

    L = []
    L.append(f"# Boot benchmark, {a.date}: overlay-init, a busybox script and the floor, equal work ({a.upper} upper)\n")
    L.append(f"- command: `{a.command}` (commit {a.commit})")
    L.append(f"- kernel: Debian cloud {a.kernel_version}; {a.qemu_version}, TCG, 256 MiB, `quiet`; vCPUs: {', '.join(map(str, smps))}")
    L.append(f"- host: {cpu}, {host_cpus} CPUs, load average at the end {a.host_load} (TCG timings are noisy on a shared host)")
    L.append(f"- {a.runs} boots of each init per vCPU count, interleaved (overlay-init, busybox, floor, ...); medians, min–max and the interquartile range")
    L.append(
        f"- equal work, checked after every boot: the modules loaded ({len(expected_modules)}: "
        f"{' '.join(expected_modules)}) and the mounts at /, /rom, /overlay (type, source, options) are overlay-init's"
    )
    L.append(
        "- every time is a printk timestamp from the guest's kernel log, relative to the kernel's "
        "`Run /init as init process`; the real init (`/sbin/test-init`) writes `bench: realinit` to "
        "`/dev/kmsg` as its first command"
    )
    L.append("")
    L.append("## /init start → real init running\n")
    L.append("| vCPUs | init | median (min–max, IQR) | overlay-init ÷ this: medians | per interleaved pair (IQR) | fastest boots |")
    L.append("|---|---|---|---|---|---|")
    for smp in smps:
        sm = summary[smp]
        for init in INITS:
            if init == "overlay-init":
                r = ("", "", "")
            else:
                rr = sm["ratio_to_busybox" if init == "busybox" else "ratio_to_floor"]
                r = (
                    f"{rr['medians']:.2f}",
                    f"{rr['pairs']['median']:.2f} ({rr['pairs']['q1']:.2f}–{rr['pairs']['q3']:.2f})",
                    f"{rr['fastest']:.2f}",
                )
            L.append(f"| {smp} | {LABELS[init]} | {fmt_ms(sm[init]['to_real_init_ms'])} | {r[0]} | {r[1]} | {r[2]} |")
    L.append("")
    L.append("| | overlay-init | busybox script | floor |")
    L.append("|---|---|---|---|")
    L.append("| initramfs, gzip (init + the same modules) | " + " | ".join(kib(sizes[i]["initramfs_gz"]) for i in INITS) + " |")
    L.append(
        f"| init binary, stripped | {kib(sizes['overlay-init']['init_binary'])} | "
        f"{kib(sizes['busybox']['init_binary'])} (busybox + script) | {kib(sizes['floor']['init_binary'])} |"
    )
    peaks = []
    for init in INITS:
        p = summary[smps[0]][init]["peak_kb"]
        peaks.append(f"{p:.0f} kB" if p else "not logged")
    L.append(f"| peak memory (VmHWM before exec, {smps[0]} vCPU) | " + " | ".join(peaks) + " |")
    L.append("")

    so0 = summary[smps[0]]["overlay-init"]
    target_rows = []
    for smp in smps:
        rf = summary[smp]["ratio_to_floor"]["medians"]
        target_rows.append((f"{smp} vCPU: /init → real init ≤ 1.05× the floor (medians)", f"{rf:.2f}×", rf <= 1.05))
    for smp in smps:
        ov = summary[smp]["overlay-init"]["overhead_ms"]["median"]
        target_rows.append((f"{smp} vCPU: own overhead < 10 ms", f"{ov:.1f} ms", ov < 10))
    target_rows.append(
        ("stripped init ≤ 400 KiB", kib(sizes["overlay-init"]["init_binary"]), sizes["overlay-init"]["init_binary"] <= 400 * 1024)
    )
    pk = so0["peak_kb"]
    target_rows.append(("peak memory ≤ 2 MiB", f"{pk:.0f} kB" if pk else "not logged", bool(pk) and pk <= 2048))
    L.append("## Targets (issue 17)\n")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for name, value, ok in target_rows:
        L.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
    L.append("")

    L.append("## Where the time goes (medians, ms)\n")
    for smp in smps:
        so = summary[smp]["overlay-init"]
        L.append(f"### {smp} vCPU\n")
        L.append("overlay-init, from its summary line (`Timeline`):\n")
        L.append("| step | median | min–max |")
        L.append("|---|---|---|")
        L.append(
            f"| exec of /init → first clock reading | {so['exec_to_main_ms']['median']:.1f} | "
            f"{so['exec_to_main_ms']['min']:.1f}–{so['exec_to_main_ms']['max']:.1f} |"
        )
        for step, s in so["steps_ms"].items():
            L.append(f"| {step} | {s['median']:.1f} | {s['min']:.1f}–{s['max']:.1f} |")
        L.append(
            f"| outside any step (cmdline, logging) | {so['unattributed_ms']['median']:.1f} | "
            f"{so['unattributed_ms']['min']:.1f}–{so['unattributed_ms']['max']:.1f} |"
        )
        L.append(
            f"| **elapsed (first clock reading → exec)** | {so['self_elapsed_ms']['median']:.1f} | "
            f"{so['self_elapsed_ms']['min']:.1f}–{so['self_elapsed_ms']['max']:.1f} |"
        )
        L.append("")
        L.append(
            f"Kernel work (steps that are module loading or mount calls: {', '.join(KERNEL_STEPS)}): "
            f"median {so['kernel_ms']['median']:.1f} ms. Own overhead = elapsed − kernel work: median "
            f"{so['overhead_ms']['median']:.1f} ms ({so['overhead_ms']['min']:.1f}–{so['overhead_ms']['max']:.1f}).\n"
        )
        sf = summary[smp]["floor"]
        L.append(
            "Side by side with the floor, for the steps both have (medians). The floor's first mark "
            "also holds the exec of `/init` (added to overlay-init's api-mounts here); overlay-init "
            "loads filesystem modules when a mount needs them, so its lower and overlay steps hold "
            "the squashfs and overlay module loads that the floor's modules step holds:\n"
        )
        L.append("| step | overlay-init | floor | difference |")
        L.append("|---|---|---|---|")
        for step, s_floor in sf["steps_ms"].items():
            if step == "handover":
                continue
            if step == "api-mounts":
                ours = so["exec_to_main_ms"]["median"] + so["steps_ms"].get(step, {"median": 0.0})["median"]
            elif step in so["steps_ms"]:
                ours = so["steps_ms"][step]["median"]
            else:
                continue
            L.append(f"| {step} | {ours:.1f} | {s_floor['median']:.1f} | {ours - s_floor['median']:+.1f} |")
        only = [k for k in so["steps_ms"] if k not in sf["steps_ms"]]
        if only:
            L.append(
                "| overlay-init only: " + ", ".join(only) + " | "
                f"{sum(so['steps_ms'][k]['median'] for k in only):.1f} | | |"
            )
        L.append("")
        for init in ("floor", "busybox"):
            sm = summary[smp][init]
            L.append(f"{LABELS[init]}, between its marks (the first from /init start):\n")
            L.append("| step | median | min–max |")
            L.append("|---|---|---|")
            for step, s in sm["steps_ms"].items():
                L.append(f"| {step} | {s['median']:.1f} | {s['min']:.1f}–{s['max']:.1f} |")
            L.append("")
        dbg = debug[smp]
        if dbg["module_ms"]:
            L.append(
                f"Per-module `finit_module` times of the `ovl.debug` boot ({smp} vCPU; sum "
                f"{sum(dbg['module_ms'].values()):.0f} ms, modules step {dict(dbg['steps_ms']).get('modules', 0):.0f} ms): "
                + ", ".join(f"{n} {ms:.1f}" for n, ms in dbg["module_ms"].items())
                + "\n"
            )
    L.append(f"![boot timeline]({svg_name})\n")
    L.append(f"Raw numbers: [{os.path.basename(base)}.tsv]({os.path.basename(base)}.tsv), "
             f"[{os.path.basename(base)}.json]({os.path.basename(base)}.json).")
    with open(base + ".md", "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))
    print(f"\nwrote {base}.md, .json, .tsv and {os.path.join(a.out, svg_name)}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except BadLog as e:
        print(f"report.py: {e}", file=sys.stderr)
        sys.exit(1)
