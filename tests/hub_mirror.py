"""A minimal Hugging Face hub mirror on loopback, for huggingface_hub's real download and upload code.

Downloads: the resolve API (HEAD for metadata, GET for content, 404 with the hub's error codes; `failures`
makes a file answer with another status, as a hub that refuses or fails would).
Uploads: repo creation, README metadata validation, the preupload check (weights go through git LFS, as
the hub's default .gitattributes sends them), the LFS batch API with basic single-PUT transfers, and
ndjson commits; what is committed is stored under root/<owner>/<name>/ and served by the resolve API.
Writes need `Authorization: Bearer <token>` when the mirror has a token. Xet storage is not spoken:
uploading clients need HF_HUB_DISABLE_XET=1 when hf_xet is installed."""

import base64
import hashlib
import http.server
import json
import threading
from pathlib import Path

import yaml

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack")
LFS_ABOVE_BYTES = 10 * 1024 * 1024


class HubMirror:
    def __init__(self, root: Path, token: str | None = None):
        self.root = root  # root/<owner>/<name>/<files>
        self.token = token
        self.requests: list[str] = []
        self.commits: dict[str, str] = {}  # "owner/name" -> its latest commit
        self.lfs: dict[str, bytes] = {}  # uploaded LFS objects by sha256
        self.failures: dict[str, int] = {}  # file name -> the HTTP status its downloads answer with instead
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _resolve(self):
                mirror.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None, "RepoNotFound", None
                repo = mirror.root / parts[0] / parts[1]
                if not repo.is_dir():
                    return None, "RepoNotFound", None
                path = repo / "/".join(parts[4:])
                commit = mirror.commits.get(f"{parts[0]}/{parts[1]}", COMMIT)
                return (path, None, commit) if path.is_file() else (None, "EntryNotFound", commit)

            def _headers(self, path, code, commit):
                failure = mirror.failures.get(self.path.split("?")[0].rsplit("/", 1)[-1])
                if failure is not None:
                    self.send_response(failure)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if path is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", code)
                    if commit is not None:  # as the hub says which revision lacks the file
                        self.send_header("X-Repo-Commit", commit)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
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

            # -- uploads ---------------------------------------------------------------------------
            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b""):  # trailers, if any
                    pass
                return b"".join(chunks)

            def _reply(self, status: int, body=None, error_code: str | None = None):
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if mirror.token is None or self.headers.get("Authorization") == f"Bearer {mirror.token}":
                    return True
                self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def _repo(self, owner: str, name: str):
                repo = mirror.root / owner / name
                if not repo.is_dir():
                    self._reply(404, {"error": "Repository not found"}, "RepoNotFound")
                    return None
                return repo

            def do_PUT(self):  # a basic LFS transfer: the object's bytes, at the address the batch API gave
                mirror.requests.append(f"PUT {self.path}")
                oid = self.path.strip("/").split("/")[-1]
                data = self._body()
                if hashlib.sha256(data).hexdigest() != oid:
                    return self._reply(400, {"error": "the content does not match its sha256"})
                mirror.lfs[oid] = data
                self._reply(200)

            def do_POST(self):
                mirror.requests.append(f"POST {self.path}")
                body = self._body()
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "validate-yaml"]:
                    return self._validate_yaml(json.loads(body)["content"])
                if not self._authorised():
                    return None
                if parts == ["api", "repos", "create"]:
                    return self._create(json.loads(body))
                if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
                    repo = self._repo(parts[2], parts[3])
                    if repo is None:
                        return None
                    if parts[4] == "preupload":
                        return self._preupload(json.loads(body))
                    return self._commit(f"{parts[2]}/{parts[3]}", repo, body)
                if parts[2:] == ["info", "lfs", "objects", "batch"] and parts[1].endswith(".git"):
                    if self._repo(parts[0], parts[1][: -len(".git")]) is not None:
                        self._lfs_batch(json.loads(body))
                    return None
                return self._reply(404, {"error": f"no such endpoint: {self.path}"})

            def _validate_yaml(self, readme: str):
                try:
                    if readme.startswith("---\n"):
                        yaml.safe_load(readme[4 : readme.index("\n---", 3)])
                except (yaml.YAMLError, ValueError) as e:
                    return self._reply(400, {"errors": [{"message": str(e)}], "warnings": []})
                self._reply(200, {"errors": [], "warnings": []})

            def _create(self, request: dict):
                repo_id = f"{request['organization']}/{request['name']}"
                url = f"{mirror.url}/{repo_id}"
                repo = mirror.root / repo_id
                if repo.is_dir():
                    return self._reply(409, {"error": "You already created this model repo", "url": url})
                repo.mkdir(parents=True)
                self._reply(200, {"url": url})

            def _preupload(self, request: dict):
                modes = []
                for file in request["files"]:
                    lfs = file["path"].endswith(LFS_SUFFIXES) or file["size"] > LFS_ABOVE_BYTES
                    modes.append(
                        {"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
                    )
                self._reply(200, {"files": modes})

            def _lfs_batch(self, request: dict):
                objects = []
                for obj in request["objects"]:
                    entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                    if obj["oid"] not in mirror.lfs:
                        entry["actions"] = {"upload": {"href": f"{mirror.url}/lfs-upload/{obj['oid']}"}}
                    objects.append(entry)
                self._reply(200, {"transfer": "basic", "objects": objects})

            def _commit(self, repo_id: str, repo: Path, body: bytes):
                files = {}
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        if value["oid"] not in mirror.lfs:
                            return self._reply(422, {"error": f"{value['path']}: its LFS object was never uploaded"})
                        files[value["path"]] = mirror.lfs[value["oid"]]
                    elif item["key"] != "header":
                        return self._reply(400, {"error": f"the mirror does not support {item['key']} operations"})
                digest = hashlib.sha1(mirror.commits.get(repo_id, COMMIT).encode())
                for path, data in sorted(files.items()):
                    (repo / path).parent.mkdir(parents=True, exist_ok=True)
                    (repo / path).write_bytes(data)
                    digest.update(path.encode() + hashlib.sha256(data).digest())
                mirror.commits[repo_id] = commit = digest.hexdigest()
                self._reply(
                    200,
                    {
                        "commitUrl": f"{mirror.url}/{repo_id}/commit/{commit}",
                        "commitOid": commit,
                        "pullRequestUrl": None,
                    },
                )

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
