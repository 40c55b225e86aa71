"""API keys: an id, a SHA-256 digest compared in constant time, and scopes.

``NORMGATE_API_KEYS`` holds comma-separated entries, each

    ID:sha256:<64 hex digits>[:SCOPES]      the digest of a key (what belongs in a config file or a secret)
    ID:<plain key>[:SCOPES]                 accepted for convenience: hashed as the settings are read, with a
                                            warning, so the plain text never lives on in the settings object

``ID`` names the key in logs and decision records (never the key itself): letters, digits, ``.``, ``_``,
``-``, at most 64. ``SCOPES`` is ``+``-joined names from :data:`SCOPES` (``assess`` for /assess, /render and
/dicomweb; ``evaluate`` for /evaluate; ``audit`` for the audit trail); a key without scopes has
:data:`DEFAULT_SCOPES`. A plain key that contains ``:`` cannot be told from an id or scopes: store its digest.

Entries from before key ids (``sha256:<hex>`` or a plain key alone) still work: they get the ids ``key-1``,
``key-2``, … by their position in the list, with one warning.

``python -m service.keys hash KEY --id ID [--scopes assess+evaluate]`` prints the entry for KEY;
``python -m service.keys new --id ID`` makes a random key and prints the key (give it to the client) and its
entry (put it in the config).

Why plain SHA-256 and not a slow password hash: API keys are long random strings (``new`` makes 256-bit
ones), so a digest leak does not make them guessable, and every request pays the check.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger("normgate.keys")

PREFIX = "sha256:"
SCOPES = ("assess", "evaluate", "audit")
DEFAULT_SCOPES = frozenset({"assess", "evaluate"})
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SCOPE_LIST = re.compile(r"^[a-z]+(\+[a-z]+)*$")


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its id, the SHA-256 digest of the key, what it may do."""

    key_id: str
    digest: bytes
    scopes: frozenset[str]

    @property
    def entry(self) -> str:
        """The normalised config entry: ``ID:sha256:<hex>:scope+scope`` (scopes in :data:`SCOPES` order)."""
        scopes = "+".join(s for s in SCOPES if s in self.scopes)
        return f"{self.key_id}:{PREFIX}{self.digest.hex()}:{scopes}"


def hash_key(key: str) -> str:
    """``sha256:`` + the hex SHA-256 of the key's UTF-8 bytes (the digest part of an entry)."""
    return PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def entry_for(key: str, key_id: str, scopes: Iterable[str] | None = None) -> str:
    """The config entry for ``key`` under ``key_id`` (and ``scopes``, when not the default)."""
    _check_id(key_id)
    entry = f"{key_id}:{hash_key(key)}"
    if scopes is not None:
        chosen = _parse_scopes("+".join(scopes))
        if chosen != DEFAULT_SCOPES:
            entry += ":" + "+".join(s for s in SCOPES if s in chosen)
    return entry


def _check_id(key_id: str) -> None:
    if not _KEY_ID.match(key_id):
        raise ValueError(f"API key id {key_id[:70]!r} is not valid: use 1–64 letters, digits, '.', '_' or '-'")


def _parse_scopes(text: str) -> frozenset[str]:
    names = text.split("+")
    unknown = sorted(set(names) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown API key scope(s) {unknown}; the scopes are {'+'.join(SCOPES)}")
    return frozenset(names)


def _digest_of(value: str) -> tuple[bytes, bool]:
    """(digest, was it plain) of the key part of an entry."""
    if value.lower().startswith(PREFIX):
        digest = value[len(PREFIX) :].lower()
        if not _HEX_DIGEST.match(digest):
            # Never echo the value: it might be a real key pasted with the prefix by mistake.
            raise ValueError("an API key entry's 'sha256:' must be followed by exactly 64 hex digits")
        return bytes.fromhex(digest), False
    if not value:
        raise ValueError("an API key entry has an id but no key")
    return hashlib.sha256(value.encode("utf-8")).digest(), True


def parse_entry(entry: str, position: int) -> tuple[ApiKey, bool, bool]:
    """One ``NORMGATE_API_KEYS`` entry → (key, had an id, was a plain key). ``position`` (1-based) names an
    entry without an id: ``key-<position>``."""
    entry = entry.strip()
    if entry.lower().startswith(PREFIX) or ":" not in entry:  # from before key ids: digest or plain key alone
        digest, plain = _digest_of(entry)
        return ApiKey(f"key-{position}", digest, DEFAULT_SCOPES), False, plain
    key_id, rest = entry.split(":", 1)
    _check_id(key_id)
    scopes = DEFAULT_SCOPES
    if rest.lower().startswith(PREFIX):
        parts = rest.split(":")
        if len(parts) > 3:
            raise ValueError(f"API key entry {key_id!r} has more ':'-separated parts than ID:sha256:<hex>:SCOPES")
        if len(parts) == 3:
            scopes = _parse_scopes(parts[2])
        digest, plain = _digest_of(f"{parts[0]}:{parts[1]}")
    else:
        head, _, tail = rest.rpartition(":")
        if head and _SCOPE_LIST.match(tail):  # ID:<plain>:scopes
            scopes = _parse_scopes(tail)
            rest = head
        digest, plain = _digest_of(rest)
    return ApiKey(key_id, digest, scopes), True, plain


def parse_entries(entries: Sequence[str]) -> list[ApiKey]:
    """Every entry parsed; duplicate ids refused; one warning for entries without ids and one for plain keys."""
    keys: list[ApiKey] = []
    without_id = plain_keys = 0
    for position, entry in enumerate((e for e in entries if e.strip()), start=1):
        key, had_id, plain = parse_entry(entry, position)
        without_id += not had_id
        plain_keys += plain
        keys.append(key)
    ids = [k.key_id for k in keys]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"API key ids must be unique; repeated: {', '.join(duplicates)}")
    if without_id:
        log.warning(
            "%d NORMGATE_API_KEYS entr%s without an id: named key-1, key-2, … by position in the list; write each "
            "as ID:sha256:<hex> (python -m service.keys hash KEY --id ID) so its id stays when the list changes",
            without_id,
            "y has no id and is" if without_id == 1 else "ies have no id and are",
        )
    if plain_keys:
        log.warning(
            "NORMGATE_API_KEYS holds %d plain API key%s; store digests instead "
            "(python -m service.keys hash KEY --id ID prints the entry)",
            plain_keys,
            "" if plain_keys == 1 else "s",
        )
    return keys


def identify(given: str, keys: Iterable[ApiKey]) -> ApiKey | None:
    """The configured key ``given`` is, compared in constant time, or None.

    The presented key is hashed first, so ``compare_digest`` always compares 32 bytes with 32 bytes (its
    time does not depend on the key's length or on how much of a stored key it shares), and every stored
    digest is compared — no early exit — so timing does not reveal which key, if any, was nearly right.
    """
    given_digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(given_digest, key.digest):
            found = key
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--id", dest="key_id", help="the key's id (logged with every decision); recommended")
    common.add_argument(
        "--scopes", help=f"'+'-joined scopes from {'+'.join(SCOPES)}; default {'+'.join(sorted(DEFAULT_SCOPES))}"
    )
    hash_cmd = sub.add_parser("hash", parents=[common], help="print the NORMGATE_API_KEYS entry of a key")
    hash_cmd.add_argument(
        "key", nargs="?", help="the key; read from stdin when left out (keeps it out of the shell history)"
    )
    sub.add_parser("new", parents=[common], help="make a random key; print the key and its NORMGATE_API_KEYS entry")
    args = parser.parse_args(argv)
    if args.scopes and not args.key_id:
        parser.error("--scopes needs --id (an entry without an id has the default scopes)")
    try:
        scopes = _parse_scopes(args.scopes) if args.scopes else None
        if args.key_id:
            _check_id(args.key_id)
    except ValueError as exc:
        parser.error(str(exc))

    def entry(key: str) -> str:
        return entry_for(key, args.key_id, scopes) if args.key_id else hash_key(key)

    if args.command == "new":
        key = secrets.token_urlsafe(32)
        print(f"key:   {key}")
        print(f"entry: {entry(key)}")
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
    if not key:
        parser.error("the key is empty")
    print(entry(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
