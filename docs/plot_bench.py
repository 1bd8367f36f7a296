#!/usr/bin/env python3
"""Draws `msgr bench --json` results as an SVG: msgs/s and p99 round trip against
message size, one line per transport (msgr, raw) and stack. Standard library only.

Usage: docs/plot_bench.py OUT.svg [NAME[|RAW NAME]=]RESULT.json [...]

Rows are grouped by (transport, name, depth); each group is one line, its points
sorted by size. A msgr row's name is NAME when given, else "msgr <ms_type>" (so runs
whose client used the same stack against different servers can be told apart). A raw
row's name is RAW NAME when given, else "raw TCP"; when several files give raw rows the
same name, size and depth, the first file's is drawn. One colour per name; depth 1
solid, deeper dashed. Axes are logarithmic.
"""
import json
import math
import sys
from collections import defaultdict

W = 980
PANEL_W, PANEL_H = 400, 300
MARGIN_L, MARGIN_T = 70, 50
GAP = 90
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def human_size(n):
    for unit, div in (("M", 1 << 20), ("k", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def human_num(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def load(args):
    groups = defaultdict(dict)
    for arg in args:
        names, sep, path = arg.partition("=")
        if not sep:
            names, path = "", arg
        name, _, raw_name = names.partition("|")
        with open(path) as f:
            doc = json.load(f)
        for r in doc["rows"]:
            if r["transport"] == "raw":
                key = ("raw", raw_name or "raw TCP", r["depth"])
            else:
                key = (r["transport"], name or f'msgr {r.get("ms_type", "?")}', r["depth"])
            groups[key].setdefault(r["size"], r)
    return groups


def log_ticks(lo, hi):
    ticks = []
    e = math.floor(math.log10(lo))
    while 10**e <= hi * 1.0001:
        if 10**e >= lo / 1.0001:
            ticks.append(10**e)
        e += 1
    return ticks


def panel(out, x0, title, ylabel, series, field, sizes):
    """One log-log panel at x offset x0; series: [(label, colour, dashed, {size: row})]."""
    vals = [row[field] for *_, pts in series for row in pts.values() if row[field] > 0]
    if not vals:
        return
    ylo, yhi = min(vals) / 1.5, max(vals) * 1.5
    xlo, xhi = min(sizes) / 1.5, max(sizes) * 1.5

    def sx(v):
        return x0 + PANEL_W * (math.log(v) - math.log(xlo)) / (math.log(xhi) - math.log(xlo))

    def sy(v):
        return MARGIN_T + PANEL_H * (1 - (math.log(v) - math.log(ylo)) / (math.log(yhi) - math.log(ylo)))

    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{MARGIN_T - 15}" text-anchor="middle" font-weight="bold">{title}</text>')
    out.append(f'<rect x="{x0}" y="{MARGIN_T}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>')
    for t in log_ticks(ylo, yhi):
        y = sy(t)
        out.append(f'<line x1="{x0}" x2="{x0 + PANEL_W}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{human_num(t)}</text>')
    for s in sizes:
        x = sx(s)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_T}" y2="{MARGIN_T + PANEL_H}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{MARGIN_T + PANEL_H + 16}" text-anchor="middle" font-size="11">{human_size(s)}</text>')
    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{MARGIN_T + PANEL_H + 36}" text-anchor="middle" font-size="12">message size (bytes)</text>')
    out.append(
        f'<text x="{x0 - 52}" y="{MARGIN_T + PANEL_H / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 {x0 - 52} {MARGIN_T + PANEL_H / 2})">{ylabel}</text>'
    )
    for _, colour, dashed, pts in series:
        xs = sorted(s for s in pts if pts[s][field] > 0)
        coords = " ".join(f"{sx(s):.1f},{sy(pts[s][field]):.1f}" for s in xs)
        dash = ' stroke-dasharray="6,4"' if dashed else ""
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for s in xs:
            out.append(f'<circle cx="{sx(s):.1f}" cy="{sy(pts[s][field]):.1f}" r="3" fill="{colour}"/>')


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    groups = load(sys.argv[2:])
    if not groups:
        sys.exit("no rows in the given files")
    # One colour per name (msgr before raw, then in argument order); depth 1 solid,
    # deeper dashed.
    order = [(t, n) for t, n, _ in groups]  # dicts keep insertion (argument) order
    names = list(dict.fromkeys(n for t, n in sorted(order, key=lambda tn: tn[0] == "raw")))
    series = []
    for (_, name, depth), pts in sorted(groups.items(), key=lambda kv: (names.index(kv[0][1]), kv[0][2])):
        colour = COLOURS[names.index(name) % len(COLOURS)]
        series.append((f"{name} (depth {depth})", colour, depth > 1, pts))
    sizes = sorted({s for *_, pts in series for s in pts})
    H = MARGIN_T + PANEL_H + 60 + 16 * len(series)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="13">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
    ]
    panel(out, MARGIN_L, "throughput", "messages per second", series, "msgs_per_sec", sizes)
    panel(out, MARGIN_L + PANEL_W + GAP, "p99 round trip", "microseconds", series, "rtt_us_p99", sizes)
    y = MARGIN_T + PANEL_H + 62
    for label, colour, dashed, _ in series:
        dash = ' stroke-dasharray="6,4"' if dashed else ""
        out.append(f'<line x1="{MARGIN_L}" x2="{MARGIN_L + 30}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{MARGIN_L + 38}" y="{y}">{label}</text>')
        y += 16
    out.append("</svg>")
    with open(sys.argv[1], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
