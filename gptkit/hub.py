"""Files of a Hugging Face model, from a local folder or the hub: the local cache first, the network only
when they are not there, and a machine that cannot reach the hub told so in seconds, not after minutes of
retries."""

import json
import os
import socket
from urllib.parse import urlparse

from gptkit.errors import UserError

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")

def hub_reachable(timeout=5.0):
    """Whether the hub's host answers at all: a refused or unresolvable host costs milliseconds here,
    where huggingface_hub retries for minutes before it gives up."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_file(repo, filename, required=True):
    """Path of a file of a hub repository: from the cache if it is there, else downloaded (then cached).
    None when it is not required and the repository lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    try:
        return hf_hub_download(repo, filename, local_files_only=True)
    except (LocalEntryNotFoundError, EntryNotFoundError, OSError):
        pass
    if not hub_reachable():
        if not required:
            return None
        raise UserError(f"{repo!r} is not in the local Hugging Face cache and the hub cannot be reached (offline, "
                        f"or HF_HUB_OFFLINE is set); connect to the internet once (files are cached), or give a "
                        f"local folder")
    try:
        return hf_hub_download(repo, filename)
    except EntryNotFoundError:
        if required:
            raise UserError(f"the hub repository {repo!r} has no {filename}") from None
        return None
    except Exception as e:  # repository not found, gated, network errors: many types across versions
        if not required and "404" in str(e):
            return None
        raise UserError(f"could not fetch {filename} of {repo!r} from the Hugging Face hub "
                        f"({str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}); "
                        f"check the name ({', '.join(GPT2_NAMES)}, or a hub id such as Qwen/Qwen2.5-0.5B; a gated model "
                        f"such as meta-llama's needs `hf auth login` with access granted) and the connection, or give a "
                        f"local folder") from None


def local_or_hub(name_or_path, filename, required=True):
    """Path of a file of a local folder (None where it lacks it) or of a hub repository (hub_file)."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        return path if os.path.isfile(path) else None
    return hub_file(name_or_path, filename, required)


def weight_shards(name_or_path):
    """Paths of the safetensors shards a model.safetensors.index.json lists, or None without an index."""
    index = local_or_hub(name_or_path, "model.safetensors.index.json", required=False)
    if not index:
        return None
    try:
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{index} is not a readable shard index ({type(e).__name__}); download the model "
                        f"again") from None
    return [local_or_hub(name_or_path, n) for n in names]
