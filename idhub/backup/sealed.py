"""The sealed backup file: a small authenticated header, then the body in AES-256-GCM chunks.

Layout::

    magic "IDHUBBK1" | header length (4 bytes, big-endian) | header (JSON, UTF-8) | chunk 0 | chunk 1 | ...

The header is plaintext (an operator can see what a file holds without the key: format, creation time,
schema revision, dialect, scope) and is bound to every chunk as associated data, so changing it fails
the first chunk. The body is cut into chunks of :data:`CHUNK_SIZE` bytes (the last one shorter, possibly
empty), each sealed with AES-256-GCM under a key derived from the master key and the file's random salt.
The nonce is the STREAM construction's (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-
Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015, §7): a random 7-byte prefix, a 4-byte
chunk counter and a 1-byte last-chunk flag. A flipped byte fails its chunk's tag; reordered chunks fail
their counters; a file cut short at a chunk boundary ends on a chunk not sealed as the last one; bytes
appended after the last chunk are refused.

Hand-written framing over the ``cryptography`` package's AEAD: no well-kept Python library offers a
streaming AEAD file format (``age`` and ``tink`` streaming are not dependencies here, and neither knows
our header).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from idhub.crypto.encryption import derive_key
from idhub.errors import Invalid

MAGIC = b"IDHUBBK1"
FORMAT_VERSION = 1
CHUNK_SIZE = 1 << 20  # plaintext bytes per chunk
_TAG = 16
_MAX_HEADER = 64 * 1024
_MAX_CHUNKS = 1 << 32  # the counter's 4 bytes


class BackupFileError(Invalid):
    """The file is not a backup, was changed, cut short, or sealed under another master key."""


WRONG_KEY = "wrong master key or damaged file: the backup does not open under this IDHUB_MASTER_KEY"


def _file_key(master_key: bytes, salt: bytes) -> bytes:
    return derive_key(master_key, "backup", salt=salt)


def _key_check(key: bytes) -> str:
    """Return a short MAC that tells a wrong master key apart from a damaged body (reveals nothing of the key)."""
    return hmac.new(key, b"idhub-backup-key-check", hashlib.sha256).hexdigest()[:32]


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


@dataclass(frozen=True, slots=True)
class Header:
    """What the plaintext header says (authenticated, not secret)."""

    fields: dict[str, Any]
    raw: bytes

    @property
    def revision(self) -> str | None:
        """Return the Alembic revision of the database the backup was taken from."""
        value = self.fields.get("revision")
        return str(value) if value is not None else None

    @property
    def tenant(self) -> str | None:
        """Return the slug of the tenant a scoped backup holds (``None``: every tenant)."""
        scope = self.fields.get("scope")
        return str(scope["tenant"]) if isinstance(scope, dict) else None


class SealedWriter:
    """Write a backup file: the header at once, then body bytes sealed a chunk at a time."""

    def __init__(self, out: BinaryIO, master_key: bytes, fields: dict[str, Any]) -> None:
        salt = os.urandom(16)
        self._prefix = os.urandom(7)
        self._aead = AESGCM(key := _file_key(master_key, salt))
        header = {
            "format": FORMAT_VERSION,
            **fields,
            "cipher": "AES-256-GCM-STREAM",
            "chunk_size": CHUNK_SIZE,
            "salt": base64.b64encode(salt).decode(),
            "nonce_prefix": base64.b64encode(self._prefix).decode(),
            "key_check": _key_check(key),
        }
        self.header = orjson.dumps(header)
        self._out = out
        self._buffer = bytearray()
        self._counter = 0
        self.size = 0
        self._write(MAGIC + struct.pack(">I", len(self.header)) + self.header)

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.size += len(data)

    def _seal(self, chunk: bytes, last: bool) -> None:
        if self._counter >= _MAX_CHUNKS:
            raise BackupFileError("backup too large for one file")
        self._write(self._aead.encrypt(_nonce(self._prefix, self._counter, last), chunk, self.header))
        self._counter += 1

    def write(self, data: bytes) -> None:
        """Add body bytes; full chunks are sealed and written at once."""
        self._buffer += data
        while len(self._buffer) > CHUNK_SIZE:  # keep at least one byte back: the last chunk is sealed apart
            self._seal(bytes(self._buffer[:CHUNK_SIZE]), last=False)
            del self._buffer[:CHUNK_SIZE]

    def close(self) -> None:
        """Seal the rest as the last chunk (possibly empty) and flush."""
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()
        self._out.flush()


def read_header(source: BinaryIO) -> Header:
    """Read and parse the plaintext header; a file that is no backup is refused here."""
    start = source.read(len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or start[: len(MAGIC)] != MAGIC:
        raise BackupFileError("not an idhub backup file (bad magic)")
    (length,) = struct.unpack(">I", start[len(MAGIC) :])
    if length > _MAX_HEADER:
        raise BackupFileError("damaged backup file (header too long)")
    raw = source.read(length)
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BackupFileError("damaged backup file (header is not JSON)") from None
    if not isinstance(fields, dict) or fields.get("format") != FORMAT_VERSION:
        raise BackupFileError(f"unsupported backup format {fields.get('format') if isinstance(fields, dict) else '?'}")
    return Header(fields, raw)


def open_chunks(source: BinaryIO, master_key: bytes, header: Header) -> Iterator[bytes]:
    """Yield the body's plaintext chunk by chunk, each checked before it is yielded.

    Nothing unchecked ever leaves: a consumer that stops at the first error has only seen authentic
    bytes, in order (a restore rolls back whatever it inserted).
    """
    try:
        salt = base64.b64decode(header.fields["salt"])
        prefix = base64.b64decode(header.fields["nonce_prefix"])
        chunk_size = int(header.fields["chunk_size"])
    except (KeyError, ValueError, TypeError):
        raise BackupFileError("damaged backup file (header incomplete)") from None
    if len(prefix) != 7 or not 0 < chunk_size <= 64 * CHUNK_SIZE:
        raise BackupFileError("damaged backup file (header incomplete)")
    key = _file_key(master_key, salt)
    if not hmac.compare_digest(str(header.fields.get("key_check", "")), _key_check(key)):
        raise BackupFileError(WRONG_KEY)
    aead = AESGCM(key)
    sealed_size = chunk_size + _TAG
    counter = 0
    current = source.read(sealed_size)
    while True:
        following = source.read(sealed_size) if len(current) == sealed_size else b""
        last = not following
        if len(current) < _TAG:
            raise BackupFileError("damaged backup file (cut short)")
        try:
            plain = aead.decrypt(_nonce(prefix, counter, last), current, header.raw)
        except InvalidTag:
            if counter == 0:
                raise BackupFileError(WRONG_KEY) from None
            raise BackupFileError(f"damaged backup file (chunk {counter} fails its integrity check)") from None
        yield plain
        if last:
            return
        counter += 1
        current = following


def lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Split a body into its lines (records never contain a raw newline: JSON escapes them)."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        parts = data.split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest
