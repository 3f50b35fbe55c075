"""Live probes of a running collector's memory under a big login body, slow gzip uploads
and a large retention sweep (see docs/reliability.md, earlier reviews; not a test module).

Start a collector first, e.g.::

    TELEMETRY_COLLECTOR_API_KEYS=k1 TELEMETRY_COLLECTOR_ADMIN_TOKEN=admintoken123 \
      telemetry-collector serve --db /tmp/rv/c.db --port 18443 \
      --tls-cert cert.pem --tls-key key.pem & echo $! > serve.pid

then::

    python -m bench.collector_probe login-big --ca ca.pem --port 18443 --pid PID --mib 300
    python -m bench.collector_probe slow-gzip --ca ca.pem --port 18443 --pid PID --n 60
    python -m bench.collector_probe retention --db /tmp/rv/ret.db --n 300000

``--pid`` is the collector's process id, whose RSS is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import socket
import ssl
import time
import zlib
from pathlib import Path


def _rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


def login_big(ctx: ssl.SSLContext, port: int, pid: int, mib: int) -> None:
    """Finding 1: stream ``mib`` MiB to POST /login and show the server's RSS."""
    print("rss before", _rss_mb(pid), "MB")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120)
    conn.putrequest("POST", "/login")
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Content-Length", str(mib << 20))
    conn.endheaders()
    block = b"a" * (1 << 20)
    for _ in range(mib):
        conn.send(block)
    response = conn.getresponse()
    print(response.status, response.read()[:80])
    conn.close()
    print("rss after", _rss_mb(pid), "MB")


def slow_gzip(ctx: ssl.SSLContext, port: int, pid: int, n: int, key: str) -> None:
    """Finding 2: ``n`` uploads each inflating to 5 MiB, then stalled."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = comp.compress(b'{"events":[') + comp.compress(b" " * (5 * 1024 * 1024 - 20))
    body += comp.flush(zlib.Z_SYNC_FLUSH)
    print("compressed", len(body), "rss before", _rss_mb(pid), "MB")
    head = (
        "POST /v1/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nX-API-Key: {key}\r\nContent-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    socks = []
    try:
        for _ in range(n):
            raw = socket.create_connection(("127.0.0.1", port))
            sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(head + body)
            socks.append(sock)
        time.sleep(3)
        print("connections", n, "rss held", _rss_mb(pid), "MB")
    finally:
        for sock in socks:
            sock.close()


def retention(db: Path, n: int) -> None:
    """Finding 11: how long one ingest waits behind SQLite retention of ``n`` rows."""
    from telemetry_core.collector.sqlite_store import SQLiteStore
    from telemetry_core.schema import Event, new_event_id

    old = 1_700_000_000_000
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)

    def batch(ts: int, size: int) -> list[Event]:
        return [
            Event(id=new_event_id(), type="t", timestamp=ts, install_id="i", app="a")
            for _ in range(size)
        ]

    async def main() -> None:
        store = SQLiteStore(db)
        try:
            for _ in range(n // 1000):
                await store.ingest(batch(old, 1000), old)
            now = old + 91 * 86_400_000
            cleanup = asyncio.create_task(store.cleanup(90, now))
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            await store.ingest(batch(now, 1), now)
            waited = time.perf_counter() - started
            print(f"ingest during cleanup waited {waited:.2f} s; deleted {await cleanup}")
        finally:
            await store.close()

    asyncio.run(main())


def main() -> None:
    """Command-line entry: one sub-command per probe."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="probe", required=True)
    for name in ("login-big", "slow-gzip"):
        p = sub.add_parser(name)
        p.add_argument("--ca", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--pid", type=int, required=True)
        p.add_argument("--mib", type=int, default=300)
        p.add_argument("--n", type=int, default=60)
        p.add_argument("--key", default="k1")
    p = sub.add_parser("retention")
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--n", type=int, default=300_000)
    args = parser.parse_args()
    if args.probe == "retention":
        retention(args.db, args.n)
        return
    ctx = ssl.create_default_context(cafile=args.ca)
    if args.probe == "login-big":
        login_big(ctx, args.port, args.pid, args.mib)
    else:
        slow_gzip(ctx, args.port, args.pid, args.n, args.key)


if __name__ == "__main__":
    main()
