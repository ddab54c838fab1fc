"""Whether the Hugging Face Hub can be reached: a few seconds' probe instead of the hub client's
minute of retries, shared by the model loader and the corpus reader."""

from __future__ import annotations

import os
import socket
import urllib.request
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline_by_choice() -> bool:
    """The user set one of the Hugging Face offline variables."""
    return any(_env_true(name) for name in OFFLINE_VARIABLES)


def reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the hub (or its proxy) opens within `timeout` seconds."""
    if offline_by_choice():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    target = urlparse(proxy) if proxy else endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def token_set() -> bool:
    """A Hugging Face token is configured (environment or the hub client's token file)."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token
    except ImportError:
        return False
    return get_token() is not None
