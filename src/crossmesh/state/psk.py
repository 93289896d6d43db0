"""Pre-shared keys of Site-to-Site VPN tunnels: made here, in AWS's alphabet, or read from a file the
mesh file names — never written into the mesh file, the plan or `plan -o json`.

AWS's rule for a tunnel's PreSharedKey (VpnTunnelOptionsSpecification): "Allowed characters are
alphanumeric characters, periods (.), and underscores (_). Must be between 8 and 64 characters in
length and cannot start with zero (0)." A generated key is 32 letters and digits from `secrets`
(190 bits), not starting with 0, so AWS and strongSwan take the same text.
"""

from __future__ import annotations

import re
import secrets
import string
from pathlib import Path

from crossmesh.errors import StateError
from crossmesh.state import disk

PSK_LENGTH = 32
_ALPHABET = string.ascii_letters + string.digits
_AWS_PSK = re.compile(r"[A-Za-z0-9._]{8,64}")


def generate() -> str:
    first = secrets.choice(_ALPHABET.replace("0", ""))
    return first + "".join(secrets.choice(_ALPHABET) for _ in range(PSK_LENGTH - 1))


def problem(text: str) -> str | None:
    """Why AWS would refuse `text` as a pre-shared key, or None."""
    if not _AWS_PSK.fullmatch(text):
        return "AWS takes 8 to 64 letters, digits, periods and underscores"
    if text.startswith("0"):
        return "AWS refuses a key that starts with 0"
    return None


def file_name(connection: str, tunnel: int) -> str:
    """The key's file in the state directory's vpn/ folder (plan/hubs.py's psk_name names the same)."""
    return f"{connection}.tunnel{tunnel}.psk"


def read_reference(base: Path, reference: str) -> str:
    """The key a tunnel's `preSharedKeyFile` names, relative to the mesh file's folder `base`: a regular
    file inside that folder, reached through no link, that only this user can read, holding one key AWS
    takes. StateError (or UnsafePath) naming the file and the fix otherwise."""
    base = base.resolve()
    path = base / reference
    if Path(reference).is_absolute() or not path.resolve().is_relative_to(base):
        raise StateError(f"preSharedKeyFile {reference} leads outside {base} — keep the key file beside the mesh file")
    text = disk.read_private(path).strip()
    why = problem(text)
    if why is not None:
        raise StateError(f"{path} does not hold a pre-shared key: {why} — fix the file")
    return text
