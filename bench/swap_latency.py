#!/usr/bin/env python3
"""Swap latency of one meshd app: the time from renaming a new version of its
.wasm into the apps directory to the first response from that new version.

Used by bench/swap.sh, which starts meshd; this only drives it. For each swap:
write the next version to DIR/.NAME.tmp (the `cp`), take time.perf_counter(),
rename it onto DIR/NAME.wasm (the `mv`), then send GET ROUTE on one keep-alive
HTTP/1.1 connection, back to back, until the body is the new version's. The
versions alternate between --v1 and --v2. Then it waits for meshd's
`app updated` log line of that swap (to record `cache=` and `compile_ms=`)
and for the old version's `drained and retired` line, pauses --gap seconds,
and goes on.

--mode warm: the files' bytes as they are; a warm-up pair of swaps (untimed)
first puts both versions in the compile cache, so every timed swap is a hit.
--mode cold: the same warm-up pair, then every timed swap appends a custom
section with a unique payload to the version's bytes (a custom section is id
0, LEB128 size, LEB128 name length, name, payload; components use id 0 for
custom sections too, so appending one keeps the binary valid), so every
timed swap is a new content hash and must be compiled.

Prints one JSON object with the samples and their statistics on stdout.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import sys
import time


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def custom_section(name: bytes, payload: bytes) -> bytes:
    content = leb128(len(name)) + name + payload
    return b"\x00" + leb128(len(content)) + content


def percentile(sorted_xs, p):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_xs:
        return float("nan")
    k = (len(sorted_xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


class LogTail:
    """Follows meshd's log file from a given offset."""

    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path)
        self.partial = ""
        self.queue = []  # lines read but not yet looked at

    def lines(self):
        with open(self.path, "r", errors="replace") as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        text = self.partial + chunk
        parts = text.split("\n")
        self.partial = parts.pop()
        return parts

    def wait_for(self, pattern, timeout, seen):
        """Waits for a line matching `pattern`; every line read goes to `seen`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            self.queue.extend(self.lines())
            while self.queue:
                line = self.queue.pop(0)
                seen.append(line)
                m = rx.search(line)
                if m:
                    return m
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)


class Client:
    def __init__(self, host, port, route):
        self.host, self.port, self.route = host, port, route
        self.conn = None
        self.errors = []

    def get(self):
        """(status, body) or (None, error text)."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            self.conn.request("GET", self.route)
            r = self.conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException) as e:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None, repr(e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addr", required=True, help="host:port meshd listens on")
    ap.add_argument("--route", required=True, help="e.g. /app/")
    ap.add_argument("--apps", required=True, help="meshd's apps directory")
    ap.add_argument("--name", required=True, help="the app's name (NAME.wasm)")
    ap.add_argument("--log", required=True, help="meshd's log file")
    ap.add_argument("--v1", required=True)
    ap.add_argument("--v1-body", required=True)
    ap.add_argument("--v2", required=True)
    ap.add_argument("--v2-body", required=True)
    ap.add_argument("--mode", choices=["warm", "cold"], required=True)
    ap.add_argument("--swaps", type=int, default=50)
    ap.add_argument("--gap", type=float, default=0.2, help="pause between swaps (s)")
    ap.add_argument("--timeout", type=float, default=30.0, help="give up on one swap after (s)")
    args = ap.parse_args()

    host, port = args.addr.rsplit(":", 1)
    client = Client(host, int(port), args.route)
    versions = [
        (open(args.v1, "rb").read(), args.v1_body.encode()),
        (open(args.v2, "rb").read(), args.v2_body.encode()),
    ]
    dst = os.path.join(args.apps, args.name + ".wasm")
    tmp = os.path.join(args.apps, "." + args.name + ".tmp")
    nonce = f"{os.getpid()}-{time.time_ns()}".encode()

    status, body = client.get()
    if status != 200 or body.strip() != versions[0][1]:
        sys.exit(f"swap_latency: {args.route} answered {status} {body!r}, expected {versions[0][1]!r}")
    current = 0

    result = {
        "mode": args.mode,
        "swaps": args.swaps,
        "latency_ms": [],
        "cache": {},
        "compile_ms": [],
        "old_version_answers": 0,
        "other_answers": [],
        "request_errors": [],
        "refused": [],
    }

    def swap(extra: bytes, timed: bool):
        nonlocal current
        target = 1 - current
        data, want = versions[target]
        _, old_body = versions[current]
        with open(tmp, "wb") as f:  # the `cp`
            f.write(data + extra)
        tail = LogTail(args.log)
        t0 = time.perf_counter()
        os.rename(tmp, dst)  # the `mv`
        while True:
            status, body = client.get()
            if status == 200 and body.strip() == want:
                elapsed = time.perf_counter() - t0
                break
            if status == 200 and body.strip() == old_body:
                if timed:
                    result["old_version_answers"] += 1
            elif status is None:
                result["request_errors"].append(body)
            else:
                result["other_answers"].append([status, body[:80].decode(errors="replace")])
            if time.perf_counter() - t0 > args.timeout:
                sys.exit(f"swap_latency: no answer from the new version {args.timeout} s after the rename")
        current = target
        seen = []
        m = tail.wait_for(r"app updated .*cache=(\w+) compile_ms=(\d+)", 30, seen)
        if m is None:
            sys.exit("swap_latency: no `app updated` log line after the swap:\n" + "\n".join(seen))
        if not tail.wait_for(r"old version drained and retired", 30, seen):
            sys.exit("swap_latency: the old version was not retired:\n" + "\n".join(seen))
        refused = [l for l in seen if "refused" in l or " ERROR " in l]
        if timed:
            result["latency_ms"].append(elapsed * 1000)
            result["cache"][m.group(1)] = result["cache"].get(m.group(1), 0) + 1
            result["compile_ms"].append(int(m.group(2)))
            result["refused"].extend(refused)
        time.sleep(args.gap)

    # Warm-up pair: both versions' plain bytes are compiled and cached.
    swap(b"", timed=False)
    swap(b"", timed=False)
    for i in range(args.swaps):
        extra = b""
        if args.mode == "cold":
            extra = custom_section(b"steelmesh-bench", nonce + b"-" + str(i).encode())
        swap(extra, timed=True)
        print(f"[swap_latency] {args.mode} swap {i + 1}/{args.swaps}: "
              f"{result['latency_ms'][-1]:.1f} ms", file=sys.stderr)

    xs = sorted(result["latency_ms"])
    result["stats_ms"] = {
        "min": xs[0],
        "p50": percentile(xs, 50),
        "p99": percentile(xs, 99),
        "max": xs[-1],
        "mean": statistics.fmean(xs),
    }
    result["compile_ms_median"] = statistics.median(result["compile_ms"])
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
