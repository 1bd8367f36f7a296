#!/usr/bin/env python3
"""Draws `msgr bench --json` results as an SVG: msgs/s and p99 round trip against
message size, one line per transport (msgr, raw) and stack. Standard library only.

Usage: docs/plot_bench.py OUT.svg RESULT.json [RESULT.json ...]

Rows are grouped by (transport, ms_type, depth); each group is one line, its points
sorted by size. Axes are logarithmic.
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


def load(paths):
    groups = defaultdict(dict)
    for p in paths:
        with open(p) as f:
            doc = json.load(f)
        for r in doc["rows"]:
            key = (r["transport"], r.get("ms_type", "?"), r["depth"])
            groups[key][r["size"]] = r
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
    """One log-log panel at x offset x0; series: [(label, colour, {size: row})]."""
    vals = [row[field] for _, _, pts in series for row in pts.values() if row[field] > 0]
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
    for label, colour, pts in series:
        xs = sorted(s for s in pts if pts[s][field] > 0)
        coords = " ".join(f"{sx(s):.1f},{sy(pts[s][field]):.1f}" for s in xs)
        dash = ' stroke-dasharray="6,4"' if label.startswith("raw") else ""
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for s in xs:
            out.append(f'<circle cx="{sx(s):.1f}" cy="{sy(pts[s][field]):.1f}" r="3" fill="{colour}"/>')


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    groups = load(sys.argv[2:])
    if not groups:
        sys.exit("no rows in the given files")
    # msgr and raw at the same depth share a colour; raw is dashed.
    depths = sorted({d for _, _, d in groups})
    series = []
    for (transport, ms_type, depth), pts in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        label = f"{transport} ({ms_type}, depth {depth})" if transport == "msgr" else f"raw TCP (depth {depth})"
        series.append((label, COLOURS[depths.index(depth) % len(COLOURS)], pts))
    sizes = sorted({s for _, _, pts in series for s in pts})
    H = MARGIN_T + PANEL_H + 60 + 16 * len(series)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="13">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
    ]
    panel(out, MARGIN_L, "throughput", "messages per second", series, "msgs_per_sec", sizes)
    panel(out, MARGIN_L + PANEL_W + GAP, "p99 round trip", "microseconds", series, "rtt_us_p99", sizes)
    y = MARGIN_T + PANEL_H + 62
    for label, colour, _ in series:
        dash = ' stroke-dasharray="6,4"' if label.startswith("raw") else ""
        out.append(f'<line x1="{MARGIN_L}" x2="{MARGIN_L + 30}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{MARGIN_L + 38}" y="{y}">{label}</text>')
        y += 16
    out.append("</svg>")
    with open(sys.argv[1], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
