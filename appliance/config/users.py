"""Password hashes for the users of the faces: PBKDF2-HMAC-SHA256, never plain text.

The stored form is ``pbkdf2_sha256$<iterations>$<salt>$<base64 of the 32-byte key>``, the
same layout Django uses, so a hash made by either verifies with the other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string

ALGORITHM = "pbkdf2_sha256"
#: OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
DEFAULT_ITERATIONS = 600_000
#: Hashes with fewer iterations are rejected by the configuration check.
MIN_ITERATIONS = 100_000
#: Guards `verify_password` against a hash that would take minutes to check.
MAX_ITERATIONS = 10_000_000

HASH_SHAPE = "pbkdf2_sha256$<iterations>$<salt>$<base64 hash>"

_HASH_RE = re.compile(
    r"pbkdf2_sha256\$(?P<iterations>[0-9]{1,9})\$(?P<salt>[A-Za-z0-9./+_-]{8,128})"
    r"\$(?P<hash>[A-Za-z0-9+/]{43}=)"
)
_SALT_ALPHABET = string.ascii_letters + string.digits


def _derive(password: str, salt: str, iterations: int) -> str:
    key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return base64.b64encode(key).decode("ascii")


def hash_password(
    password: str, iterations: int = DEFAULT_ITERATIONS, *, salt: str | None = None
) -> str:
    """Hash `password` with a fresh random salt (or `salt`, for reproducible fixtures)."""
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be in {MIN_ITERATIONS} .. {MAX_ITERATIONS}")
    if not password:
        raise ValueError("the password is empty")
    if salt is None:
        salt = "".join(secrets.choice(_SALT_ALPHABET) for _ in range(22))
    elif re.fullmatch(r"[A-Za-z0-9./+_-]{8,128}", salt) is None:
        raise ValueError("the salt must be 8 .. 128 characters of A-Z a-z 0-9 . / + _ -")
    return f"{ALGORITHM}${iterations}${salt}${_derive(password, salt, iterations)}"


def password_hash_problem(value: str) -> str | None:
    """Why `value` is not an acceptable stored hash (message tail), or None when it is."""
    match = _HASH_RE.fullmatch(value)
    if match is None:
        return f"is not a password hash; allowed: {HASH_SHAPE}, made with hash_password()"
    iterations = int(match["iterations"])
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        return (
            f"uses {iterations} iterations; allowed {MIN_ITERATIONS} .. {MAX_ITERATIONS}"
            " (make a new hash with hash_password())"
        )
    return None


def verify_password(password: str, password_hash: str) -> bool:
    """True when `password` matches `password_hash`; False for a wrong password or a bad hash."""
    match = _HASH_RE.fullmatch(password_hash)
    if match is None:
        return False
    iterations = int(match["iterations"])
    if not 1 <= iterations <= MAX_ITERATIONS:
        return False
    candidate = _derive(password, match["salt"], iterations)
    return hmac.compare_digest(candidate.encode(), match["hash"].encode())
