"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1, for the real `huggingface_hub` client.

It speaks the handful of endpoints `snapshot_download` and `create_repo` / `create_branch` /
`create_commit` use (repo info, tree listing, resolve, validate-yaml, preupload, commit), keeps
repos in memory and records every request, so tests can assert what was asked and sent. Every
file is declared a "regular" (non-LFS) upload, so commits arrive inline as base64 NDJSON.
Point the client at it with `HF_ENDPOINT=hub.url`. Loopback only; nothing leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    private: bool = False
    messages: dict[str, tuple[str, str]] = field(default_factory=dict)  # sha -> summary, desc


def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$"), "info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}$"), "info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?$"), "tree"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"), "branch"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
]


class FakeHub:
    """In-memory model repos behind a loopback HTTP server; `requests` records every call."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.read_only = False  # True: every POST is refused with 403, like a read token
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                hub._dispatch(self, body)

            do_GET = do_HEAD = do_POST = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # shutdown() waits for serve_forever to wake up and see the flag: at the default
        # 0.5 s poll that is half a second of every test's teardown.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.01}, daemon=True)

    # -- repo contents --------------------------------------------------------------------
    def add_commit(self, repo_id: str, files: dict[str, bytes], *, refs: tuple[str, ...] = (
            "main",), private: bool = False) -> str:
        """Add a commit holding exactly `files`; point `refs` at it. Returns its sha."""
        repo = self.repos.setdefault(repo_id, Repo(private=private))
        sha = _sha(repo_id.encode() + b"".join(k.encode() + _sha(v).encode()
                                               for k, v in sorted(files.items()))
                   + str(len(repo.commits)).encode())
        repo.commits[sha] = dict(files)
        for ref in refs:
            repo.refs[ref] = sha
        return sha

    def files(self, repo_id: str, ref: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs[ref]]

    # -- HTTP -----------------------------------------------------------------------------
    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes | dict | list = b"",
               headers: dict[str, str] | None = None) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _not_found(self, h, code: str, msg: str) -> None:
        self._reply(h, 404, {"error": msg}, {"X-Error-Code": code, "X-Error-Message": msg})

    def _commit(self, h, repo_id: str, rev: str) -> tuple[Repo, str] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._not_found(h, "RepoNotFound", "Repository not found")
            return None
        sha = repo.refs.get(rev, rev if rev in repo.commits else None)
        if sha is None:
            self._not_found(h, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, sha

    def _dispatch(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        with self._lock:
            self.requests.append(Request(h.command, h.path, dict(h.headers.items()), body))
        if self.read_only and h.command == "POST":
            self._reply(h, 403, {"error": "You don't have the rights to create a model"},
                        {"X-Error-Message": "You don't have the rights to create a model"})
            return
        for method, pattern, name in _ROUTES:
            m = pattern.match(path)
            if m and method == h.command:
                with self._lock:
                    getattr(self, f"_do_{name}")(h, m.groupdict(), body, parse_qs(url.query))
                return
        self._reply(h, 404, {"error": f"fake hub: no route for {h.command} {path}"})

    def _do_info(self, h, g, body, query) -> None:
        found = self._commit(h, g["repo"], g.get("rev") or "main")
        if found:
            repo, sha = found
            self._reply(h, 200, {"id": g["repo"], "modelId": g["repo"], "sha": sha,
                                 "private": repo.private,
                                 "siblings": [{"rfilename": f} for f in repo.commits[sha]]})

    def _do_tree(self, h, g, body, query) -> None:
        found = self._commit(h, g["repo"], g["rev"])
        if found:
            repo, sha = found
            self._reply(h, 200, [{"type": "file", "path": f, "size": len(data),
                                  "oid": _sha(data)} for f, data in repo.commits[sha].items()])

    def _do_resolve(self, h, g, body, query) -> None:
        found = self._commit(h, g["repo"], g["rev"])
        if not found:
            return
        repo, sha = found
        data = repo.commits[sha].get(g["file"])
        if data is None:
            self._not_found(h, "EntryNotFound", f"{g['file']} does not exist")
            return
        self._reply(h, 200, data, {"X-Repo-Commit": sha, "ETag": f'"{_sha(data)}"',
                                   "Content-Type": "application/octet-stream"})

    def _do_create(self, h, g, body, query) -> None:
        req = json.loads(body)
        repo_id = f"{req['organization']}/{req['name']}"
        if repo_id in self.repos:
            self._reply(h, 409, {"error": "You already created this model repo",
                                 "url": f"{self.url}/{repo_id}"})
            return
        self.repos[repo_id] = Repo(private=req.get("visibility") == "private")
        self.add_commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs\n"})
        self._reply(h, 200, {"url": f"{self.url}/{repo_id}"})

    def _do_validate(self, h, g, body, query) -> None:
        self._reply(h, 200, {"errors": [], "warnings": []})

    def _do_branch(self, h, g, body, query) -> None:
        found = self._commit(h, g["repo"], "main")
        if not found:
            return
        repo, sha = found
        if g["rev"] in repo.refs:
            self._reply(h, 409, {"error": "Reference already exists"})
            return
        repo.refs[g["rev"]] = sha
        self._reply(h, 200, {})

    def _do_preupload(self, h, g, body, query) -> None:
        if self._commit(h, g["repo"], unquote(g["rev"])):
            files = json.loads(body)["files"]
            self._reply(h, 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                            "shouldIgnore": False} for f in files]})

    def _do_commit(self, h, g, body, query) -> None:
        found = self._commit(h, g["repo"], unquote(g["rev"]))
        if not found:
            return
        repo, parent = found
        files = dict(repo.commits[parent])
        header: dict = {}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        sha = self.add_commit(g["repo"], files, refs=(unquote(g["rev"]),))
        repo.messages[sha] = (header.get("summary", ""), header.get("description", ""))
        self._reply(h, 200, {"commitUrl": f"{self.url}/{g['repo']}/commit/{sha}",
                             "commitOid": sha, "success": True})

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


__all__ = ["FakeHub", "Repo", "Request"]
