"""The provider's status page: one self-contained HTML document (`server/assets/status.html`:
inline CSS and JS, no external assets), which polls `/status.json` every 3 seconds and redraws its
table without a reload.

Owns only loading the page. The provider token comes from the URL fragment (`/status#token=…`),
which browsers never send to a server, and goes out only as an `Authorization` header; every value
is written with `textContent`, never as HTML. Must not compute status (`server.monitor` does).
"""

from __future__ import annotations

from importlib.resources import files

STATUS_HTML = files("server").joinpath("assets/status.html").read_text(encoding="utf-8")
