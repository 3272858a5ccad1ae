#!/usr/bin/env python3
"""Turns scripts/bench.sh's results.tsv into docs/performance.md and a PNG chart (gnuplot).

results.tsv lines: `meta KEY VALUE`, `note TEXT`, `REPEAT KEY VALUE`. Throughputs are MiB/s.
Every figure in the report is a ratio computed within one repeat (snapfs against the raw image,
or against the best peer, measured minutes apart on the same machine), then summarised as
min/median/max over the repeats: absolute figures drift with the machine's load.
"""

import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

PEER_NAMES = {
    "qsd": "qemu-storage-daemon (qcow2 overlay, FUSE export)",
    "nbd": "nbdkit cow filter + nbdfuse",
    "xmount": "xmount with a cache file",
}

WORKLOADS = {
    "seqread": "1 MiB sequential read, QD1",
    "randread": "4 KiB random read, QD16",
    "seqwrite": "1 MiB sequential write, QD1, + fdatasync",
    "randwrite": "4 KiB random write, QD16, + fdatasync",
    "overwrite": "1 MiB sequential overwrite, QD1, + fdatasync",
}

# (key, description, raw workload, peer workload, target ratio to raw or None)
SNAPFS_ROWS = [
    ("snapfs0.seqread", "origin, no snapshot: seq read 1 MiB (untouched origin)", "seqread", "seqread", 0.80),
    ("snapfs0.randread", "origin, no snapshot: rand read 4 KiB QD16", "randread", "randread", 0.80),
    ("snapread0.seqread", "snapshot, untouched (all chunks on the origin): seq read 1 MiB", "seqread", "seqread", None),
    ("snapread.seqread", "snapshot, half the chunks in the COW: seq read 1 MiB", "seqread", "seqread", None),
    ("snapread.randread", "snapshot, half the chunks in the COW: rand read 4 KiB QD16", "randread", "randread", 0.80),
    ("snapfs0.seqwrite", "origin, no snapshot: seq write 1 MiB + fsync", "seqwrite", "seqwrite", None),
    ("snapfs1.seqwrite", "origin, 1 snapshot: seq first write 1 MiB + fsync", "seqwrite", "seqwrite", None),
    ("snapfs4.seqwrite", "origin, 4 snapshots: seq first write 1 MiB + fsync", "seqwrite", "seqwrite", None),
    ("snapfs0.randwrite", "origin, no snapshot: rand write 4 KiB QD16 + fsync", "randwrite", "randwrite", None),
    ("snapfs1.randwrite", "origin, 1 snapshot: rand first write 4 KiB QD16 + fsync", "randwrite", "randwrite", None),
    ("snapfs1.randsync", "origin, 1 snapshot: rand first write 4 KiB QD1, fsync after each (fio fsync=1)", "randsync", "randsync", None),
    ("snapfs4.randwrite", "origin, 4 snapshots: rand first write 4 KiB QD16 + fsync", "randwrite", "randwrite", None),
    ("snapfs0.overwrite", "origin, no snapshot: overwrite 1 MiB + fsync", "overwrite", "overwrite", None),
    ("snapfs1.overwrite", "origin, 1 snapshot: overwrite 1 MiB (no copy-out left) + fsync", "overwrite", "overwrite", 0.80),
]

EXT4_ROWS = [
    ("seqwrite", "file write 1 MiB QD1 + fsync (first writes below)"),
    ("randwrite", "rand write 4 KiB QD16 into the file + fsync"),
    ("randread", "rand read 4 KiB QD16 of the file"),
]

SWEEP = [0, 1, 2, 4, 8]

# The device-serial limit of a first write: it reads the old data once and writes twice (the COW
# copy and the new data), so on a device that serves one request at a time it runs at most at
# 1 / (1/read + 2/write) of the raw figures, computed per repeat. (key, raw read, raw write)
LIMITS = [
    ("limit.seq", "seqread", "seqwrite"),
    ("limit.rand", "randread", "randwrite"),
]

# First-write rows measured against their limit: (key, limit key, goal as a ratio of the limit)
LIMIT_ROWS = [
    ("snapfs1.seqwrite", "limit.seq", 0.80),
    ("snapfs4.seqwrite", "limit.seq", None),
    ("snapfs1.randwrite", "limit.rand", 0.80),
    ("snapfs4.randwrite", "limit.rand", None),
]

# ext4 on loop with one snapshot: goal for the file write + fsync, as a ratio to raw.
EXT4_SEQWRITE_GOAL = 0.45


def add_limits(values):
    """Adds the limit.* keys (MiB/s per repeat) from the same repeat's raw figures."""
    for key, rd, wr in LIMITS:
        r, wv = values.get(f"raw.{rd}", {}), values.get(f"raw.{wr}", {})
        for rep in r:
            if rep in wv and r[rep] > 0 and wv[rep] > 0:
                values[key][rep] = 1 / (1 / r[rep] + 2 / wv[rep])


def load(path):
    meta, notes = {}, []
    values = defaultdict(dict)  # key -> repeat -> value
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "meta" and len(parts) >= 3:
                meta[parts[1]] = parts[2]
            elif parts[0] == "note":
                notes.append("\t".join(parts[1:]))
            elif len(parts) == 3:
                try:
                    values[parts[1]][int(parts[0])] = float(parts[2])
                except ValueError:
                    pass
    return meta, notes, values


def ratios(values, num, den):
    """Per-repeat ratios num/den over the repeats that have both."""
    a, b = values.get(num, {}), values.get(den, {})
    return [a[r] / b[r] for r in sorted(a) if r in b and b[r] > 0]


def extra_snapshot_costs(values, n):
    """Per-repeat cost of each snapshot beyond the first, in units of cost(0):
    (cost(N) - cost(1)) / (N - 1) / cost(0), cost = 1 / MiB/s of 4 KiB random first writes."""
    v0, v1, vn = (values.get(f"snapfs{k}.randwrite", {}) for k in (0, 1, n))
    return [(v0[r] / vn[r] - v0[r] / v1[r]) / (n - 1)
            for r in sorted(vn) if r in v0 and r in v1 and vn[r] > 0 and v1[r] > 0]


def best_peer_ratios(values, num, workload, peers):
    out, names = [], []
    for r in sorted(values.get(num, {})):
        best = None
        for p in peers:
            v = values.get(f"{p}.{workload}", {}).get(r)
            if v is not None and (best is None or v > best[0]):
                best = (v, p)
        if best and best[0] > 0:
            out.append(values[num][r] / best[0])
            names.append(best[1])
    return out, names


def summary(xs):
    if not xs:
        return None
    return min(xs), statistics.median(xs), max(xs)


def fmt3(s, digits=2):
    if s is None:
        return "n/a"
    lo, med, hi = s
    return f"{lo:.{digits}f} / **{med:.{digits}f}** / {hi:.{digits}f}"


def verdict(s, target, higher_is_better=True):
    if s is None or target is None:
        return ""
    ok = s[1] >= target if higher_is_better else s[1] <= target
    return "met" if ok else "not met"


def median_of(values, key):
    v = list(values.get(key, {}).values())
    return statistics.median(v) if v else None


def main():
    results, out_md, out_png = sys.argv[1], sys.argv[2], sys.argv[3]
    meta, notes, values = load(results)
    add_limits(values)
    peers = [p for p in PEER_NAMES if any(k.startswith(p + ".") for k in values)]
    lines = []
    w = lines.append
    w("# Performance")
    w("")
    w("Generated by `scripts/bench.sh` (do not edit by hand; the text around the figures is in")
    w("`scripts/bench/report.py`). The machine is shared and noisy: every figure below is a ratio")
    w("measured within one repeat (snapfs against the raw image, or against the best peer, minutes")
    w("apart), given as min / **median** / max over the repeats. Absolute MiB/s are listed for")
    w("orientation only; they are not comparable between runs.")
    w("")
    w(f"Run: {meta.get('date', '?')}, commit {meta.get('commit', '?')}, kernel {meta.get('kernel', '?')}, "
      f"{meta.get('cpus', '?')} CPUs, origin {meta.get('size_mib', '?')} MiB of random data, "
      f"{meta.get('repeats', '?')} repeat(s){' (quick mode)' if meta.get('quick') == '1' else ''}, "
      f"`/proc/sys/fs/fuse/max_pages_limit` = {meta.get('max_pages_limit', '?')}.")
    loads = [v for k, d in values.items() if k == "load" for v in d.values()]
    if loads:
        w(f"Load average (1 min) at the start of each repeat: {', '.join(f'{x:.2f}' for x in loads)}.")
    w("")
    w("Peers: " + "; ".join(f"{PEER_NAMES[p]} ({meta.get('peer.' + p, '?')})" for p in peers) + "."
      if peers else "Peers: none available.")
    for n in notes:
        w(f"- Note: {n}")
    w("")
    w("## Targets")
    w("")
    w("FUSE floor: the same workload on `examples/fuse_floor.rs` (the image served over FUSE with")
    w("snapfs's kernel settings, threads and device code, and no snapshot logic), as a ratio to")
    w("raw: the most any FUSE server built like snapfs reaches here.")
    w("")
    w("| target | figure (min / median / max) | goal | status | FUSE floor / raw |")
    w("|---|---|---|---|---|")
    targets_rows = []
    for key, desc, raw_wl, _, target in SNAPFS_ROWS:
        if target is not None:
            s = summary(ratios(values, key, f"raw.{raw_wl}"))
            floor = fmt3(summary(ratios(values, f"floor.{raw_wl}", f"raw.{raw_wl}")))
            targets_rows.append((desc, fmt3(s), f">= {target:.2f} x raw", verdict(s, target), floor))
    for key, limit, goal in LIMIT_ROWS:
        if goal is not None:
            desc = next(d for k, d, *_ in SNAPFS_ROWS if k == key)
            s = summary(ratios(values, key, limit))
            targets_rows.append((f"{desc}, ratio to the device-serial limit", fmt3(s),
                                 f">= {goal:.2f} x limit", verdict(s, goal), ""))
    s = summary(ratios(values, "ext4.snapfs.seqwrite", "ext4.raw.seqwrite"))
    targets_rows.append(("ext4 on loop, 1 snapshot: file write 1 MiB + fsync", fmt3(s),
                         f">= {EXT4_SEQWRITE_GOAL:.2f} x raw", verdict(s, EXT4_SEQWRITE_GOAL), ""))
    s = summary(ratios(values, "snapfs1.randsync", "raw.randsync"))
    targets_rows.append(("origin, 1 snapshot: rand first write 4 KiB, fsync after each (ratio to raw)",
                         fmt3(s), "no slower than before", "see the notes", ""))
    s = summary(ratios(values, "merge.snapfs", "merge.cp"))
    targets_rows.append(("merge vs cp of the same bytes", fmt3(s), ">= 0.80 x cp", verdict(s, 0.80), ""))
    s = summary(list(values.get("mount1m.bytes_per_exception", {}).values()))
    targets_rows.append(("memory per exception (1 M scattered exceptions, RSS growth)", fmt3(s, 1) + " bytes",
                         "< 32 bytes", verdict(s, 32, higher_is_better=False), ""))
    s = summary(list(values.get("mount1m.seconds", {}).values()))
    targets_rows.append(("mount with 1 M exceptions (cold cache)", fmt3(s, 3) + " s", "< 1 s",
                         verdict(s, 1.0, higher_is_better=False), ""))
    for n in SWEEP[1:]:
        s = summary(ratios(values, "snapfs0.randwrite", f"snapfs{n}.randwrite"))
        limit = 1 + 0.6 * n
        targets_rows.append((f"4 KiB random first-write cost with {n} snapshot(s) / cost with none", fmt3(s),
                             f"<= {limit:.1f}", verdict(s, limit, higher_is_better=False),
                             "below the old-data read alone: see the notes"))
    for n in SWEEP[2:]:
        s = summary(extra_snapshot_costs(values, n))
        targets_rows.append((f"4 KiB random first writes, {n} snapshots: cost of each snapshot beyond the first / cost with none",
                             fmt3(s), "<= 0.6", verdict(s, 0.6, higher_is_better=False), ""))
    for r in targets_rows:
        w("| " + " | ".join(r) + " |")
    w("")
    w("## Workloads: ratio to the raw image and to the best peer")
    w("")
    w("Raw = fio directly on the origin image file (O_DIRECT). First writes copy every chunk out")
    w("(16 KiB chunks for sequential writes, 4 KiB chunks for the 4 KiB random writes). The best")
    w("peer is the fastest peer at the same workload in the same repeat (for snapshot reads: the")
    w("peers' reads through their overlay).")
    w("")
    w("The device-serial limit column: a first write's ratio to `1 / (1/read + 2/write)` of the")
    w("same repeat's raw figures (1 MiB sequential ones for sequential first writes, 4 KiB QD16")
    w("random ones for random first writes): what a device serving one request at a time allows")
    w("for a write that reads the old data once and writes twice. Flushes are not in the limit.")
    w("")
    w("| case | ratio to raw | ratio to the FUSE floor | ratio to the device-serial limit | ratio to best peer | best peer (per repeat) | median MiB/s |")
    w("|---|---|---|---|---|---|---|")
    limit_of = {k: lim for k, lim, _ in LIMIT_ROWS}
    chart = []
    for key, desc, raw_wl, peer_wl, target in SNAPFS_ROWS:
        r = summary(ratios(values, key, f"raw.{raw_wl}"))
        fl = summary(ratios(values, key, f"floor.{raw_wl}"))
        bp, names = best_peer_ratios(values, key, peer_wl, peers)
        med = median_of(values, key)
        lim = fmt3(summary(ratios(values, key, limit_of[key]))) if key in limit_of else ""
        w(f"| {desc} | {fmt3(r)} | {fmt3(fl)} | {lim} | {fmt3(summary(bp))} | {', '.join(names) or 'n/a'} | "
          f"{med:.0f} |" if med is not None else f"| {desc} | n/a | n/a | n/a | n/a | n/a | n/a |")
        if r:
            chart.append((key, r, target, summary(ratios(values, f"floor.{raw_wl}", f"raw.{raw_wl}"))))
    w("")
    w("The FUSE floor and the peers, same workloads (ratio to raw; raw in MiB/s):")
    w("")
    w("| workload | raw MiB/s (median) | " + " | ".join(["FUSE floor", *peers]) + " |")
    w("|---|---|---|" + "---|" * len(peers))
    for wl, desc in WORKLOADS.items():
        med = median_of(values, f"raw.{wl}")
        cells = [fmt3(summary(ratios(values, f"{who}.{wl}", f"raw.{wl}"))) for who in ["floor", *peers]]
        w(f"| {desc} | {med:.0f} | " if med is not None else f"| {desc} | n/a | ")
        lines[-1] += " | ".join(cells) + " |"
    lims = [(k, median_of(values, k)) for k, *_ in LIMITS]
    if any(m is not None for _, m in lims):
        w("")
        w("Device-serial limits of a first write, `1 / (1/read + 2/write)` (median MiB/s): "
          + ", ".join(f"{'sequential 1 MiB' if k == 'limit.seq' else 'random 4 KiB QD16'} {m:.0f}"
                      for k, m in lims if m is not None) + ".")
    for p in peers:
        for wl in ("seqwrite", "randwrite"):
            r = summary(ratios(values, f"{p}.{wl}", f"raw.{wl}"))
            if r:
                chart.append((f"{p}.{wl}", r, None, None))
    w("")
    w("## ext4 on a loop device (direct I/O), fio inside the filesystem")
    w("")
    w("snapfs: the origin with one snapshot, so the first writes copy out. Ratio to the same")
    w("stack over the raw image.")
    w("")
    w("| workload | snapfs / raw | raw MiB/s (median) |")
    w("|---|---|---|")
    for wl, desc in EXT4_ROWS:
        r = summary(ratios(values, f"ext4.snapfs.{wl}", f"ext4.raw.{wl}"))
        med = median_of(values, f"ext4.raw.{wl}")
        w(f"| {desc} | {fmt3(r)} | {med:.0f} |" if med is not None else f"| {desc} | n/a | n/a |")
        if r:
            chart.append((f"ext4.{wl}", r, None, None))
    w("")
    w("## Merge")
    w("")
    w("A merge of a COW holding every chunk of the origin (16 KiB chunks), timed from the command")
    w("to the snapshot's disappearance from `status`, against `cp` of the COW file plus its")
    w("fdatasync (the same bytes, page caches dropped before each).")
    w("")
    r = summary(ratios(values, "merge.snapfs", "merge.cp"))
    w("| merge / cp | merge MiB/s (median) | cp MiB/s (median) |")
    w("|---|---|---|")
    w(f"| {fmt3(r)} | {median_of(values, 'merge.snapfs') or 0:.0f} | {median_of(values, 'merge.cp') or 0:.0f} |")
    if r:
        chart.append(("merge/cp", r, 0.80, None))
    w("")
    w("## Origin first-write cost against the number of snapshots")
    w("")
    w("Cost = time per byte of a first write (+ fdatasync), relative to the same write with no")
    w("snapshot. The target, 1 + 0.6 N, is for 4 KiB random first writes at QD16 (each extra")
    w("snapshot adds one COW write per chunk and shares the flushes); the sequential 1 MiB")
    w("figures are shown beside them. cost(N) / cost(1) is the growth from one snapshot on; the")
    w("cost of each snapshot beyond the first, (cost(N) - cost(1)) / (N - 1), in units of cost(0), is")
    w("the goal's slope (at most 0.6) without the old-data read that every first write pays once.")
    w("")
    w("| snapshots N | random: cost(N) / cost(0) | target | random: cost(N) / cost(1) "
      "| random: each snapshot beyond the first / cost(0) (<= 0.6) | random MiB/s (median) "
      "| sequential: cost(N) / cost(0) | sequential MiB/s (median) |")
    w("|---|---|---|---|---|---|---|---|")
    for n in SWEEP:
        c0 = summary(ratios(values, "snapfs0.randwrite", f"snapfs{n}.randwrite"))
        c1 = summary(ratios(values, "snapfs1.randwrite", f"snapfs{n}.randwrite"))
        med = median_of(values, f"snapfs{n}.randwrite")
        s0 = summary(ratios(values, "snapfs0.seqwrite", f"snapfs{n}.seqwrite"))
        smed = median_of(values, f"snapfs{n}.seqwrite")
        extra = fmt3(summary(extra_snapshot_costs(values, n))) if n >= 2 else "n/a"
        w(f"| {n} | {fmt3(c0)} | <= {1 + 0.6 * n:.1f} | {fmt3(c1)} | {extra} | "
          + (f"{med:.0f}" if med is not None else "n/a")
          + f" | {fmt3(s0)} | " + (f"{smed:.0f} |" if smed is not None else "n/a |"))
    w("")
    w("## Mount time and memory, 1 000 000 exceptions")
    w("")
    w("A persistent COW with 1 000 000 scattered exceptions (4 KiB chunks, no two forming a run:")
    w("the worst case for the table) written by `examples/bench_cow.rs`; page caches dropped")
    w("before each mount. Memory = the daemon's RSS growth over a mount with an empty snapshot,")
    w("per exception; peak = VmHWM growth (loading sorts the records once).")
    w("")
    w("| figure | min / median / max |")
    w("|---|---|")
    w(f"| mount time, s | {fmt3(summary(list(values.get('mount1m.seconds', {}).values())), 3)} |")
    w(f"| RSS per exception, bytes | {fmt3(summary(list(values.get('mount1m.bytes_per_exception', {}).values())), 1)} |")
    w(f"| peak RSS per exception, bytes | {fmt3(summary(list(values.get('mount1m.peak_bytes_per_exception', {}).values())), 1)} |")
    w("")
    backup_section(w, values)
    w("![ratios to raw](performance.png)")
    w("")
    # The analysis (what limits each figure, what changed) is kept beside this script so that
    # a re-run keeps it; it is written against the figures above.
    tail = os.environ.get("BENCH_NOTES_FILE") or os.path.join(os.path.dirname(__file__), "notes.md")
    if os.path.exists(tail):
        with open(tail) as f:
            w(f.read().rstrip("\n"))
            w("")
    with open(out_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(chart, out_png)


def backup_section(w, values):
    """The backup case (scripts/bench/backup.sh), if it ran: seconds, min / median / max."""
    if "backup.incremental.s" not in values:
        return
    changed = median_of(values, "backup.changed_bytes") or 0
    w("## Incremental backup")
    w("")
    w(f"`snapfs backup` of a volume with 1 % changed ({changed / 1048576:.1f} MiB in scattered")
    w("16 KiB chunks), against copying exactly those chunks from the same snapshot file, `cp`")
    w("of as many bytes, and full copies (scripts/bench/backup.sh); each ends with its data flushed.")
    w("")
    w("| copy | seconds (min / median / max) |")
    w("|---|---|")
    for key, what in [("incremental", "snapfs backup (incremental cycle)"),
                      ("ranges", "the changed chunks, pread/pwrite"),
                      ("cp_changed", "cp of the changed bytes"),
                      ("full", "snapfs backup --full"),
                      ("full_snapfs", "cp of the whole snapshot file"),
                      ("full_raw", "cp of the whole origin image")]:
        w(f"| {what} | {fmt3(summary(list(values.get(f'backup.{key}.s', {}).values())), 3)} |")
    w("")


def plot(chart, out_png):
    if not chart:
        return
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data")
        with open(data, "w") as f:
            for key, (lo, med, hi), target, floor in chart:
                kind = 2 if key.split(".")[0] in PEER_NAMES else 3 if key.startswith(("ext4", "merge")) else 1
                f.write(f'"{key}" {med:.4f} {lo:.4f} {hi:.4f} '
                        f'{target if target is not None else "NaN"} {kind} '
                        f'{floor[1] if floor is not None else "NaN"}\n')
        script = f"""
set terminal pngcairo size 1400,700 font ",10"
set output "{out_png}"
set title "Ratio to the raw image, median over the repeats (bars: min-max; dots: targets; triangles: FUSE floor; merge: ratio to cp)"
set style fill solid 0.7 border -1
set boxwidth 0.7
set xtics rotate by -40 left nomirror
set ylabel "ratio (1 = raw image)"
set yrange [0:1.6]
set xrange [-0.7:*]
set grid ytics
set key top left
set palette defined (1 "#4477aa", 2 "#bbbbbb", 3 "#228833")
unset colorbox
set cbrange [1:3]
plot "{data}" using 0:(($2 < 1.55) ? $2 : 1.55):(0.7):6:xtic(1) with boxes lc palette notitle, \\
     "{data}" using 0:2:3:4 with yerrorbars lc rgb "#222222" pt 0 notitle, \\
     "{data}" using 0:(($4 < 1.55) ? $4 : 1.55):(sprintf("%.2f", $2)) with labels offset 0,0.8 font ",8" notitle, \\
     "{data}" using 0:5 with points pt 7 ps 1.3 lc rgb "#cc3311" title "target", \\
     "{data}" using 0:7 with points pt 9 ps 1.3 lc rgb "#ee7733" title "FUSE floor (same workload)", \\
     1 with lines dt 2 lc rgb "#555555" title "raw image", \\
     NaN with boxes lc rgb "#4477aa" title "snapfs", \\
     NaN with boxes lc rgb "#bbbbbb" title "peers", \\
     NaN with boxes lc rgb "#228833" title "ext4 on loop, merge"
"""
        try:
            subprocess.run(["gnuplot"], input=script, text=True, check=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            print(f"report: gnuplot failed: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
