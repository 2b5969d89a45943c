"""HTTP prober (a separate process): GET the given URLs in turn every `--every` seconds and
time each answer, until stdin closes; then print the timings as JSON on stdout.

    .venv/bin/python -m bench.probe --every 0.02 http://127.0.0.1:8080/readyz \
        http://127.0.0.1:8080/metrics < /dev/null

Run out of process so that the worker's event loop, not the prober's, is what delays an
answer; one new connection per request, as a kubelet probe or a scraper opens.
"""

from __future__ import annotations

import argparse
import http.client
import select
import sys
import time
from urllib.parse import urlsplit

import orjson


def get_ms(url: str, timeout_s: float) -> tuple[float, float, int]:
    """One GET: (epoch s when sent, ms to the whole answer, status; 0 when it failed)."""
    parts = urlsplit(url)
    sent = time.time()
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.netloc, timeout=timeout_s)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        connection.close()
    return sent, (time.perf_counter() - started) * 1000, status


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--every", type=float, default=0.02, help="seconds between requests")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    timings: dict[str, list[tuple[float, float, int]]] = {url: [] for url in args.urls}
    turn = 0
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], args.every)
        if readable:  # EOF (or anything written): the measured window is over
            break
        url = args.urls[turn % len(args.urls)]
        turn += 1
        timings[url].append(get_ms(url, args.timeout))
    sys.stdout.write(orjson.dumps(timings).decode())


if __name__ == "__main__":
    main()
