#!/usr/bin/env python3
"""Serve the bare repositories under ROOT over git's smart HTTP protocol on 127.0.0.1.

Usage: gitserver.py ROOT PORT [--basic-auth USER:PASSWORD]

With --basic-auth every repository is private: a request without that login gets 401 and
HTTP basic authentication's challenge, as a private repository on a git host does.

Each request runs ``git http-backend`` as a CGI program (http.server's CGI handler is deprecated
and cannot pass the request body of a push through reliably). Clones work from the host and from
containers on the host network.
"""

from __future__ import annotations

import base64
import hmac
import os
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class GitHandler(BaseHTTPRequestHandler):
    server_version = "swarmbinder-testground-git/1"
    project_root = "."
    #: "user:password" every request must send (HTTP basic authentication); None: public.
    basic_auth: str | None = None

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._backend()

    def do_POST(self) -> None:  # noqa: N802
        self._backend()

    def _authorized(self) -> bool:
        if self.basic_auth is None:
            return True
        expected = "Basic " + base64.b64encode(self.basic_auth.encode()).decode()
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), expected.encode())

    def _backend(self) -> None:
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private repositories"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        url = urlsplit(self.path)
        if ".." in url.path.split("/"):
            self.send_error(400, "bad path")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        proc = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 4 and args[2] == "--basic-auth":
        GitHandler.basic_auth = args.pop()
        args.pop()
    if len(args) != 2:
        sys.exit("usage: gitserver.py ROOT PORT [--basic-auth USER:PASSWORD]")
    if not shutil.which("git"):
        sys.exit("git is not installed")
    GitHandler.project_root = os.path.abspath(args[0])
    server = ThreadingHTTPServer(("127.0.0.1", int(args[1])), GitHandler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
