#!/usr/bin/env python3
r"""Where a running mesh-proxy's resident pages are: by section of its binary, by crate
inside the code and read-only data, and the anonymous mappings.

    proxy/link/resident.py BINARY PAGES.json [BASE.json]
    proxy/link/resident.py target/x86_64-unknown-linux-musl/release/mesh-proxy \
        /tmp/smaps/mesh-mtls-out.pages.json /tmp/smaps/mesh-out.pages.json

PAGES.json is what bench/http writes for each proxy at its idle point with
BENCH_SMAPS=/dir (`<mode>-<out|in>.pages.json`: every mapping with its resident pages, from
/proc/PID/pagemap). BINARY is the build that ran (bench.py prints its sha256; with
MESH_PROXY_BIN it is that file). With BASE.json (another proxy of the same binary, e.g.
the plaintext sidecar against the mTLS one) the table gets a column of the difference.

A resident code page is not a page that ran: the kernel maps up to 64 KB of cached
neighbours around each fault. Bytes of a page are shared out among the symbols that
overlap it (padding goes to `(none)`); a crate is the first path segment of a symbol's
demangled name (`<rustls::x as y>::f` -> rustls), C and assembly objects keep their
symbol's name prefix.
"""

import bisect
import collections
import json
import re
import subprocess
import sys

PAGE = 4096


def sections(binary):
    out = []
    text = subprocess.run(["readelf", "-SW", binary], check=True, capture_output=True,
                          text=True).stdout
    for line in text.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)",
                     line)
        if m:
            name, kind, addr, off, size = m.groups()
            if kind in ("NULL", "NOBITS") or int(addr, 16) == 0:
                continue
            out.append((name, int(addr, 16), int(off, 16), int(size, 16)))
    return out


def crate_of(name):
    n = name.lstrip("<&*").removeprefix("dyn ").removeprefix("mut ").lstrip("<&*")
    if "::" in n:
        return n.split("::", 1)[0].split(" ")[0]
    if n.startswith(("ring_core_", "ring_")):
        return "ring (C/asm)"
    if n.startswith(("aes_", "gcm_", "ecp_nistz256", "p256_", "x25519", "sha256_", "sha512_",
                     "ChaCha20", "chacha20", "bn_", "LIMBS", "OPENSSL", "CRYPTO")):
        return "ring (C/asm)"
    return "(C: " + (n.split("_", 1)[0] or n) + ")"


def symbols(binary):
    text = subprocess.run(["nm", "-S", "--defined-only", "-C", binary], check=True,
                          capture_output=True, text=True).stdout
    syms = []
    for line in text.splitlines():
        f = line.split(" ", 3)
        if len(f) < 4 or f[2].lower() not in "trdbv":
            continue
        addr, size = int(f[0], 16), int(f[1], 16)
        if size:
            syms.append((addr, size, crate_of(f[3])))
    syms.sort()
    return syms


def attribute(lo, hi, syms, starts, acc):
    """Share the bytes [lo, hi) out among the symbols overlapping them."""
    i = max(bisect.bisect_right(starts, lo) - 1, 0)
    covered = 0
    # Symbols may overlap (aliases): walk back a few for ones that started earlier.
    j = max(i - 8, 0)
    seen = []
    while j < len(syms) and syms[j][0] < hi:
        a, s, c = syms[j]
        x, y = max(a, lo), min(a + s, hi)
        if y > x:
            seen.append((x, y, c))
        j += 1
    seen.sort()
    last = lo
    for x, y, c in seen:
        x = max(x, last)
        if y > x:
            acc[c] += y - x
            covered += y - x
            last = y
    acc["(none)"] += (hi - lo) - covered


def analyse(binary, pages_path, secs, syms, starts):
    maps = json.load(open(pages_path))
    by_section = collections.Counter()
    private = collections.Counter()
    crates = collections.defaultdict(collections.Counter)
    anon = collections.Counter()
    for m in maps:
        path = m["path"]
        if path and (path.split("/")[-1] == binary.split("/")[-1] or path.endswith("mesh-proxy")):
            for idx, priv in m["pages"]:
                off = m["offset"] + idx * PAGE
                for name, addr, soff, size in secs:
                    lo, hi = max(off, soff), min(off + PAGE, soff + size)
                    if hi > lo:
                        by_section[name] += hi - lo
                        if priv:
                            private[name] += hi - lo
                        if name.startswith((".text", ".rodata", ".data.rel.ro")):
                            attribute(addr + lo - soff, addr + hi - soff, syms, starts,
                                      crates[name])
        else:
            label = path or "(anonymous)"
            if label.startswith("/"):
                label = "file " + label
            anon[label] += len(m["pages"]) * PAGE
    return by_section, private, crates, anon


def kib(n):
    return f"{n / 1024:8.1f}"


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    binary, pages = sys.argv[1], sys.argv[2]
    base = sys.argv[3] if len(sys.argv) == 4 else None
    secs, syms = sections(binary), symbols(binary)
    starts = [s[0] for s in syms]
    a = analyse(binary, pages, secs, syms, starts)
    b = analyse(binary, base, secs, syms, starts) if base else None

    def table(title, cur, old, top=None):
        keys = sorted(set(cur) | set(old or {}), key=lambda k: -cur.get(k, 0))
        if top:
            keys = keys[:top]
        print(f"\n{title}" + ("  KiB (this / base / diff)" if old is not None else "  KiB"))
        for k in keys:
            row = f"  {kib(cur.get(k, 0))}"
            if old is not None:
                row += f" {kib(old.get(k, 0))} {kib(cur.get(k, 0) - old.get(k, 0))}"
            print(f"{row}  {k}")
        tot = sum(cur.values())
        row = f"  {kib(tot)}"
        if old is not None:
            row += f" {kib(sum(old.values()))} {kib(tot - sum(old.values()))}"
        print(f"{row}  total")

    table("binary, by section (resident)", a[0], b[0] if b else None)
    table("binary, by section (private: relocated or written)", a[1], b[1] if b else None)
    table("other mappings", a[3], b[3] if b else None)
    for sec in sorted(a[2], key=lambda s: -a[0][s]):
        if a[0][sec] >= 64 * 1024:
            table(f"{sec}, by crate (top 25)", a[2][sec], b[2].get(sec, {}) if b else None, 25)


if __name__ == "__main__":
    main()
