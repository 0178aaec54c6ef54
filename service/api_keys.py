"""The API-key file: one line per key, ``NAME:pbkdf2_sha256$ITERATIONS$SALT$HASH`` (salt and hash urlsafe
base64, no padding), written by ``drrn keys add`` and read by the service (``DRRN_API_KEYS_FILE``).

A key is ``secrets.token_urlsafe(32)``: 256 random bits, shown once and never stored. The file holds only a
salted one-way hash, so a leaked file does not give the keys away. The hash is PBKDF2-HMAC-SHA256 with **one**
iteration (the count is in each line, so a later version can raise it): slow KDFs exist to make guessing
*low-entropy passwords* expensive, and nobody guesses 256 random bits at any speed, whereas a slow hash would
cost CPU on every request, checked against every line, which anyone without a key could trigger at will.
Every line is checked with :func:`hmac.compare_digest` and no early exit, so the time taken does not depend
on which key (if any) matched, nor on how many leading bytes of a hash agree.

Blank lines and lines starting with ``#`` are ignored. Standard library only; nothing runs at import.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from drrn.errors import UserError

log = logging.getLogger("drrn.service")

SCHEME = "pbkdf2_sha256"
ITERATIONS = 1  # see the module docstring: the key has 256 random bits; a slow hash only adds load
MAX_ITERATIONS = 10_000  # a line asking for more is refused: the file must not make every request slow
MAX_KEY_CHARS = 256  # a longer presented key is wrong without being hashed
DIGEST_BYTES = 32  # PBKDF2-HMAC-SHA256
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LINE_RE = re.compile(
    r"(?P<name>[^:\s]+):(?P<scheme>[a-z0-9_]+)\$(?P<iter>[0-9]+)\$(?P<salt>[A-Za-z0-9_-]+)\$(?P<hash>[A-Za-z0-9_-]+)"
)


class KeyFileError(UserError):
    """The key file cannot be read or has a malformed line (the message names the file and line); the CLI
    (``drrn serve``, ``drrn keys``) prints it as one line."""


@dataclass(frozen=True)
class KeyRecord:
    """One key's line: its ``name`` (shown in logs and ``drrn keys list``; never the key) and hash."""

    name: str
    iterations: int
    salt: bytes
    digest: bytes

    def line(self) -> str:
        return f"{self.name}:{SCHEME}${self.iterations}${_b64(self.salt)}${_b64(self.digest)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(key: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), salt, iterations)


def new_record(name: str) -> tuple[str, KeyRecord]:
    """A fresh random key (urlsafe text, 43 chars) and its record (16-byte random salt)."""
    if not NAME_RE.fullmatch(name):
        raise KeyFileError(f"bad key name {name!r}: 1-64 of [A-Za-z0-9_.-], starting with a letter or digit")
    key, salt = secrets.token_urlsafe(32), secrets.token_bytes(16)
    return key, KeyRecord(name, ITERATIONS, salt, _digest(key, salt, ITERATIONS))


def parse_keys(text: str, source: str = "<keys>") -> list[KeyRecord]:
    """Every record in a key file's ``text``; :class:`KeyFileError` names the first bad line (its number,
    not its content) or a name used twice."""
    records: list[KeyRecord] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE_RE.fullmatch(line)
        if m is None or m["scheme"] != SCHEME or not NAME_RE.fullmatch(m["name"]):
            raise KeyFileError(f"{source}:{number}: not a NAME:{SCHEME}$ITERATIONS$SALT$HASH line")
        iterations = int(m["iter"])
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise KeyFileError(f"{source}:{number}: iterations must be in [1, {MAX_ITERATIONS}]")
        if any(r.name == m["name"] for r in records):
            raise KeyFileError(f"{source}:{number}: key name {m['name']!r} appears twice")
        try:  # a length of 1 mod 4 is no base64 at all
            salt, digest = _unb64(m["salt"]), _unb64(m["hash"])
        except ValueError:
            raise KeyFileError(f"{source}:{number}: the salt or hash is not base64") from None
        if len(digest) != DIGEST_BYTES:  # it could never match: a truncated paste
            raise KeyFileError(f"{source}:{number}: the hash is {len(digest)} bytes, not {DIGEST_BYTES}")
        records.append(KeyRecord(m["name"], iterations, salt, digest))
    return records


def read_keys(path: str | os.PathLike) -> list[KeyRecord]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc}") from exc
    return parse_keys(text, str(path))


def match(records: list[KeyRecord], key: str) -> str | None:
    """The name of the record ``key`` belongs to, else None. Checks every record (constant-time compares,
    no early exit)."""
    if not key or len(key) > MAX_KEY_CHARS:
        return None
    found = None
    for r in records:
        if hmac.compare_digest(_digest(key, r.salt, r.iterations), r.digest):
            found = r.name
    return found


class KeyStore:
    """The service's view of the key file, re-read when it changes (checked at most every
    ``recheck_s``), so ``drrn keys revoke`` or a rotated Kubernetes secret takes effect without a restart.
    A change that makes the file unreadable or malformed keeps the previous keys and logs an error; the
    file must be valid at startup (:class:`KeyFileError` from the constructor)."""

    def __init__(self, path: str | os.PathLike, recheck_s: float = 2.0) -> None:
        self.path, self.recheck_s = Path(path), recheck_s
        self._stamp = self._stat()
        self.records = read_keys(self.path)
        self._checked = time.monotonic()
        log.info("API keys required: %d key(s) in %s", len(self.records), self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()  # follows symlinks: a Kubernetes secret swaps its ..data link
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def verify(self, key: str) -> str | None:
        """The name of the key's record, or None for a wrong key."""
        now = time.monotonic()
        if now - self._checked >= self.recheck_s:
            self._checked = now
            self._reload_if_changed()
        return match(self.records, key)

    def _reload_if_changed(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.records = read_keys(self.path)
        except KeyFileError as exc:
            log.error("keeping the previous %d API key(s): %s", len(self.records), exc)
            return
        log.info("API key file changed: %d key(s) in %s", len(self.records), self.path)


# --- the file, as `drrn keys` edits it ---------------------------------------------------------------------
def add_key(path: str | os.PathLike, name: str) -> str:
    """Append a new key named ``name`` to the file at ``path`` (created with mode 0600) and return the key,
    which exists nowhere else: the caller shows it once."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if any(r.name == name for r in parse_keys(text, str(path))):
        raise KeyFileError(f"a key named {name!r} is already in {path} (revoke it first)")
    key, record = new_record(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # 0600 from the first byte
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(("\n" if text and not text.endswith("\n") else "") + record.line() + "\n")
    return key


def revoke_key(path: str | os.PathLike, name: str) -> None:
    """Remove the line of the key named ``name`` (comments and other lines kept), atomically, mode 0600."""
    path = Path(path)
    records = read_keys(path)
    if not any(r.name == name for r in records):
        raise KeyFileError(f"no key named {name!r} in {path}")
    kept = [
        ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.strip().startswith(f"{name}:")
    ]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(ln + "\n" for ln in kept))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
