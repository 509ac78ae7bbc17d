"""A webhook receiver written from docs/events.md alone, with only the standard library
(hmac, hashlib, http.server): it verifies each delivery's Accrual-Signature and records what it
got. Run by tests/webhook_python.rs:

    python3 webhook_receiver.py PORT SECRET OUT_FILE
"""

import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

TOLERANCE_S = 300


def verify(secret: str, header: str, body: bytes, now: float) -> bool:
    """The check of docs/events.md: HMAC-SHA256 over "<t>.<body>", hex, constant-time compare,
    and a timestamp within the tolerance."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    t, tag = fields.get("t"), fields.get("v1")
    if t is None or tag is None or abs(now - int(t)) > TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, tag)


def main() -> None:
    port, secret, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            header = self.headers.get("Accrual-Signature", "")
            ok = verify(secret, header, body, time.time())
            tampered = verify(secret, header, body + b" ", time.time())
            event = json.loads(body)
            record = {
                "position": event["position"],
                "event_id": self.headers.get("Accrual-Event-Id"),
                "verified": ok,
                "tampered_verified": tampered,
            }
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.send_response(200 if ok else 400)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
