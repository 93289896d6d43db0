"""WireGuard keys: X25519 with `cryptography`, base64 exactly as `wg genkey`/`wg pubkey` print them."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat


def generate_private_key() -> str:
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode("ascii")


def public_key(private_key_b64: str) -> str:
    raw = base64.b64decode(private_key_b64.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError("a WireGuard private key is 32 bytes, base64-encoded")
    key = X25519PrivateKey.from_private_bytes(raw)
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def is_valid_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32 and len(text) == 44
    except ValueError:
        return False
