"""Ed25519 signature verification in pure Python (RFC 8032 section 5.1.7), standard library only.

Signed tree heads and receipts must be checkable where only the standard library is installed, so
verification does not need the ``cryptography`` package (signing does: ``hybridlog.note``). The
check is the strict one that Wycheproof's vectors expect:

* the public key and ``R`` must be canonical encodings (``y < p``; no "negative zero" ``x``);
* ``S`` must be below the group order ``L`` (no malleable signatures);
* the equation is the cofactorless ``[S]B == R + [k]A``, checked by encoding ``[S]B - [k]A`` and
  comparing it with ``R``'s bytes.

Not constant time, and it need not be: it handles public data only (keys, messages, signatures).
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]
"""Extended homogeneous coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z."""

IDENTITY: Point = (0, 1, 1, 0)


def _add(p: Point, q: Point) -> Point:
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _multiply(scalar: int, point: Point) -> Point:
    result = IDENTITY
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _encode(point: Point) -> bytes:
    x, y, z, _ = point
    zinv = pow(z, P - 2, P)
    x, y = x * zinv % P, y * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(encoded: bytes) -> Point | None:
    """The point ``encoded`` stands for, or None if it is not a canonical encoding of one."""
    value = int.from_bytes(encoded, "little")
    sign, y = value >> 255, value & ((1 << 255) - 1)
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P  # a candidate square root of u/v
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    if v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return x, y, 1, x * y % P


_BASE_Y = 4 * pow(5, P - 2, P) % P
BASE = _decode(_BASE_Y.to_bytes(32, "little"))
assert BASE is not None


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decode(public_key)
    if a is None or _decode(signature[:32]) is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little") % L
    assert BASE is not None
    x, y, z, t = _multiply(k, a)
    check = _add(_multiply(s, BASE), ((P - x) % P, y, z, (P - t) % P))  # [S]B - [k]A
    return _encode(check) == signature[:32]


def public_key(seed: bytes) -> bytes:
    """The public key of the 32-byte private key ``seed`` (RFC 8032 section 5.1.5); for tests and
    for naming a key, never for signing."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 private key is 32 bytes")
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    assert BASE is not None
    return _encode(_multiply(scalar, BASE))
