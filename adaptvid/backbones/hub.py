"""The Hugging Face hub as the backbone loaders meet it: one reachability check per process before the
first download, offline mode switched on for every hub library when it fails (so a load answers from
the local cache or fails at once instead of retrying for ~50 s), and the advice a failed download gets."""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import urllib.request
from urllib.parse import urlsplit

# Without network, huggingface_hub retries each request for ~50 s before giving up. Before the first hub
# download of the process the hub's host is checked once; when it cannot be reached, the hub libraries
# are put in offline mode for the rest of the process so that they answer from the local cache at once.

HUB_CHECK_TIMEOUT = 3.0   # seconds
_HUB_STATE: dict = {}     # once checked: reachable (bool), endpoint, address
_TRUE = {"1", "ON", "YES", "TRUE"}   # huggingface_hub's spelling of a true environment variable


def _offline_requested() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is on: the libraries answer from the local cache only."""
    from huggingface_hub import constants

    if any((os.environ.get(var) or "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        constants.HF_HUB_OFFLINE = True   # set after huggingface_hub was imported: make it count as well
    return bool(constants.HF_HUB_OFFLINE)


def _hub_address() -> tuple[str, str, int]:
    """The hub endpoint (honours HF_ENDPOINT) and the host and port a request to it connects to first
    (the proxy's, where one is configured for it)."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    parts = urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host = proxy_parts.hostname or host
        port = proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
    return endpoint, host, port


def _probe_hub(host: str, port: int, timeout: float = HUB_CHECK_TIMEOUT) -> bool:
    """Whether a TCP connection to host:port opens within ``timeout`` seconds (name lookup included)."""
    answer: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=connect, name="adaptvid-hub-check", daemon=True)
    thread.start()
    thread.join(timeout)   # a name lookup has no timeout of its own: give up on it with the connect
    return bool(answer and answer[0])


def _switch_hub_offline() -> None:
    """Offline mode for huggingface_hub and the libraries that download through it, for the rest of the process.

    huggingface_hub reads HF_HUB_OFFLINE from the environment once, at import, into ``constants.HF_HUB_OFFLINE``;
    its ``is_offline_mode()`` (which transformers calls before each lookup, and whose request hook refuses every
    hub request at once, so that ``hf_hub_download`` answers from the cache) reads that constant at call time.
    timm and open_clip download through ``hf_hub_download``. The environment variable covers a huggingface_hub
    imported later (and child processes); transformers 4 kept its own copy, ``transformers.utils.hub._is_offline_mode``.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if isinstance(getattr(transformers_hub, "_is_offline_mode", None), bool):
        transformers_hub._is_offline_mode = True


def _prepare_hub() -> None:
    """Call before a download from the Hugging Face hub: checks the hub once per process (unless offline mode
    is on already) and switches the hub libraries to offline mode when it cannot be reached."""
    if "reachable" in _HUB_STATE or _offline_requested():
        return
    endpoint, host, port = _hub_address()
    reachable = _probe_hub(host, port)
    _HUB_STATE.update(reachable=reachable, endpoint=endpoint, address=f"{host}:{port}")
    if not reachable:
        _switch_hub_offline()
        logging.getLogger("adaptvid").warning(
            "the Hugging Face hub (%s) is unreachable (no connection to %s:%s within %g s): hub downloads are off "
            "for this process, weights come from the local cache only", endpoint, host, port, HUB_CHECK_TIMEOUT)


_WEIGHTS_FIX = ("pass the local file or folder with --weights PATH (Python: weights='PATH'), "
                "or use weights='random' for a randomly initialised tower.")


def _hub_advice() -> str:
    """What to do about a failed hub download, from what this process knows about the hub."""
    if _HUB_STATE.get("reachable") is False:
        return (f"The Hugging Face hub ({_HUB_STATE['endpoint']}) is unreachable from this machine (a connection "
                f"check to {_HUB_STATE['address']} failed), so the hub libraries were switched to offline mode for "
                "this process and only the local cache was searched. Download the weights on a machine with access "
                "and " + _WEIGHTS_FIX)
    if _offline_requested():
        return ("HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched. Unset it to download, "
                "or " + _WEIGHTS_FIX)
    return "If the hub is unreachable, download the weights elsewhere and " + _WEIGHTS_FIX
