#!/usr/bin/env python3
"""Mesh propagation: the time from `meshd publish` to the last node serving
the new version, for 3 and 10 meshd nodes (processes on this machine)
following one nats-server, with a 1 MB and a 20 MB artifact; and the
throughput of one node with and without a publish every second.

    python3 bench/mesh.py                      # builds nothing: see --meshd
    python3 bench/mesh.py --nodes 3 --publishes 5 --sizes 1

Every publish sends new bytes: the `hello` example app with a custom section
appended (id 0, LEB128 size, name, payload) padded to the size asked, so each
publish is a new digest that every node must fetch, verify, compile and
switch to. The clock starts just before `meshd publish` is run (a new CLI
process: its start, the upload to the object store and the desired-state
write are inside the figure) and stops when every node's admin API
(`GET /v1/apps/bench`) shows the new digest live; the nodes are polled every
5 ms. Nodes run with `--workers 1`, one shared compile cache, their own data
directories, on 127.0.0.1 only; nats-server has JetStream on a temporary
directory. Everything started is stopped at the end; the load is bounded.

Prints a markdown table (and, with --json FILE, the samples).
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from swap_latency import leb128  # noqa: E402  (the custom-section encoding)
HELLO = os.path.join(REPO, "target/guests/wasm32-wasip2/release/hello.wasm")


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def padded(base, size, serial):
    """`base` with one custom section making it `size` bytes (at least one
    section's worth more), unique by `serial`."""
    name = b"steelmesh-bench"
    tag = f"{serial}:{time.time_ns()}".encode()
    payload_len = max(len(tag), size - len(base) - 16 - len(name))
    payload = tag + b"\0" * (payload_len - len(tag))
    body = leb128(len(name)) + name + payload
    return base + b"\x00" + leb128(len(body)) + body


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


class Node:
    def __init__(self, meshd, work, index, url, cache):
        self.name = f"n{index}"
        self.port = free_port()
        self.admin = free_port()
        data = os.path.join(work, self.name)
        apps = os.path.join(work, self.name + "-apps")
        os.makedirs(apps)
        self.log = open(os.path.join(work, self.name + ".log"), "w")
        self.proc = subprocess.Popen(
            [meshd, "--apps", apps, "--listen", f"127.0.0.1:{self.port}",
             "--admin", f"127.0.0.1:{self.admin}", "--data-dir", data,
             "--cache-dir", cache, "--mesh", url, "--node-name", self.name,
             "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "MESHD_LOG": "warn"})
        self.conn = None

    def live_digest(self, app):
        """The digest of `app`'s live version on this node, or None."""
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
                self.conn.request("GET", f"/v1/apps/{app}")
                reply = self.conn.getresponse()
                body = reply.read()
                if reply.status != 200:
                    return None
                version = json.loads(body).get("version") or {}
                return version.get("digest")
            except (OSError, http.client.HTTPException):
                self.conn = None
        return None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def percentile(samples, p):
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def publish(meshd, url, path, name="bench"):
    subprocess.run([meshd, "publish", path, "--name", name, "--no-manifest", "--mesh", url],
                   check=True, stdout=subprocess.DEVNULL)


def propagation(meshd, url, nodes, work, size_mb, publishes):
    base = open(HELLO, "rb").read()
    samples, returned = [], []
    path = os.path.join(work, "bench.wasm")
    for serial in range(publishes + 1):
        wasm = padded(base, size_mb << 20, serial)
        digest = hashlib.sha256(wasm).hexdigest()
        with open(path, "wb") as f:
            f.write(wasm)
        start = time.perf_counter()
        publish(meshd, url, path)
        published = time.perf_counter() - start
        waiting = list(nodes)
        deadline = start + 120
        while waiting:
            waiting = [n for n in waiting if n.live_digest("bench") != digest]
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not live on {[n.name for n in waiting]} after 120 s")
            if waiting:
                time.sleep(0.005)
        took = time.perf_counter() - start
        if serial == 0:
            continue  # the first publish creates the app: not a version change
        samples.append(took)
        returned.append(published)
        log(f"{len(nodes)} nodes, {size_mb} MB, publish {serial}: {took * 1000:.0f} ms")
    return samples, returned


def throughput(nodes, seconds, meshd, url, work, with_publishes):
    """Requests per second of hello on the first node from a keep-alive
    client in this process (4 threads), optionally while another app is
    published every second."""
    stop = threading.Event()
    counts = []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", nodes[0].port, timeout=5)
        n = 0
        while not stop.is_set():
            conn.request("GET", "/hello/")
            reply = conn.getresponse()
            reply.read()
            if reply.status == 200:
                n += 1
        counts.append(n)

    def publisher():
        base = open(HELLO, "rb").read()
        path = os.path.join(work, "other.wasm")
        serial = 0
        while not stop.is_set():
            with open(path, "wb") as f:
                f.write(padded(base, 1 << 20, 10_000 + serial))
            subprocess.run([meshd, "publish", path, "--name", "other", "--no-manifest",
                            "--mesh", url], check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            serial += 1
            stop.wait(1.0)

    threads = [threading.Thread(target=client) for _ in range(4)]
    if with_publishes:
        threads.append(threading.Thread(target=publisher))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshd", default=os.path.join(REPO, "target/release/meshd"),
                        help="the meshd binary (default target/release/meshd; "
                             "build it with `cargo build --release -p meshd`)")
    parser.add_argument("--nodes", default="3,10", help="node counts (default 3,10)")
    parser.add_argument("--sizes", default="1,20", help="artifact sizes in MB (default 1,20)")
    parser.add_argument("--publishes", type=int, default=20, help="timed publishes per case")
    parser.add_argument("--seconds", type=int, default=10, help="each throughput run")
    parser.add_argument("--json", help="also write the samples here")
    args = parser.parse_args()
    for tool, hint in [(args.meshd, "cargo build --release -p meshd"),
                       (HELLO, "cargo xtask build-apps (or any test run)")]:
        if not os.path.exists(tool):
            sys.exit(f"[bench] {tool} is missing: {hint}")
    if not shutil.which("nats-server"):
        sys.exit("[bench] nats-server is missing: apt-get install nats-server")

    work = tempfile.mkdtemp(prefix="steelmesh-mesh.")
    nats_port = free_port()
    nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                             "-sd", os.path.join(work, "js")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{nats_port}"
    cache = os.path.join(work, "cache")
    results = []
    rows = []
    try:
        wait_port(nats_port)
        for count in [int(n) for n in args.nodes.split(",")]:
            nodes = [Node(args.meshd, work, f"{count}-{i}", url, cache) for i in range(count)]
            try:
                for node in nodes:
                    wait_port(node.port)
                for size in [int(s) for s in args.sizes.split(",")]:
                    samples, returned = propagation(args.meshd, url, nodes, work, size,
                                                    args.publishes)
                    results.append({"nodes": count, "size_mb": size, "seconds": samples,
                                    "publish_returned": returned})
                    rows.append(f"| {count} | {size} MB | {len(samples)} | "
                                f"{statistics.median(returned) * 1000:.0f} | "
                                f"{statistics.median(samples) * 1000:.0f} | "
                                f"{percentile(samples, 99) * 1000:.0f} | "
                                f"{max(samples) * 1000:.0f} |")
                if count == min(int(n) for n in args.nodes.split(",")):
                    publish(args.meshd, url, HELLO, name="hello")
                    quiet = throughput(nodes, args.seconds, args.meshd, url, work, False)
                    busy = throughput(nodes, args.seconds, args.meshd, url, work, True)
                    results.append({"nodes": count, "rps_quiet": quiet, "rps_publishing": busy})
                    throughput_row = (count, quiet, busy)
            finally:
                for node in nodes:
                    node.stop()
    finally:
        nats.terminate()
        nats.wait()
        shutil.rmtree(work, ignore_errors=True)

    print("| nodes | artifact | publishes | `meshd publish` returned (p50 ms) | "
          "last node serving (p50 ms) | p99 ms | max ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)
    count, quiet, busy = throughput_row
    print()
    print(f"hello on node 1 of {count}, 4 keep-alive clients, {args.seconds} s each: "
          f"{quiet:.0f} req/s without publishes, {busy:.0f} req/s with a 1 MB publish "
          f"every second ({busy / quiet:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
