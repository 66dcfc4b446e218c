"""A minimal Hugging Face hub mirror on loopback: enough of the resolve API for huggingface_hub's
real download code (HEAD for metadata, GET for content, 404 with the hub's error codes)."""

import hashlib
import http.server
import threading
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubMirror:
    def __init__(self, root: Path):
        self.root = root  # root/<owner>/<name>/<files>
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _resolve(self):
                mirror.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None, "RepoNotFound"
                repo = mirror.root / parts[0] / parts[1]
                if not repo.is_dir():
                    return None, "RepoNotFound"
                path = repo / "/".join(parts[4:])
                return (path, None) if path.is_file() else (None, "EntryNotFound")

            def _headers(self, path, code):
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                return data

            def do_HEAD(self):
                self._headers(*self._resolve())

            def do_GET(self):
                data = self._headers(*self._resolve())
                if data is not None:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
