"""An agency's own system on loopback, as the desk's notifications reach it: a webhook
endpoint that keeps every POST, and the desk's notification file pointing at it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# A Standard Webhooks secret (whsec_ and base64), for tests only.
SECRET = "whsec_" + "a2V5IGtleSBrZXkga2V5IGtleSBrZXkga2V5IGtleQ=="

Posts = list[tuple[dict[str, str], bytes]]


@contextlib.contextmanager
def webhook_receiver(folder: Path, more_config: str = "") -> Iterator[tuple[Path, Posts]]:
    """Serve a webhook endpoint; yield the notification file (``folder/notify.toml``, with
    ``more_config`` after its ``[webhook]`` table) and the posts received (headers
    lower-cased, body)."""
    posts: Posts = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    (folder / "hook.secret").write_text(SECRET + "\n")
    (folder / "hook.secret").chmod(0o600)
    conf = folder / "notify.toml"
    conf.write_text(
        f'[webhook]\nurl = "http://127.0.0.1:{http.server_address[1]}/istmo"\n'
        'secret_file = "hook.secret"\n' + more_config
    )
    thread.start()
    try:
        yield conf, posts
    finally:
        http.shutdown()
        http.server_close()
        thread.join()
