"""API keys and signing secrets: a key's stored hash, a new signing key, development's pair."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path

from .envreader import PREFIX

DEVELOPMENT_SECRETS_FILE = "development-secrets.json"
# A configured key: its name (what logs and rate limits see) and its SHA-256 hex digest.
KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
KEY_HASH = re.compile(r"^[0-9a-f]{64}\Z")


def new_signing_key() -> str:
    """A fresh secret for QCIMAGE_SIGNING_KEYS: 32 random bytes, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest that ``QCIMAGE_API_KEYS`` stores for a client key."""
    return hashlib.sha256(key.encode()).hexdigest()


def development_secrets(directory: Path | None) -> tuple[dict[str, str], str | None]:
    """The demo API key and signing key kept in ``directory``, made by the first caller.

    Workers are forked without the app, so each would otherwise invent its own and
    refuse the links and keys of the others. No directory: fresh ones, this process only.
    The second value says why the kept ones could not be used, if they could not.
    """
    fresh = {"api_key": "demo-" + secrets.token_urlsafe(18),
             "signing_key": new_signing_key()}
    if directory is None:
        return fresh, None
    path = directory / DEVELOPMENT_SECRETS_FILE
    try:
        if not path.exists():
            _create_whole(path, json.dumps(fresh))
        stored = json.loads(path.read_text())
        return {name: str(stored[name]) for name in fresh}, None
    except OSError as error:
        return fresh, (f"cannot keep development secrets in {path} ({error.strerror}): "
                       f"set {PREFIX}CACHE_DIR to a folder this user can write")
    except (ValueError, KeyError, TypeError):
        return fresh, f"{path} is damaged: delete it and development invents new secrets"


def _create_whole(path: Path, text: str) -> None:
    """Write ``path`` readable by this user only, unless it exists; never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    try:
        # link() fails when the file exists: the first of several workers wins, whole.
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
