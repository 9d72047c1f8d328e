"""A Hugging Face hub on 127.0.0.1 for tests: the part of the hub's HTTP API that ``from_pretrained`` and
huggingface_hub call, plus plain files (the course's data zip) -- so the real download path of the
project runs, a mirror on any port, without the internet.

Calls (logged from a real ``AutoTokenizer``/``AutoModelForQuestionAnswering.from_pretrained``):

* ``GET /api/models/<repo>[/revision/<rev>]`` -- model info: its commit (``sha``) and files (``siblings``);
* ``GET /api/models/<repo>/tree/<rev>[/<path>]`` -- the files with sizes and ids;
* ``HEAD``/``GET /<repo>/resolve/<rev>/<file>`` -- ``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, the size,
  then the bytes (``Range`` honoured);
* a missing repo, revision or file is a 404 with ``X-Error-Code`` ``RepoNotFound``, ``RevisionNotFound`` or
  ``EntryNotFound``, as the hub answers.

It also answers as an HTTP forward proxy (a request line with an absolute URL), so a client that goes
through ``HTTP_PROXY`` to an endpoint whose name does not even resolve still reaches it; an https tunnel
(``CONNECT host:443``, what ``HTTPS_PROXY`` clients send) is recorded and refused. Every request is
recorded in :attr:`HubServer.requests`.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> path -> bytes
        self.refs: dict[str, dict[str, str]] = {}  # repo -> branch -> commit
        self.files: dict[str, bytes] = {}  # /files/<name> -> bytes
        self.requests: list[tuple[str, str]] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self.port = 0

    # -- content
    def publish(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A new commit of ``repo`` holding ``files``, at the tip of ``branch``; its sha."""
        content = json.dumps({p: hashlib.sha256(b).hexdigest() for p, b in sorted(files.items())}, sort_keys=True)
        commit = hashlib.sha1(f"{repo} {len(self.repos.get(repo, {}))} {content}".encode()).hexdigest()
        self.repos.setdefault(repo, {})[commit] = dict(files)
        self.refs.setdefault(repo, {})[branch] = commit
        return commit

    def publish_folder(self, repo: str, folder: Path) -> str:
        return self.publish(repo, {p.relative_to(folder).as_posix(): p.read_bytes()
                                   for p in sorted(folder.rglob("*")) if p.is_file()})

    # -- serving
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> HubServer:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):  # noqa: N802 - the http.server protocol
                hub._answer(self, head=True)

            def do_GET(self):  # noqa: N802
                hub._answer(self, head=False)

            def do_CONNECT(self):  # noqa: N802 - an https tunnel asked of a proxy: recorded, not opened
                hub.requests.append(("CONNECT", self.path))
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Shut the server down and close its socket: from now on connections to the port are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- the API
    def _commit(self, repo: str, rev: str) -> str | None:
        if rev in self.refs.get(repo, {}):
            return self.refs[repo][rev]
        return rev if rev in self.repos.get(repo, {}) else None

    def _split_repo(self, rest: str) -> tuple[str | None, str]:
        """``org/name/tail`` or ``name/tail`` -> (the longest known repo id it starts with, the tail)."""
        for repo in sorted(self.repos, key=len, reverse=True):
            if rest == repo or rest.startswith(repo + "/"):
                return repo, rest[len(repo) + 1:]
        return None, rest

    def _answer(self, h: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        path = urlparse(h.path).path if h.path.startswith(("http://", "https://")) else h.path.split("?")[0]
        path = unquote(path)
        self.requests.append((h.command, path))
        if path.startswith("/files/") and path[len("/files/"):] in self.files:
            return self._send(h, 200, self.files[path[len("/files/"):]], {}, head)
        if path.startswith("/api/models/"):
            repo, tail = self._split_repo(path[len("/api/models/"):])
            if repo is None:
                return self._error(h, "RepoNotFound", head)
            info = re.fullmatch(r"(?:revision/(?P<rev>[^/]+))?", tail)
            tree = re.fullmatch(r"tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", tail)
            rev = (info or tree).group("rev") if (info or tree) else None
            commit = self._commit(repo, rev or "main")
            if commit is None:
                return self._error(h, "RevisionNotFound", head)
            files = self.repos[repo][commit]
            if tree:
                sub = (tree.group("sub") or "").strip("/")
                body = [{"type": "file", "oid": hashlib.sha1(b).hexdigest(), "size": len(b), "path": p}
                        for p, b in sorted(files.items()) if not sub or p.startswith(sub + "/")]
            elif info:
                body = {"_id": repo, "id": repo, "modelId": repo, "sha": commit, "private": False, "gated": False,
                        "disabled": False, "library_name": "transformers", "tags": ["transformers"],
                        "siblings": [{"rfilename": p} for p in sorted(files)]}
            else:
                return self._error(h, "EntryNotFound", head)
            return self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
        resolve = re.fullmatch(r"/(?P<rest>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        if resolve:
            repo, _ = self._split_repo(resolve.group("rest"))
            if repo is None or repo != resolve.group("rest"):
                return self._error(h, "RepoNotFound", head)
            commit = self._commit(repo, resolve.group("rev"))
            if commit is None:
                return self._error(h, "RevisionNotFound", head)
            data = self.repos[repo][commit].get(resolve.group("file"))
            if data is None:
                return self._error(h, "EntryNotFound", head, commit)
            etag = hashlib.sha256(data).hexdigest()
            return self._send(h, 200, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"',
                                             "X-Linked-Size": str(len(data)), "Accept-Ranges": "bytes"}, head)
        return self._error(h, "EntryNotFound", head)

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if wanted and status == 200 and 0 < int(wanted.group(1)) <= len(body):
            start, status = int(wanted.group(1)), 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        if not head:
            h.wfile.write(body[start:])

    def _error(self, h, code: str, head: bool, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": code, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(h, 404, json.dumps({"error": code}).encode(), headers, head)
