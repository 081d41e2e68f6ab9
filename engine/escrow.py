"""Key escrow: the master secret as SLIP-39 mnemonic shares, and back.

Uses `shamir_mnemonic`, the SLIP-39 reference implementation (one group, K of N members); never
a hand-rolled Shamir. Owns the translation of its errors into `EscrowError` (exit 21) with a
sentence a practice can act on. Does not touch storage and does not decide whether a rebuilt
secret belongs to a repository (`client.keycmd` checks it against a snapshot).
"""

from __future__ import annotations

import shamir_mnemonic
from shamir_mnemonic.utils import MnemonicError

from engine.errors import EscrowError, UsageError
from engine.keys import MasterKey

MAX_SHARES = 16  # SLIP-39's limit on members of a group


def split(key: MasterKey, shares: int, threshold: int) -> list[str]:
    """`shares` mnemonics, any `threshold` of which rebuild `key`."""
    if not 1 <= threshold <= shares <= MAX_SHARES:
        raise UsageError(f"need 1 <= threshold <= shares <= {MAX_SHARES}")
    if threshold == 1 and shares > 1:
        raise UsageError("SLIP-39 does not split into several shares with threshold 1")
    groups = shamir_mnemonic.generate_mnemonics(1, [(threshold, shares)], key.secret)
    return [" ".join(m.split()) for m in groups[0]]


def combine(mnemonics: list[str]) -> MasterKey:
    """The master key the shares rebuild; `EscrowError` for too few, mixed or mistyped shares."""
    cleaned = [" ".join(m.lower().split()) for m in mnemonics if m.strip()]
    if not cleaned:
        raise EscrowError("no shares given")
    try:
        secret = shamir_mnemonic.combine_mnemonics(cleaned)
    except MnemonicError as e:
        raise EscrowError(f"the shares do not rebuild a key: {e}") from None
    if len(secret) != 32:
        raise EscrowError(f"the shares rebuild a {len(secret)}-byte secret, not a master key")
    return MasterKey(secret)
