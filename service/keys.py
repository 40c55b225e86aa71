"""API keys: stored as SHA-256 digests, compared in constant time.

``NORMGATE_API_KEYS`` holds comma-separated entries, each ``sha256:<64 hex digits>`` (the digest of a key, what
an operator should put in a config file or a Kubernetes secret) or a plain key (accepted for convenience,
hashed as soon as the settings are read and a warning logged, so the plain text never lives on in the
settings object, its repr or a crash dump).

``python -m service.keys hash KEY`` prints the entry for KEY; ``python -m service.keys new`` makes a random key
and prints the key (give it to the client) and its entry (put it in the config).

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
from collections.abc import Iterable

log = logging.getLogger("normgate.keys")

PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The config entry for ``key``: ``sha256:`` + the hex SHA-256 of its UTF-8 bytes."""
    return PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def normalise_entry(entry: str) -> str:
    """A config entry as ``sha256:<hex>``: digests are checked and kept, plain keys hashed (with a warning)."""
    entry = entry.strip()
    if entry.lower().startswith(PREFIX):
        digest = entry[len(PREFIX) :].lower()
        if not _HEX_DIGEST.match(digest):
            # Never echo the value: it might be a real key pasted with the prefix by mistake.
            raise ValueError("an API key entry starting with 'sha256:' must have exactly 64 hex digits after it")
        return PREFIX + digest
    log.warning(
        "NORMGATE_API_KEYS holds a plain API key; store its digest instead (python -m service.keys hash KEY prints it)"
    )
    return hash_key(entry)


def digests_of(entries: Iterable[str]) -> list[bytes]:
    """The raw 32-byte digests of normalised entries."""
    return [bytes.fromhex(entry[len(PREFIX) :]) for entry in entries]


def key_matches(given: str, digests: Iterable[bytes]) -> bool:
    """Constant-time check of a presented key against every stored digest.

    The presented key is hashed first, so ``compare_digest`` always compares 32 bytes with 32 bytes (its
    time does not depend on the key's length or on how much of a stored key it shares), and every stored
    digest is compared — no early exit — so timing does not reveal which key, if any, was nearly right.
    """
    given_digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(given_digest, digest)
    return matched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    hash_cmd = sub.add_parser("hash", help="print the NORMGATE_API_KEYS entry (sha256:<hex>) of a key")
    hash_cmd.add_argument(
        "key", nargs="?", help="the key; read from stdin when left out (keeps it out of the shell history)"
    )
    sub.add_parser("new", help="make a random key; print the key and its NORMGATE_API_KEYS entry")
    args = parser.parse_args(argv)
    if args.command == "new":
        key = secrets.token_urlsafe(32)
        print(f"key:   {key}")
        print(f"entry: {hash_key(key)}")
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
    if not key:
        parser.error("the key is empty")
    print(hash_key(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
