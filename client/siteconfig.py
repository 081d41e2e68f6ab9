"""The practice machine's client configuration: one repository, at one or more sites.

TOML, written by `dicomvault key import-kit` (or by hand), read by every command that is given
no `--repo`/`DICOMVAULT_REPO`:

    repository = "<32 hex>"            # the id every site must hold
    token = "dv_…"                     # the restore token (or any token of the repository)
    key_object = '{"version": 1, …}'   # the kit's wrapped key, tried after the repository's
    [[sites]]
    url = "https://a.example:8420/clinic"
    [[sites]]
    url = "https://b.example:8420/clinic"

Owns the schema and choosing the site a command starts with: of those serving the repository
(its config answers, with the expected id), the one with the highest generation. Takes its path from
`client.cli_common`; reads no environment.
"""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UsageError

PROBE_TIMEOUT = 5.0  # seconds for a site's health check before the next is tried


@dataclass(frozen=True, slots=True)
class ClientConfig:
    sites: tuple[str, ...]
    repository: str = ""
    token: str = ""
    key_object: bytes = b""

    def dump(self) -> str:
        lines = [
            "# dicomvault client configuration (docs/design.md §15)",
            f"repository = {json.dumps(self.repository)}",
            f"token = {json.dumps(self.token)}",
        ]
        if self.key_object:
            lines.append(f"key_object = {json.dumps(self.key_object.decode())}")
        for url in self.sites:
            lines += ["", "[[sites]]", f"url = {json.dumps(url)}"]
        return "\n".join(lines) + "\n"


def load(path: Path) -> ClientConfig | None:
    """The configuration at `path`, or None when there is none."""
    if not path.is_file():
        return None
    try:
        doc = tomllib.loads(path.read_text())
        sites = tuple(str(s["url"]).rstrip("/") for s in doc.get("sites", []))
        config = ClientConfig(
            sites,
            str(doc.get("repository", "")),
            str(doc.get("token", "")),
            str(doc.get("key_object", "")).encode(),
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"client configuration {path}: {e}") from None
    if not sites:
        raise UsageError(f"client configuration {path} names no [[sites]]")
    return config


def write(path: Path, config: ClientConfig) -> None:
    """Write atomically, readable by its owner only: it holds a token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config.dump())
    tmp.chmod(0o600)
    tmp.replace(path)


def split_locations(location: str) -> tuple[str, ...]:
    """Several sites in one `--repo`/`DICOMVAULT_REPO`: comma-separated URLs."""
    if location.startswith(("http://", "https://")) and "," in location:
        return tuple(u.strip().rstrip("/") for u in location.split(",") if u.strip())
    return (location,)


@dataclass(frozen=True, slots=True)
class Choice:
    index: int  # of the site to use
    generation: int  # the highest any site answered with (docs/design.md §17)
    skipped: list[str]  # a warning per site passed over


def choose_site(
    sites: tuple[str, ...], token: str, repository: str = "", ca_file: str | None = None
) -> Choice:
    """The site to use: of those serving the repository (with id `repository`, when known),
    the one with the highest generation, the earliest in order among equals, so a returning
    old primary is not preferred to the peer promoted in its place. None serving: the first,
    so that its own error reaches the user."""
    skipped: list[str] = []
    serving: list[tuple[int, int]] = []  # (generation, index)
    for index, url in enumerate(sites):
        held, generation = repository_at(url, token, ca_file)
        if held is not None and (not repository or held == repository):
            serving.append((generation, index))
            continue
        why = "does not answer" if held is None else f"holds another repository ({held})"
        skipped.append(f"site {url} {why}")
    if not serving:
        return Choice(0, 0, skipped)
    top = max(g for g, _ in serving)
    return Choice(min(i for g, i in serving if g == top), top, skipped)


def repository_at(url: str, token: str, ca_file: str | None = None) -> tuple[str | None, int]:
    """The id of the repository the site serves at `url` (or a local folder holds), or None
    if it serves none to us, and the repository's generation there (0: not said)."""
    from engine.protocol.routes import PRIMARY_GENERATION_HEADER, repo_url

    if not url.startswith(("http://", "https://")):
        try:
            return str(json.loads((Path(url) / "config").read_bytes())["id"]), 0
        except (OSError, ValueError, KeyError, TypeError):
            return None, 0
    base, _, name = url.rstrip("/").rpartition("/")
    context = None
    if url.startswith("https://"):
        import ssl

        context = ssl.create_default_context(cafile=ca_file)
    request = urllib.request.Request(
        f"{repo_url(base, name)}/config", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT, context=context) as resp:
            text = resp.headers.get(PRIMARY_GENERATION_HEADER, "")
            return str(json.loads(resp.read())["id"]), int(text) if text.isdigit() else 0
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return None, 0
