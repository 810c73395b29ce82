"""Argument encryption: Fernet for one key, MultiFernet for rotation (first key encrypts)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ArgumentDecryptionError

KeyLike = str | bytes


class ArgumentCipher:
    """Encrypts task payloads with the first key; decrypts with any of them."""

    def __init__(self, keys: KeyLike | Sequence[KeyLike]) -> None:
        key_list = [keys] if isinstance(keys, str | bytes) else list(keys)
        if not key_list:
            raise ValueError("encrypt_args_key needs at least one key")
        fernets = []
        for position, key in enumerate(key_list):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # Never echo the key: say which one and what shape a key has.
                raise ValueError(
                    f"encrypt_args_key[{position}] is not a valid Fernet key (expected 32 "
                    "url-safe base64-encoded bytes, e.g. from Fernet.generate_key())"
                ) from None
        self._cipher = MultiFernet(fernets)
        self._first = fernets[0]
        self.key_count = len(fernets)
        first = key_list[0]
        raw = first.encode() if isinstance(first, str) else first
        # Names the encrypting key (key rotation's resume check) without revealing it.
        self.key_id = hashlib.sha256(raw).hexdigest()[:12]

    def encrypt(self, data: bytes) -> bytes:
        return self._cipher.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._cipher.decrypt(token)
        except InvalidToken:
            raise ArgumentDecryptionError(
                "the task's encrypted arguments cannot be decrypted with any configured key "
                "(wrong or rotated-out key)"
            ) from None

    def is_current(self, token: bytes) -> bool:
        """True when ``token`` is already encrypted with the first key."""
        try:
            self._first.decrypt(token)
        except InvalidToken:
            return False
        return True

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt ``token`` with the first key; raises ``ArgumentDecryptionError``."""
        try:
            return self._cipher.rotate(token)
        except InvalidToken:
            raise ArgumentDecryptionError(
                "payload cannot be decrypted with any configured key"
            ) from None

    def __repr__(self) -> str:
        return f"ArgumentCipher(keys=<{self.key_count} hidden>)"
