"""A real webhook receiver on 127.0.0.1 for the alert tests: records every JSON body posted to it and
answers with the queued status codes (200 when none are queued)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self, path: str = "/alerts"):
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []  # request headers, in order
        self.replies: list[int] = []  # status codes to answer with, in order
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.headers.append(dict(self.headers))
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(receiver.replies.pop(0) if receiver.replies else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def alerts(self) -> list[dict]:
        return [b["alert"] for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
