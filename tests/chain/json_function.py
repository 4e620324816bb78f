#!/usr/bin/env python3
"""A network function speaking Trefoil's HTTP/JSON call-out, for chain tests.

It decides on what the proxy sent:
- path starting with the deny prefix (`--deny-prefix`, default /deny): deny with 451, a reason and an `x-denied-by` header;
- a request header `x-fn-delay: SECONDS`: answer that much later (a slow function);
- anything else: allow, setting `x-checked-by` (its name), `x-seen-cnf`,
  `x-seen-trace` (from the payload), `x-seen-body` (the body it was sent, if
  any) and `x-checked-NAME: 1` (so a chain of several shows each), and
  removing `x-secret`.
Every verdict publishes an event `checked` (or the name given by `--event`).
`GET /calls` answers `{"calls": N, "received": [{cnf, function, path, status}...]}`
(`status`: the upstream's, on a response-phase call; else null):
the number of calls received so far and what each was about.

On the response phase (the call has `response`) the same deny rule holds;
an allow sets `x-checked-by`, `x-seen-status`, `x-seen-served-by` (the
upstream's `x-served-by`), `x-seen-body-len` (if a body was sent) on the
response and removes the upstream's `x-served-by`.

With `--publish URL`, after each verdict it also publishes an event
`late_finding` {path} for the call's CNF and trace id to URL (a proxy's
`/events`), as a function reporting something after it answered would.

Prints `listening on ADDR` (flushed) once it accepts connections.
"""

import argparse
import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler

from http_serve import serve


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "fn"
    deny_prefix = "/deny"
    event = "checked"
    publish = None
    calls = 0
    received = []
    lock = threading.Lock()

    def log_message(self, *_):
        pass

    def do_GET(self):
        if self.path != "/calls":
            self.send_error(404)
            return
        with Handler.lock:
            body = json.dumps({"calls": Handler.calls, "received": Handler.received}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        with Handler.lock:
            Handler.calls += 1
        length = int(self.headers.get("content-length", "0"))
        call = json.loads(self.rfile.read(length))
        with Handler.lock:
            Handler.received.append({"cnf": call["cnf"], "function": call["function"], "path": call["path"],
                                     "status": (call.get("response") or {}).get("status")})
        events = [{"name": self.event, "data": {"path": call["path"]}}]
        delay = call["headers"].get("x-fn-delay")
        if delay:
            time.sleep(float(delay))
        response = call.get("response")
        if call["path"].startswith(self.deny_prefix):
            verdict = {"verdict": "deny", "status": 451, "reason": "blocked by policy\n",
                       "setHeaders": {"x-denied-by": self.name}, "events": events}
        elif response is not None:
            set_headers = {
                "x-checked-by": self.name,
                "x-seen-status": str(response["status"]),
                "x-seen-served-by": response["headers"].get("x-served-by", ""),
            }
            if "body" in call:
                set_headers["x-seen-body-len"] = str(len(call["body"]))
            verdict = {"verdict": "allow", "setHeaders": set_headers, "removeHeaders": ["x-served-by"], "events": events}
        else:
            set_headers = {
                "x-checked-by": self.name,
                f"x-checked-{self.name}": "1",
                "x-seen-cnf": call["cnf"],
                "x-seen-trace": call["traceId"],
                # The header the proxy adds must agree with the payload.
                "x-seen-cnf-header": self.headers.get("x-trefoil-cnf", ""),
            }
            if "body" in call:
                set_headers["x-seen-body"] = call["body"]
            verdict = {"verdict": "allow", "setHeaders": set_headers, "removeHeaders": ["x-secret"], "events": events}
        body = json.dumps(verdict).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.publish:
            threading.Thread(target=self.publish_late, args=(call,), daemon=True).start()

    def publish_late(self, call):
        doc = {"cnf": call["cnf"], "function": self.name, "traceId": call["traceId"],
               "events": [{"name": "late_finding", "data": {"path": call["path"]}}]}
        req = urllib.request.Request(self.publish, data=json.dumps(doc).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
        except OSError as e:
            print(f"publishing to {self.publish} failed: {e}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="fn")
    parser.add_argument("--deny-prefix", default="/deny")
    parser.add_argument("--event", default="checked")
    parser.add_argument("--publish", help="URL to publish a late_finding event to after each verdict")
    args = parser.parse_args()
    Handler.name = args.name
    Handler.deny_prefix = args.deny_prefix
    Handler.event = args.event
    Handler.publish = args.publish
    return serve(Handler)


if __name__ == "__main__":
    sys.exit(main())
