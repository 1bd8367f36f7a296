#!/usr/bin/env python3
"""Independent msgr2.1 crc-mode checker for a classic pcap of loopback traffic.

Written separately from the Rust code on purpose: it reassembles each TCP stream to
PORT, finds the msgr2 banner in both directions, walks every frame, recomputes every
preamble crc (crc32c seed 0, no final xor) and segment crc (seed 0xffffffff, no final
xor), and prints the frame sequence per direction. Exit status 1 on any bad crc or
malformed frame.

Usage: msgr2_check.py CAPTURE.pcap PORT [--expect-client TAGS] [--expect-server TAGS]
TAGS is a comma-separated prefix of the expected frame sequence, e.g.
BANNER,HELLO,AUTH_REQUEST,AUTH_SIGNATURE,CLIENT_IDENT,MESSAGE
"""
import struct
import sys

POLY = 0x82F63B78
TABLE = []
for n in range(256):
    c = n
    for _ in range(8):
        c = (c >> 1) ^ POLY if c & 1 else c >> 1
    TABLE.append(c)


def crc32c_raw(seed, data):
    c = seed
    for b in data:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c


NAMES = ["?", "HELLO", "AUTH_REQUEST", "AUTH_BAD_METHOD", "AUTH_REPLY_MORE", "AUTH_REQUEST_MORE",
         "AUTH_DONE", "AUTH_SIGNATURE", "CLIENT_IDENT", "SERVER_IDENT", "IDENT_MISSING_FEATURES",
         "SESSION_RECONNECT", "SESSION_RESET", "SESSION_RETRY", "SESSION_RETRY_GLOBAL",
         "SESSION_RECONNECT_OK", "WAIT", "MESSAGE", "KEEPALIVE2", "KEEPALIVE2_ACK", "ACK"]


def packets(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise SystemExit("not a little-endian classic pcap (use tcpdump -w or tshark -F pcap)")
    linktype = struct.unpack_from("<I", data, 20)[0]
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from("<IIII", data, off)
        pkt = data[off + 16: off + 16 + incl]
        off += 16 + incl
        if linktype == 1:  # Ethernet
            if len(pkt) < 14 or struct.unpack_from(">H", pkt, 12)[0] != 0x0800:
                continue
            ip = pkt[14:]
        elif linktype == 113:  # Linux cooked
            ip = pkt[16:]
        else:
            raise SystemExit(f"unsupported link type {linktype}")
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack_from(">H", ip, 2)[0]
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        doff = (tcp[12] >> 4) * 4
        flags = tcp[13]
        yield (sport, dport, seq, flags, tcp[doff:])


def streams(path, port):
    """{(client_port, 'c2s'|'s2c'): bytes}, reassembled by sequence number."""
    segs = {}
    isn = {}
    for sport, dport, seq, flags, payload in packets(path):
        if dport == port:
            key = (sport, "c2s")
        elif sport == port:
            key = (dport, "s2c")
        else:
            continue
        if flags & 0x02:  # SYN: data starts at seq + 1
            isn[key] = seq + 1
            continue
        if payload:
            segs.setdefault(key, {})[seq] = payload
    out = {}
    for key, parts in segs.items():
        start = isn.get(key, min(parts))
        buf = bytearray()
        for seq in sorted(parts, key=lambda s: (s - start) & 0xFFFFFFFF):
            rel = (seq - start) & 0xFFFFFFFF
            p = parts[seq]
            if rel > len(buf):
                break  # a hole: stop at what is contiguous
            buf += p[len(buf) - rel:]
        out[key] = bytes(buf)
    return out


def walk(data):
    """Yields frame names; raises ValueError on a malformed frame or bad crc."""
    if not data.startswith(b"ceph v2\n"):
        raise ValueError("no msgr2 banner")
    plen = struct.unpack_from("<H", data, 8)[0]
    off = 10 + plen
    yield "BANNER"
    while off < len(data):
        if len(data) - off < 32:
            raise ValueError(f"truncated preamble at {off}")
        pre = data[off:off + 32]
        tag, nseg = pre[0], pre[1]
        lens = [struct.unpack_from("<I", pre, 2 + 6 * i)[0] for i in range(4)]
        crc = struct.unpack_from("<I", pre, 28)[0]
        if crc32c_raw(0, pre[:28]) != crc:
            raise ValueError(f"bad preamble crc at {off}")
        if not 1 <= nseg <= 4 or tag >= len(NAMES) or tag == 0:
            raise ValueError(f"bad preamble at {off}: tag {tag} segments {nseg}")
        off += 32
        if lens[0]:
            seg0 = data[off:off + lens[0]]
            c0 = struct.unpack_from("<I", data, off + lens[0])[0]
            if crc32c_raw(0xFFFFFFFF, seg0) != c0:
                raise ValueError(f"bad segment 0 crc in {NAMES[tag]}")
            off += lens[0] + 4
        if nseg > 1:
            rest = []
            for i in range(1, 4):
                rest.append(data[off:off + lens[i]])
                off += lens[i]
            late = data[off]
            crcs = struct.unpack_from("<III", data, off + 1)
            off += 13
            if late & 0x0F != 0x0E:
                raise ValueError(f"late status {late:#x}")
            for i, seg in enumerate(rest):
                if i + 1 < nseg and crc32c_raw(0xFFFFFFFF, seg) != crcs[i]:
                    raise ValueError(f"bad segment {i + 1} crc in {NAMES[tag]}")
        if off > len(data):
            raise ValueError("truncated frame")
        yield NAMES[tag]


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    path, port = argv[1], int(argv[2])
    expect = {"c2s": None, "s2c": None}
    for i, a in enumerate(argv):
        if a == "--expect-client":
            expect["c2s"] = argv[i + 1].split(",")
        if a == "--expect-server":
            expect["s2c"] = argv[i + 1].split(",")
    found = streams(path, port)
    if not found:
        print("no traffic to port", port)
        return 1
    bad = 0
    frames_total = 0
    for (cport, direction), data in sorted(found.items()):
        try:
            seq = list(walk(data))
        except ValueError as e:
            print(f"stream {cport} {direction}: ERROR {e}")
            bad += 1
            continue
        frames_total += len(seq)
        print(f"stream {cport} {direction}: {len(seq)} units, all crcs ok: {','.join(seq)}")
        want = expect[direction]
        if want and seq[:len(want)] != want:
            print(f"  expected prefix {','.join(want)}")
            bad += 1
    print(f"{frames_total} banners/frames checked, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
