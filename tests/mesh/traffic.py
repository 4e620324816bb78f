#!/usr/bin/env python3
"""HTTP traffic for mesh tests: a client of the gateway, as a user's app would be.

Sends GET requests over one keep-alive connection (reconnecting when the
server closes it) and prints one JSON line: responses by `x-served-by`, by
status, and every failure (a non-2xx status or a connection error).

Stops after `--count` requests, or, with `--until`, once that file exists;
`--max-seconds` bounds every run.
"""

import argparse
import http.client
import json
import os
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="host:port of the gateway")
    p.add_argument("--path", default="/")
    p.add_argument("--count", type=int, default=0, help="requests to send (0: until --until exists)")
    p.add_argument("--until", help="stop once this file exists")
    p.add_argument("--ready", help="create this file after the first response")
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--interval", type=float, default=0.0, help="pause between requests, in seconds")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="a header every request carries (repeatable)")
    args = p.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)

    host, port = args.target.rsplit(":", 1)
    conn = None
    served, statuses, failures = {}, {}, []
    sent = 0
    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        if args.count and sent >= args.count:
            break
        if args.until and os.path.exists(args.until):
            break
        sent += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", args.path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            who = resp.getheader("x-served-by", "?")
            if 200 <= resp.status < 300:
                served[who] = served.get(who, 0) + 1
            else:
                failures.append(f"request {sent}: status {resp.status} from {who}")
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            failures.append(f"request {sent}: {type(e).__name__}: {e}")
            if conn is not None:
                conn.close()
            conn = None
        if args.ready and sent == 1:
            open(args.ready, "w").close()
        if args.interval:
            time.sleep(args.interval)
    print(json.dumps({"sent": sent, "served": served, "statuses": statuses, "failures": failures[:20], "failed": len(failures)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
