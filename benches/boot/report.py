#!/usr/bin/env python3
"""Turns the console logs of qemu/bench-boot into a report: DATE.md, DATE.json, DATE.tsv
and timeline.svg. Every time is a kernel printk timestamp (one clock for both inits),
relative to the kernel's "Run /init as init process" line.

Run by qemu/bench-boot; by hand: benches/boot/report.py --logs DIR --runs N --out DIR ...
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
BB_MARK = re.compile(r"^bbinit: (\S+) \(uptime [\d.]+\)(?: (.*))?$")
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
BB_STEPS = ["api-mounts", "modules", "device-wait", "lower", "upper", "overlay", "move-layers", "handover"]


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
    # Debug lines are read from the console copy: /dev/kmsg may drop some of a burst.
    with open(path, encoding="utf-8", errors="replace") as f:
        console = [line.rstrip("\r\n") for line in f if not PRINTK.match(line)]
    for msg in console:
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
        "log": os.path.basename(path),
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


def parse_busybox(path):
    run_init, real_init = parse_common(path)
    marks = []
    hwm = None
    for t, msg in printk_lines(path):
        m = BB_MARK.match(msg)
        if m:
            marks.append((m.group(1), t))
            extra = m.group(2) or ""
            hm = re.search(r"VmHWM=(\d+)kB", extra)
            if hm:
                hwm = int(hm.group(1))
    names = [n for n, _ in marks]
    if names != BB_STEPS:
        raise BadLog(f"{path}: busybox marks {names}, expected {BB_STEPS}")
    steps = []
    prev = run_init
    for name, t in marks:
        steps.append((name, (t - prev) * 1e3))
        prev = t
    return {
        "init": "busybox",
        "log": os.path.basename(path),
        "uptime_init_start_s": run_init,
        "uptime_real_init_s": real_init,
        "to_real_init_ms": (real_init - run_init) * 1e3,
        "to_handover_ms": (marks[-1][1] - run_init) * 1e3,
        "steps_ms": steps,
        "peak_kb": hwm,
    }


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


def bb_segments(boot):
    labels = {
        "api-mounts": "start + api mounts",
        "handover": "move api mounts",
        "device-wait": "device wait (poll)",
    }
    segs = []
    t = 0.0
    for name, ms in boot["steps_ms"]:
        segs.append((labels.get(name, name), t, t + ms, name))
        t += ms
    segs.append(("switch_root + exec real init", boot["to_handover_ms"], boot["to_real_init_ms"], "real-init"))
    return segs


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def timeline_svg(ovl, bb, title):
    groups = [("overlay-init", ovl_segments(ovl), ovl), ("busybox script", bb_segments(bb), bb)]
    total = max(ovl["to_real_init_ms"], bb["to_real_init_ms"])
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logs", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--upper", default="tmpfs")
    ap.add_argument("--kernel-version", default="?")
    ap.add_argument("--qemu-version", default="?")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--command", default="qemu/bench-boot")
    ap.add_argument("--overlay-initramfs", required=True)
    ap.add_argument("--overlay-init", required=True)
    ap.add_argument("--busybox-initramfs", required=True)
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--busybox-script", required=True)
    a = ap.parse_args()

    ovl = [parse_overlay(os.path.join(a.logs, f"overlay-init-{i}.log")) for i in range(1, a.runs + 1)]
    bb = [parse_busybox(os.path.join(a.logs, f"busybox-{i}.log")) for i in range(1, a.runs + 1)]
    debug = parse_overlay(os.path.join(a.logs, "overlay-init-debug.log"))

    sizes = {
        "overlay-init": {
            "initramfs_gz": os.path.getsize(a.overlay_initramfs),
            "init_binary": os.path.getsize(a.overlay_init),
        },
        "busybox": {
            "initramfs_gz": os.path.getsize(a.busybox_initramfs),
            # The shell is the init: busybox plus the script.
            "init_binary": os.path.getsize(a.busybox) + os.path.getsize(a.busybox_script),
        },
    }
    summary = {}
    for name, boots in (("overlay-init", ovl), ("busybox", bb)):
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
        summary[name] = s
    for key in ("self_elapsed_ms", "exec_to_main_ms", "kernel_ms", "overhead_ms", "unattributed_ms"):
        summary["overlay-init"][key] = stats([b[key] for b in ovl])
    summary["overlay-init"]["peak_kb"] = debug["peak_kb"]
    summary["busybox"]["peak_kb"] = stats([b["peak_kb"] for b in bb if b["peak_kb"]])["median"]
    so, sb = summary["overlay-init"], summary["busybox"]
    ratio_real = so["to_real_init_ms"]["median"] / sb["to_real_init_ms"]["median"]
    ratio_handover = so["to_handover_ms"]["median"] / sb["to_handover_ms"]["median"]
    # Boots i of both inits ran back to back: the ratio within each pair cancels slow
    # changes of the host's load, which the medians of each side do not.
    pair_ratios = [o["to_real_init_ms"] / b["to_real_init_ms"] for o, b in zip(ovl, bb)]
    ratio_pairs = stats(pair_ratios)
    ratio_min = so["to_real_init_ms"]["min"] / sb["to_real_init_ms"]["min"]
    summary["ratio_to_real_init"] = ratio_real
    summary["ratio_to_handover"] = ratio_handover
    summary["ratio_to_real_init_pairs"] = ratio_pairs
    summary["ratio_to_real_init_min"] = ratio_min

    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, a.date if a.upper == "tmpfs" else f"{a.date}-{a.upper}-upper")
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    meta = {
        "date": a.date,
        "command": a.command,
        "commit": a.commit,
        "kernel": a.kernel_version,
        "qemu": a.qemu_version,
        "host_cpu": cpu,
        "runs": a.runs,
        "upper": a.upper,
    }
    with open(base + ".json", "w") as f:
        json.dump(
            {"meta": meta, "sizes": sizes, "summary": summary, "boots": ovl + bb, "debug_boot": debug},
            f,
            indent=1,
            ensure_ascii=False,
        )
    with open(base + ".tsv", "w") as f:
        f.write("init\trun\tuptime_init_start_s\tuptime_real_init_s\tto_handover_ms\tto_real_init_ms\tpeak_kb\tsteps\n")
        for i, b in enumerate(ovl + bb):
            steps = " ".join(f"{n}={ms:.1f}" for n, ms in b["steps_ms"])
            f.write(
                f"{b['init']}\t{i % a.runs + 1}\t{b['uptime_init_start_s']:.6f}\t{b['uptime_real_init_s']:.6f}\t"
                f"{b['to_handover_ms']:.1f}\t{b['to_real_init_ms']:.1f}\t{b['peak_kb'] or ''}\t{steps}\n"
            )

    title = f"Boot timeline, {a.kernel_version}, {a.upper} upper ({a.date})"
    svg_name = "timeline.svg" if a.upper == "tmpfs" else f"timeline-{a.upper}-upper.svg"
    with open(os.path.join(a.out, svg_name), "w") as f:
        f.write(timeline_svg(median_boot(ovl), median_boot(bb), title))

    so_, sb_ = sizes["overlay-init"], sizes["busybox"]
    peak_ovl = so["peak_kb"]
    modules_sum = sum(debug["module_ms"].values())
    target_rows = [
        (
            "/init start → real init running ≤ 0.9× busybox",
            f"{ratio_real:.2f}×",
            ratio_real <= 0.9,
        ),
        (
            "/init start → handover ≤ 0.9× busybox",
            f"{ratio_handover:.2f}×",
            ratio_handover <= 0.9,
        ),
        (
            "own overhead (elapsed − module loading and mount steps) < 10 ms",
            f"{so['overhead_ms']['median']:.1f} ms",
            so["overhead_ms"]["median"] < 10,
        ),
        ("stripped init ≤ 400 KiB", kib(so_["init_binary"]), so_["init_binary"] <= 400 * 1024),
        (
            "initramfs smaller than the baseline's",
            f"{kib(so_['initramfs_gz'])} vs {kib(sb_['initramfs_gz'])}",
            so_["initramfs_gz"] < sb_["initramfs_gz"],
        ),
        (
            "peak memory ≤ 2 MiB",
            f"{peak_ovl} kB" if peak_ovl else "not logged",
            bool(peak_ovl) and peak_ovl <= 2048,
        ),
    ]

    L = []
    L.append(f"# Boot benchmark, {a.date}: overlay-init vs a busybox script ({a.upper} upper)\n")
    L.append(f"- command: `{a.command}` (commit {a.commit})")
    L.append(f"- kernel: Debian cloud {a.kernel_version}; {a.qemu_version}, TCG, 1 vCPU, 256 MiB, `quiet`")
    L.append(f"- host: {cpu} (shared with other work; TCG timings are noisy)")
    L.append(f"- {a.runs} boots of each, interleaved; medians, with min–max and the interquartile range")
    L.append(
        "- every time is a printk timestamp from the guest's kernel log, relative to the kernel's "
        "`Run /init as init process`; the real init (`/sbin/test-init`) writes `bench: realinit` to "
        "`/dev/kmsg` as its first command"
    )
    L.append("")
    L.append("| | overlay-init | busybox script | ratio |")
    L.append("|---|---|---|---|")
    L.append(
        f"| kernel uptime when the real init starts | {fmt_s(so['uptime_real_init_s'])} | "
        f"{fmt_s(sb['uptime_real_init_s'])} | |"
    )
    L.append(
        f"| kernel uptime when /init starts | {fmt_s(so['uptime_init_start_s'])} | "
        f"{fmt_s(sb['uptime_init_start_s'])} | |"
    )
    L.append(
        f"| /init start → real init running | {fmt_ms(so['to_real_init_ms'])} | "
        f"{fmt_ms(sb['to_real_init_ms'])} | {ratio_real:.2f} |"
    )
    L.append(
        f"| same, per interleaved pair (overlay-init ÷ busybox) | | | {ratio_pairs['median']:.2f} "
        f"(IQR {ratio_pairs['q1']:.2f}–{ratio_pairs['q3']:.2f}) |"
    )
    L.append(
        f"| same, fastest boot of each | {so['to_real_init_ms']['min']:.0f} ms | {sb['to_real_init_ms']['min']:.0f} ms | "
        f"{ratio_min:.2f} |"
    )
    L.append(
        f"| /init start → handover (init's last log line) | {fmt_ms(so['to_handover_ms'])} | "
        f"{fmt_ms(sb['to_handover_ms'])} | {ratio_handover:.2f} |"
    )
    L.append(
        f"| initramfs, gzip (init + 11 modules) | {kib(so_['initramfs_gz'])} | {kib(sb_['initramfs_gz'])} | "
        f"{so_['initramfs_gz'] / sb_['initramfs_gz']:.2f} |"
    )
    L.append(
        f"| init binary, stripped | {kib(so_['init_binary'])} | {kib(sb_['init_binary'])} (busybox + script) | "
        f"{so_['init_binary'] / sb_['init_binary']:.2f} |"
    )
    L.append(
        f"| init's peak memory (VmHWM before exec) | {peak_ovl} kB | {sb['peak_kb']:.0f} kB (the shell, PID 1) | |"
    )
    L.append("")
    L.append(
        "overlay-init's handover line comes after it freed the initramfs and switched root; the "
        "script's comes just before `switch_root`, whose deleting and exec are counted in "
        "\"real init running\" only. That row is the like-for-like one.\n"
    )
    L.append("## Targets (issue 7)\n")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for name, value, ok in target_rows:
        L.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
    L.append("")
    L.append("## Where the time goes (medians, ms)\n")
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
    L.append(f"| **elapsed (first clock reading → exec)** | {so['self_elapsed_ms']['median']:.1f} | "
             f"{so['self_elapsed_ms']['min']:.1f}–{so['self_elapsed_ms']['max']:.1f} |")
    L.append("")
    L.append(
        f"Kernel work (steps that are module loading or mount calls: {', '.join(KERNEL_STEPS)}): "
        f"median {so['kernel_ms']['median']:.1f} ms. Own overhead = elapsed − kernel work: median "
        f"{so['overhead_ms']['median']:.1f} ms ({so['overhead_ms']['min']:.1f}–{so['overhead_ms']['max']:.1f}); "
        "it counts device-wait, upper-dirs, check-init, free-initramfs and the time outside steps.\n"
    )
    L.append("busybox script, between its marks:\n")
    L.append("| step | median | min–max |")
    L.append("|---|---|---|")
    for step, s in sb["steps_ms"].items():
        label = {"api-mounts": "exec of /init + api mounts", "handover": "move api mounts"}.get(step, step)
        L.append(f"| {label} | {s['median']:.1f} | {s['min']:.1f}–{s['max']:.1f} |")
    L.append("")
    if debug["module_ms"]:
        L.append(
            "Per-module `finit_module` times of the one `ovl.debug` boot (parallel loader; "
            f"sum {modules_sum:.0f} ms, modules step {dict(debug['steps_ms']).get('modules', 0):.0f} ms):\n"
        )
        L.append("| module | ms |")
        L.append("|---|---|")
        for name, ms in debug["module_ms"].items():
            L.append(f"| {name} | {ms:.1f} |")
        L.append("")
    L.append(f"![boot timeline]({svg_name})\n")
    L.append(f"Raw numbers: [{os.path.basename(base)}.tsv]({os.path.basename(base)}.tsv), "
             f"[{os.path.basename(base)}.json]({os.path.basename(base)}.json).")
    with open(base + ".md", "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))
    print(f"\nwrote {base}.md, .json, .tsv and {os.path.join(a.out, svg_name)}", file=sys.stderr)


if __name__ == "__main__":
    main()
