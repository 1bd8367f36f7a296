#!/usr/bin/python3
"""Checks what `msgr mon` got from a monitor against the same monitor's answers over two
other paths: librados (python3-rados, Ceph's own client and messenger, on whatever
ms_type the conf says) and the monitor's admin socket (a Unix socket, no messenger).

Usage: ci/mon-check.py CONF ASOK GET_VERSION_OUT MON_DUMP_JSON
  GET_VERSION_OUT  the output of `msgr mon ... get-version osdmap`
  MON_DUMP_JSON    the output of `msgr mon ... command '{"prefix":"mon dump","format":"json"}'`
Prints one line per checked value; exits 1 on the first disagreement.
"""
import json
import socket
import struct
import sys


def asok(path, prefix):
    # Ceph's admin socket: a JSON command ending in NUL; the answer is a 32-bit
    # big-endian length and that many bytes.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(path)
        s.sendall(json.dumps({"prefix": prefix, "format": "json"}).encode() + b"\0")
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"admin socket {path} closed early ({len(buf)} bytes)")
            buf += chunk
        return json.loads(buf[4:4 + struct.unpack(">I", buf[:4])[0]])


def main():
    conf, sock, get_version, mon_dump = sys.argv[1:5]
    words = get_version.split()
    if words[:2] != ["osdmap", "version"]:
        raise SystemExit(f"not a get-version answer: {get_version!r}")
    msgr = {"osdmap epoch": int(words[2]),
            "fsid": None, "monmap epoch": None, "mon addrs": None}
    dump = json.loads(mon_dump[mon_dump.index("{"):])
    msgr["fsid"] = dump["fsid"]
    msgr["monmap epoch"] = dump["epoch"]
    msgr["mon addrs"] = sorted(a["addr"] for m in dump["mons"] for a in m["public_addrs"]["addrvec"])

    import rados  # python3-rados; imported late so a missing module names itself
    c = rados.Rados(conffile=conf)
    c.connect(timeout=120)
    try:
        r, out, err = c.mon_command(json.dumps({"prefix": "osd stat", "format": "json"}), b"")
        assert r == 0, (r, err)
        osd_stat = json.loads(out)
        r, out, err = c.mon_command(json.dumps({"prefix": "mon dump", "format": "json"}), b"")
        assert r == 0, (r, err)
        rdump = json.loads(out)
        librados = {"osdmap epoch": osd_stat["epoch"], "fsid": c.get_fsid(), "monmap epoch": rdump["epoch"],
                    "mon addrs": sorted(a["addr"] for m in rdump["mons"] for a in m["public_addrs"]["addrvec"])}
    finally:
        c.shutdown()

    status = asok(sock, "mon_status")
    admin = {"fsid": status["monmap"]["fsid"], "monmap epoch": status["monmap"]["epoch"],
             "mon addrs": sorted(a["addr"] for m in status["monmap"]["mons"] for a in m["public_addrs"]["addrvec"])}
    # (A monitor's admin socket has no osdmap command: that value is checked against
    # librados only.)

    bad = False
    for key, ours in msgr.items():
        theirs = {"librados": librados[key]}
        if key in admin:
            theirs["admin socket"] = admin[key]
        same = all(v == ours for v in theirs.values())
        bad |= not same
        print(f"{'same' if same else 'DIFFERENT'}: {key}: msgr {ours}; "
              + "; ".join(f"{k} {v}" for k, v in theirs.items()))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
