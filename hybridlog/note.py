"""C2SP signed notes (``c2sp.org/signed-note``), the format of Go's ``golang.org/x/mod/sumdb/note``.

A signed note is a text, a blank line, then one signature line per signer::

    <text: one or more lines, each ending in \\n>
    \\n
    — <key name> <base64(key ID || signature)>\\n

The text ends at the note's *last* blank line (a text may hold blank lines of its own). A key's
ID is the first 4 bytes of ``SHA-256(name || "\\n" || type || public key)``, big-endian. Keys are
written as Go writes them:

* verifier key: ``<name>+<key ID, 8 hex digits>+<base64(type || public key)>``;
* signer key: ``PRIVATE+KEY+<name>+<key ID>+<base64(type || private key)>``.

Two key types are known. Type ``0x01`` is Ed25519 over the text. Type ``0x04`` is a witness's
cosignature (``c2sp.org/tlog-cosignature``, ``cosignature/v1``): the signature is ``key ID ||
8-byte big-endian timestamp || Ed25519(message)``, where the message is ``"cosignature/v1\\n" +
"time <timestamp>\\n" + text``. Signatures by keys the verifier was not given are skipped, as Go
does; a signature by a given key that does not verify is an error.

Verifying needs only the standard library (``hybridlog.ed25519``); signing and making keys need
the ``cryptography`` package (``pip install 'hybridlog[sign]'``), whose Ed25519 is constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import hybridlog.ed25519 as ed25519
from hybridlog.errors import ProofError

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
DASH = "\u2014 "
MAX_SIGNATURES = 100  # as Go: a note with more signature lines is refused, not parsed
PRIVATE_PREFIX = "PRIVATE+KEY+"

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A public key that verifies notes: its name, ID, type and raw 32-byte key."""

    name: str
    key_id: int
    key_type: int
    public_key: bytes

    def __str__(self) -> str:
        blob = base64.b64encode(bytes((self.key_type,)) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line of a note: the signer's name, the key ID and the signature bytes."""

    name: str
    key_id: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class OpenedNote:
    """A note whose signatures were checked: its text, and the keys whose signatures verified."""

    text: str
    verified: list[VerifierKey]
    unverified: list[Signature]
    """Signatures by keys the verifier was not given (not checked)."""


def key_id(name: str, key_type: int, public_key: bytes) -> int:
    """The 32-bit ID of a key: the first 4 bytes of SHA-256(name || "\\n" || type || key)."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes((key_type,)) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _is_control(c: str) -> bool:
    return c < " " or c == "\x7f"


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() or _is_control(c) for c in name):
        raise ProofError(f"not a key name: {name!r} (non-empty, no spaces, no '+')")


def _decode64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProofError(f"{what} is not base64: {text!r}") from e


def parse_verifier_key(vkey: str) -> VerifierKey:
    """A verifier key from its text form; ProofError if malformed or its ID does not match."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise ProofError(f"not a verifier key (name+id+key): {vkey!r}")
    name, id_hex, blob = parts
    _check_name(name)
    if len(id_hex) != 8 or any(c not in "0123456789abcdef" for c in id_hex):
        raise ProofError(f"verifier key {name}: the key ID is not 8 lowercase hex digits")
    raw = _decode64(blob, f"verifier key {name}")
    if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
        raise ProofError(f"verifier key {name}: not an Ed25519 key (type 0x01 or 0x04, 32 bytes)")
    key = VerifierKey(name, int(id_hex, 16), raw[0], raw[1:])
    if key_id(name, key.key_type, key.public_key) != key.key_id:
        raise ProofError(f"verifier key {name}: the key ID {id_hex} is not the ID of its key")
    return key


def _split(note: str) -> tuple[str, list[Signature]]:
    """The text and the signature lines of a note; ProofError if it is not a well-formed one."""
    if not note.endswith("\n"):
        raise ProofError("a signed note ends with a newline")
    at = note.rfind("\n\n")
    if at < 0:
        raise ProofError("a signed note has a blank line between its text and its signatures")
    text, lines = note[: at + 1], note[at + 2 : -1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ProofError(f"a signed note has more than {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(DASH):
            raise ProofError(f"not a signature line: {line!r}")
        name, space, blob = line[len(DASH) :].rpartition(" ")
        if not space:
            raise ProofError(f"not a signature line: {line!r}")
        _check_name(name)
        raw = _decode64(blob, f"the signature of {name}")
        if len(raw) < 5:
            raise ProofError(f"the signature of {name} is too short")
        signatures.append(Signature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
    _check_text(text)
    return text, signatures


def _check_text(text: str) -> None:
    if not text.endswith("\n") or text == "\n":
        raise ProofError("a note's text is not empty and ends with a newline")
    if any(c != "\n" and _is_control(c) for c in text):
        raise ProofError("a note's text holds a control character")


def _verifies(key: VerifierKey, text: str, signature: bytes) -> bool:
    if key.key_type == ED25519:
        return ed25519.verify(key.public_key, text.encode(), signature)
    if len(signature) != 72:  # COSIGNATURE_V1: timestamp || Ed25519 signature
        return False
    timestamp = int.from_bytes(signature[:8], "big")
    message = f"cosignature/v1\ntime {timestamp}\n{text}".encode()
    return ed25519.verify(key.public_key, message, signature[8:])


def open_note(note: str, vkeys: list[str] | list[VerifierKey]) -> OpenedNote:
    """Check the signatures of ``note`` by the keys ``vkeys``: ProofError if the note or a key is
    malformed, if a signature by a given key does not verify, or if none of the keys signed it."""
    keys = [k if isinstance(k, VerifierKey) else parse_verifier_key(k) for k in vkeys]
    by_id = {(k.name, k.key_id): k for k in keys}
    text, signatures = _split(note)
    verified: list[VerifierKey] = []
    unverified: list[Signature] = []
    for sig in signatures:
        key = by_id.get((sig.name, sig.key_id))
        if key is None:
            unverified.append(sig)
        elif not _verifies(key, text, sig.signature):
            raise ProofError(f"the signature of {sig.name} ({sig.key_id:08x}) does not verify")
        elif key not in verified:
            verified.append(key)
    if not verified:
        raise ProofError("no signature on the note is by a known key")
    return OpenedNote(text, verified, unverified)


def verify_note(note: str, vkeys: list[str] | list[VerifierKey]) -> list[str]:
    """The names of the keys in ``vkeys`` whose signatures on ``note`` verified (ProofError when
    none did, or when the note or a key is malformed)."""
    return [key.name for key in open_note(note, vkeys).verified]


def note_text(note: str) -> str:
    """The text of a signed note, signatures not checked (to read what a note says before
    choosing the keys to check it with)."""
    return _split(note)[0]


# --- signing (needs the cryptography package) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignerKey:
    """A private key that signs notes (Ed25519)."""

    name: str
    seed: bytes

    @property
    def verifier(self) -> VerifierKey:
        """The key that verifies this key's signatures."""
        public = _private_key(self.seed).public_key().public_bytes_raw()
        return VerifierKey(self.name, key_id(self.name, ED25519, public), ED25519, public)

    def __str__(self) -> str:
        blob = base64.b64encode(bytes((ED25519,)) + self.seed).decode()
        return f"{PRIVATE_PREFIX}{self.name}+{self.verifier.key_id:08x}+{blob}"

    def __repr__(self) -> str:  # never print the private key by accident
        return f"SignerKey(name={self.name!r})"


def _private_key(seed: bytes) -> Ed25519PrivateKey:
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError as e:
        raise ProofError("signing needs the cryptography package", hint="pip install 'hybridlog[sign]'") from e
    return Ed25519PrivateKey.from_private_bytes(seed)


def parse_signer_key(skey: str) -> SignerKey:
    """A signer key from its text form; ProofError if malformed or its ID does not match."""
    text = skey.strip()
    if not text.startswith(PRIVATE_PREFIX):
        raise ProofError("not a signer key (PRIVATE+KEY+name+id+key)")
    parts = text[len(PRIVATE_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise ProofError("not a signer key (PRIVATE+KEY+name+id+key)")
    name, id_hex, blob = parts
    _check_name(name)
    raw = _decode64(blob, f"signer key {name}")
    if len(raw) != 33 or raw[0] != ED25519:
        raise ProofError(f"signer key {name}: not an Ed25519 key (type 0x01, 32 bytes)")
    key = SignerKey(name, raw[1:])
    if f"{key.verifier.key_id:08x}" != id_hex:
        raise ProofError(f"signer key {name}: the key ID {id_hex} is not the ID of its key")
    return key


def generate_key(name: str) -> tuple[str, str]:
    """A new Ed25519 key named ``name``: (signer key, verifier key), both in Go's text formats."""
    _check_name(name)
    key = SignerKey(name, os.urandom(32))
    return str(key), str(key.verifier)


def sign(text: str, key: SignerKey) -> str:
    """One signature line of ``key`` over ``text`` (with its newline)."""
    private = _private_key(key.seed)
    signature = private.sign(text.encode())
    blob = base64.b64encode(key.verifier.key_id.to_bytes(4, "big") + signature).decode()
    return f"{DASH}{key.name} {blob}\n"


def sign_note(text: str, skey: str | SignerKey) -> str:
    """``text`` signed by ``skey``: the text, a blank line, and the key's signature line."""
    _check_text(text)
    key = skey if isinstance(skey, SignerKey) else parse_signer_key(skey)
    return f"{text}\n{sign(text, key)}"
