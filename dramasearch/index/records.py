"""JSON records that carry their own checksum, so a flipped digit is found instead of believed.

Every JSON file of an index (the marker, generations, segment.json, shard sidecars) is written
through `record_bytes` and read through `read_record`. Without the checksum a damaged row
count or offset could still parse as valid JSON and be trusted.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import IndexDamagedError

CHECKSUM = "record_sha256"


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def as_read(data: dict) -> dict:
    """`data` as it reads back from JSON (tuples become lists), to compare with a stored record."""
    return json.loads(json.dumps(data))


def record_bytes(data: dict, indent: int | None = None) -> bytes:
    """`data` as JSON with a checksum of its canonical form."""
    body = as_read({k: v for k, v in data.items() if k != CHECKSUM})
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    return json.dumps({**body, CHECKSUM: digest}, indent=indent).encode()


def parse_record(raw: bytes, path: Path, what: str) -> dict:
    """The record without its checksum; IndexDamagedError naming `path` when it does not check out."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexDamagedError(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or CHECKSUM not in data:
        raise IndexDamagedError(f"{path}: {what} has no checksum: damaged, or written by another program")
    body = {k: v for k, v in data.items() if k != CHECKSUM}
    if hashlib.sha256(_canonical(body)).hexdigest() != data[CHECKSUM]:
        raise IndexDamagedError(f"{path}: {what} fails its checksum (damaged or edited by hand)")
    return body


def read_record(path: Path, what: str) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IndexDamagedError(f"{path}: {what} is missing") from None
    return parse_record(raw, path, what)
