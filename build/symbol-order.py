#!/usr/bin/env python3
"""Writes lld's symbol order file for `warden` from callgrind profiles of running sidecars.

usage: python3 build/symbol-order.py target/release/warden CALLGRIND_OUT... [--extra NAMES]
           > build/warden.order

The profiles must come from `valgrind --tool=callgrind --demangle=no --compress-strings=no`
runs of the same release binary (see docs/benchmarks.md, "Memory"). Every function of the
binary that ran is listed once, most instructions first, so lld packs the code a sidecar
executes at the start of `.text`. `--extra NAMES` appends the (mangled) function names of a
file, one a line, that are not listed yet: valgrind's virtual CPU has no AVX-512, so code
that only runs natively (found with `perf record` and `perf script -F sym --no-demangle`)
comes from there.
"""
import collections
import subprocess
import sys


def main() -> None:
    args = sys.argv[1:]
    extra = []
    if "--extra" in args:
        i = args.index("--extra")
        with open(args[i + 1]) as f:
            extra = [line.strip() for line in f if line.strip()]
        del args[i : i + 2]
    if not args:
        sys.exit(__doc__)
    binary, outs = args[0], args[1:]
    if not outs:
        sys.exit(__doc__)
    # The profiled object: `warden`, or a copy of it under another name.
    names_of_binary = {"warden", binary.rsplit("/", 1)[-1]}
    cost: collections.Counter[str] = collections.Counter()
    for path in outs:
        obj = fn = None
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("ob="):
                    obj = line[3:].strip()
                elif line.startswith("fn="):
                    fn = line[3:].strip() if obj and obj.rsplit("/", 1)[-1] in names_of_binary else None
                    if fn is not None:
                        cost[fn] += 0
                elif fn and line[:1].isdigit():
                    fields = line.split()
                    if len(fields) >= 2:
                        cost[fn] += int(fields[1])
    sizes = {}
    nm = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True)
    for line in nm.stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            sizes[fields[3]] = int(fields[1], 16)
    names = [n for n, _ in sorted(cost.items(), key=lambda kv: (-kv[1], kv[0])) if n in sizes]
    listed = set(names)
    for n in extra:
        if n in sizes and n not in listed:
            listed.add(n)
            names.append(n)
    total = sum(sizes[n] for n in names)
    sys.stderr.write(f"{len(names)} functions executed, {total / 1024:.0f} KiB of code\n")
    print("\n".join(names))


if __name__ == "__main__":
    main()
