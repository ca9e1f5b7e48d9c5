#!/usr/bin/env python3
"""Writes proxy/link/hot.txt from callgrind outputs of mesh-proxy runs (generate.sh).

Each function callgrind saw run becomes up to two section-name patterns (after
`.text.`), which proxy/build.rs turns into a linker script that packs them into
`.text.hot`:

- exact: its name with the legacy symbol hash (`17h<16 hex>E`, which depends on the
  crate's version, features and the compiler, not on its code), so that of a generic
  function only the instances that ran are taken; the v0 names of std (which spell the
  instance) without their crate disambiguators (`Cs<base62>_`);
- loose: the legacy name without its hash, listed later: it takes what the exact one
  no longer names once a dependency or the compiler changed (every instance then, but
  still away from the cold code).

A function that is the only one of its hash-less name in the binary (not generic, or
one instance) is listed hash-less in its exact tier: as precise, and it stays placed
when the hashes change.

Assembly (ring's) has one `.text` per object: an `object:ARCHIVE:MEMBER` line takes it.

The linker takes each section at the first line that names it, in this order, which
is also the layout: functions only the mTLS sidecars ran (exact), musl's libc.a (whole:
it has one section per object) and the start file's `_start`, functions the plaintext
sidecars ran (exact, then loose), functions only the gateway ran (exact), the loose
rest. Each kind of proxy then runs one contiguous stretch.

    hot.py OUT.txt DIR BINARY   # DIR holds <name>.<pid>.cg files (name: mesh-out,
                                # mesh-mtls-in, gateway...) of runs of BINARY
    hot.py --check HOT.txt BINARY [MIN%]   # how much of the list BINARY still matches
"""
import collections
import glob
import os
import re
import subprocess
import sys

LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E$")
V0_CRATE = re.compile(r"Cs[0-9A-Za-z]+_")
# A C function's name, with the suffixes GCC gives a specialised copy of a static one
# (`constant_time_conditional_memxor.constprop.0`): its section is `.text.<name>` too.
C_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_]+\.[0-9]+)*$")
FN = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")

# ring picks an implementation by the CPU's features (cpuid), and valgrind's CPU lacks
# some of them (VAES, VPCLMULQDQ for AES-GCM; ADX and BMI2 for X25519), so the callgrind
# runs see the fallbacks run: an object that ran brings the objects a real CPU runs in
# its place.
CPU_ALTERNATIVES = {
    "aesni-gcm-x86_64-elf.o": ["aes-gcm-avx2-x86_64-elf.o"],
    "curve25519.o": ["curve25519_64_adx.o", "fiat_curve25519_adx_mul.o",
                     "fiat_curve25519_adx_square.o"],
}


def patterns(sym):
    """(exact, loose) section-name patterns of a function; either may be None."""
    sym = re.sub(r"'\d+$", "", sym)  # callgrind's mark of a recursion level
    sym = sym.split(".llvm.")[0]  # ThinLTO's suffix of a promoted local: per module
    if sym.startswith("_ZN"):
        if not LEGACY_HASH.search(sym):
            return None, None
        return sym + "*", LEGACY_HASH.sub("17h*", sym)
    if sym.startswith("_R"):
        return V0_CRATE.sub("C*", sym) + "*", None
    # C: ring's objects have a section per function (`.text.<name>`); musl's libc.a has
    # one `.text` per object, taken whole by the `archive:libc.a` line.
    return (sym, None) if C_NAME.match(sym) else (None, None)


def functions(path):
    """The functions of one callgrind output (names are given once, then by number)."""
    names, seen = {}, set()
    with open(path, errors="replace") as f:
        for line in f:
            m = FN.match(line.rstrip("\n"))
            if not m:
                continue
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("fn="):
                seen.add(names.get(m.group(1)))
    return {s for s in seen if s}


def aliases(binary):
    """name -> the names at the same address in the binary: identical functions are
    folded into one, which callgrind may report by any of its names while the section
    carries one of them."""
    at = collections.defaultdict(list)
    nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                        check=True).stdout
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            at[parts[0]].append(parts[2])
    return {n: names for names in at.values() for n in names}


def asm_objects(binary):
    """name -> `object:` line, for the functions of the C/assembly archives that build
    scripts made (ring's), found beside the binary: an assembly object has one `.text`
    for all its functions, so the object is what can be placed. The rlib's hash and
    cc's prefix of the object's name become `*`."""
    build = os.path.join(os.path.dirname(binary), "build")
    where = {}
    for archive in glob.glob(os.path.join(build, "*", "out", "*.a")):
        if archive.endswith("_test.a"):
            continue
        nm = subprocess.run(["nm", "-A", "--defined-only", archive], capture_output=True,
                            text=True).stdout
        # rustc bundles the archive into its crate's rlib, which is what the linker
        # reads: build/ring-<hash>/out/libring_core_0_17_14_.a -> libring-*.rlib.
        crate = re.sub(r"-[0-9a-f]{16}$", "", os.path.basename(os.path.dirname(
            os.path.dirname(archive))))
        arch = f"lib{crate.replace('-', '_')}-*.rlib"
        for line in nm.splitlines():
            loc, _, rest = line.rpartition(":")
            parts = rest.split()
            if len(parts) == 3 and parts[1] in "tT":
                member = re.sub(r"^[0-9a-f]{16}-", "*-", loc.rsplit(":", 1)[-1])
                where[parts[2]] = f"object:{arch}:{member}"
    return where


def alternatives(line, objects):
    """What a real CPU may run instead of the object of `line` (CPU_ALTERNATIVES), among
    the objects the link has: their `object:` lines (assembly: one `.text`) and their
    functions' names (C: a section per function)."""
    member = line.rsplit(":", 1)[-1].split("-", 1)[-1]
    want = CPU_ALTERNATIVES.get(member, [])
    out = set()
    for sym, obj in objects.items():
        if obj.rsplit(":", 1)[-1].split("-", 1)[-1] in want:
            out.add(obj)
            if C_NAME.match(sym):
                out.add(sym)
    return sorted(out)


def instances(binary):
    """hash-less legacy name -> how many functions of the binary carry it (a generic
    function has one per instance)."""
    nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                        check=True).stdout
    return collections.Counter(LEGACY_HASH.sub("17h*", line.split()[2])
                               for line in nm.splitlines()
                               if len(line.split()) == 3 and LEGACY_HASH.search(line.split()[2]))


def check(hot, binary):
    """How many of hot.txt's function lines (not the archive and object lines) name a
    function of the binary: a list made for other symbol hashes still builds, but
    places less, and the proxy's memory shows it."""
    import bisect
    nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                        check=True).stdout
    names = sorted(line.split()[2] for line in nm.splitlines() if len(line.split()) == 3)
    total = found = 0
    with open(hot) as f:
        for line in f:
            p = line.strip()
            if not p or p.startswith("#") or ":" in p:
                continue
            total += 1
            prefix = p.split("*")[0]
            i = bisect.bisect_left(names, prefix)
            found += i < len(names) and names[i].startswith(prefix)
    share = 100 * found // max(total, 1)
    print(f"{hot}: {found} of {total} lines name functions of {os.path.basename(binary)} "
          f"({share}%)")
    return share


def main():
    if sys.argv[1] == "--check":
        # hot.py --check HOT.txt BINARY [MIN%]: exit 1 below MIN% (default 0).
        share = check(sys.argv[2], sys.argv[3])
        sys.exit(1 if share < int(sys.argv[4] if len(sys.argv) > 4 else 0) else 0)
    out, d, binary = sys.argv[1], sys.argv[2], sys.argv[3]
    same = aliases(binary)
    count = instances(binary)
    objects = asm_objects(binary)
    exact = collections.defaultdict(set)  # pattern -> {"plain", "mtls", "gateway"}
    loose = collections.defaultdict(set)
    runs = collections.Counter()
    for name in sorted(os.listdir(d)):
        if ".cg" not in name:
            continue
        proc = name.split(".")[0]
        kind = "gateway" if proc == "gateway" else "mtls" if "mtls" in proc else "plain"
        runs[kind] += 1
        ran = functions(os.path.join(d, name))
        for sym in {a for s in ran for a in same.get(s, [s])}:
            e, lo = patterns(sym)
            if sym in objects:
                exact[objects[sym]].add(kind)
                for alt in alternatives(objects[sym], objects):
                    exact[alt].add(kind)
            if e and lo and count[lo] == 1:
                # The only function of that name: the hash-less pattern is as precise,
                # and outlives a rename of the crate's hashes (a dependency added to
                # mesh-proxy renames all of its own and of its instances).
                exact[lo].add(kind)
            elif e:
                exact[e].add(kind)
            if lo:
                loose[lo].add(kind)
    if not runs["plain"]:
        sys.exit(f"{d}: no callgrind output of a plaintext sidecar (mesh-out, mesh-in)")
    tiers = [
        ("mTLS only", sorted(p for p, k in exact.items() if "mtls" in k and "plain" not in k)),
        # musl's libc.a, and the `.text` of the static PIE's start file, `_start`: run
        # once, it would keep a 64 KB block of the cold code resident for 22 bytes.
        ("libc", ["archive:libc.a", "file:*/rcrt1.o"]),
        ("every sidecar", sorted(p for p, k in exact.items() if "plain" in k)),
        ("every sidecar, loose", sorted(p for p, k in loose.items() if "plain" in k)),
        ("gateway only", sorted(p for p, k in exact.items() if k == {"gateway"})),
        ("the rest, loose", sorted(p for p, k in loose.items() if "plain" not in k)),
    ]
    with open(out, "w") as f:
        f.write("# The functions mesh-proxy runs, packed into .text.hot by proxy/build.rs.\n")
        f.write("# Generated by proxy/link/generate.sh (see proxy/link/README.md): do not edit.\n")
        f.write(f"# callgrind runs: {dict(sorted(runs.items()))}\n")
        for title, lines in tiers:
            f.write(f"# {title}: {len(lines)}\n")
            for p in lines:
                f.write(p + "\n")
    print(f"{out}: " + ", ".join(f"{t} {len(ls)}" for t, ls in tiers))


if __name__ == "__main__":
    main()
