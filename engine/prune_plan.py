"""Which packs a prune deletes and which it repacks: a pure function of per-pack byte counts.

Owns the `--max-unused` syntax and meaning (restic's: the unused bytes tolerated after the
prune, as a share of the live bytes, a size, or `unlimited`) and the choice: every pack without a
live chunk is deleted; of the others, those with the most unused bytes are repacked until what
stays unused is within the limit. Unused means blob bytes no snapshot needs (a pack's header
and manifest are not counted: they shrink with it). Must not read a repository: the caller
counts live bytes per pack (client/prune.py) and acts on the plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.errors import UsageError
from engine.ids import PackId

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclass(frozen=True, slots=True)
class MaxUnused:
    """A share of the live bytes (`fraction`), an absolute size (`bytes`), or unlimited."""

    fraction: float | None = 0.05
    bytes: int | None = None

    def limit(self, live_bytes: int) -> float:
        if self.bytes is not None:
            return float(self.bytes)
        if self.fraction is None:
            return float("inf")
        return self.fraction * live_bytes


def parse_max_unused(text: str) -> MaxUnused:
    """`5%` (of the live bytes), `0%`, `200M`, `1G`, `unlimited`."""
    t = text.strip().lower()
    if t == "unlimited":
        return MaxUnused(None, None)
    if t.endswith("%"):
        try:
            share = float(t[:-1])
        except ValueError:
            share = -1.0
        if not 0 <= share <= 100:
            raise UsageError(f"--max-unused: {text!r} is not a percentage from 0% to 100%")
        return MaxUnused(share / 100, None)
    m = _SIZE.match(t)
    if not m:
        raise UsageError(f"--max-unused: {text!r} is not a percentage, a size or 'unlimited'")
    return MaxUnused(None, int(float(m.group(1)) * _UNITS[m.group(2)]))


@dataclass(frozen=True, slots=True)
class PackUse:
    pack_id: PackId
    size: int  # bytes stored (blobs, header, manifest, trailer)
    blobs: int  # bytes of all its blobs
    live: int  # bytes of the blobs a snapshot still needs (this pack's copy)


@dataclass(slots=True)
class Plan:
    delete: list[PackId] = field(default_factory=list)
    repack: list[PackId] = field(default_factory=list)
    packs: int = 0
    bytes_total: int = 0
    bytes_live: int = 0
    bytes_unused: int = 0  # before the prune
    bytes_deleted: int = 0  # sizes of the packs deleted outright
    bytes_repacked: int = 0  # sizes of the packs repacked (read, then deleted)
    bytes_rewritten: int = 0  # live bytes copied into new packs
    unused_after: int = 0

    def as_json(self) -> dict[str, int]:
        return {
            "packs": self.packs,
            "packs_deleted": len(self.delete),
            "packs_repacked": len(self.repack),
            "bytes_total": self.bytes_total,
            "bytes_live": self.bytes_live,
            "bytes_unused": self.bytes_unused,
            "bytes_deleted": self.bytes_deleted,
            "bytes_repacked": self.bytes_repacked,
            "bytes_rewritten": self.bytes_rewritten,
            "unused_after": self.unused_after,
        }


def plan(packs: list[PackUse], max_unused: MaxUnused) -> Plan:
    out = Plan(packs=len(packs))
    partial = []
    for p in packs:
        out.bytes_total += p.size
        out.bytes_live += p.live
        out.bytes_unused += p.blobs - p.live
        if p.live == 0:
            out.delete.append(p.pack_id)
            out.bytes_deleted += p.size
        elif p.live < p.blobs:
            partial.append(p)
    unused = sum(p.blobs - p.live for p in partial)
    limit = max_unused.limit(out.bytes_live)
    # Most unused first, so the fewest bytes are rewritten for the space won.
    for p in sorted(partial, key=lambda p: (p.live - p.blobs, p.pack_id)):
        if unused <= limit:
            break
        out.repack.append(p.pack_id)
        out.bytes_repacked += p.size
        out.bytes_rewritten += p.live
        unused -= p.blobs - p.live
    out.unused_after = unused
    return out
