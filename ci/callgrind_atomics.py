#!/usr/bin/env python3
"""Atomic read-modify-write instructions executed, per message, from one callgrind
output file written with --dump-instr=yes.

Usage: callgrind_atomics.py CALLGRIND_OUT MESSAGES LABEL

An instruction is counted as atomic if `objdump -d` shows it lock-prefixed, or an xchg
with a memory operand (implicitly locked). Callgrind records, per function, a cost line
per executed instruction address; the Ir of that line is how often it ran. Positions
are compressed (`+N`, `-N`, `*` relative to the previous cost line's); a `calls=` line's
target is the callee's position and does not move that chain, and the cost line after
it is the call's inclusive cost, not an instruction of this function.
"""
import collections
import re
import subprocess
import sys


def parse(path):
    """(counts by (object id, address), function id by the same key, object names,
    function names)."""
    objects, functions = {}, {}
    counts = collections.defaultdict(int)
    fn_of = {}
    ob = fn = None
    last = 0
    call_cost_next = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            m = re.match(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$", line)
            if m:
                callee, kind, ident, name = m.groups()
                names = objects if kind == "ob" else functions
                if name:
                    names[ident] = name.strip()
                if not callee:
                    if kind == "ob":
                        ob = ident
                    else:
                        fn = ident
                continue
            if re.match(r"^(c?fi|c?fe|fl)=", line):
                continue
            if line.startswith("calls="):
                call_cost_next = True
                continue
            tok = line.split()
            pos = tok[0]
            if pos.startswith("0x"):
                addr = int(pos, 16)
            elif pos[0] in "+-":
                addr = last + int(pos)
            elif pos == "*":
                addr = last
            else:
                continue
            last = addr
            if call_cost_next:
                call_cost_next = False
                continue
            if len(tok) >= 3:
                counts[(ob, addr)] += int(tok[2])
                fn_of[(ob, addr)] = fn
    return counts, fn_of, objects, functions


def atomic_addresses(path):
    """Addresses of the atomic read-modify-write instructions in one object file."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(\S.*)$", line)
        if not m:
            continue
        ins = m.group(2)
        if ins.startswith("lock ") or (ins.startswith("xchg") and "(" in ins):
            found.add(int(m.group(1), 16))
    return found


def main():
    path, msgs, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    counts, fn_of, objects, functions = parse(path)
    sites = {ob: atomic_addresses(name) for ob, name in objects.items() if name.startswith("/")}
    by_fn = collections.defaultdict(int)
    for key, n in counts.items():
        if key[1] in sites.get(key[0], ()):
            by_fn[functions.get(fn_of[key], "?")] += n
    total = sum(by_fn.values())
    print(f"  {label}: {total / msgs:.2f} atomic read-modify-writes per message")
    for name, n in sorted(by_fn.items(), key=lambda kv: -kv[1]):
        if n / msgs >= 0.05:
            print(f"    {n / msgs:6.2f}  {name[:110]}")


if __name__ == "__main__":
    main()
