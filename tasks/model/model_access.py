"""Whether this process can load a model, checked before a run schedules any work.

A gated or private hub model without a usable token otherwise fails only when a worker first
loads it: after stage 1, on a GPU node the autoscaler started for it, with a traceback per trial.
The check asks the hub the way the loaders will (huggingface_hub, with HF_TOKEN or the saved
login, honouring HF_HUB_OFFLINE and the local cache), so what passes here loads there too.
"""

from __future__ import annotations

from tasks.errors import LayercutError
from tasks.model.models import model_kind

HUB = "https://huggingface.co"
# Seconds to wait for the hub's first answer: huggingface_hub waits forever by default, and a
# network that drops packets (a proxy, a firewall) would hang the run before it starts.
HUB_TIMEOUT_S = 15
# Where the README tells cluster users how to pass a token to every node.
TOKEN_HELP = "on a cluster, pass it to every node (README, 'Gated and private models')"


def _cached(repo_id: str, revision: str | None) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s config at ``revision`` (the file
    every loader reads first; a download that stopped midway fails later, at load time)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_model_access(name_or_path: str, revision: str | None = None) -> None:
    """Return when ``name_or_path`` can be loaded here: a built-in model whose package is
    installed, an existing local GGUF file or model directory, or a hub repository (at
    ``revision``) that the current token can read (one request to the hub, two for a gated
    model), or that the local cache holds when HF_HUB_OFFLINE is set or the hub does not answer
    within HUB_TIMEOUT_S seconds.

    Raises:
        LayercutError: one line naming the model and the fix: set HF_TOKEN, accept the model's
            license on its hub page, pre-download it, or fix a local path or id.
    """
    if model_kind(name_or_path) != "hub":
        return  # local: model_kind checked it exists
    import huggingface_hub
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo = name_or_path
    if huggingface_hub.is_offline_mode():
        if _cached(repo, revision):
            return
        raise LayercutError(
            f"model {repo} is not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) "
            f"and HF_HUB_OFFLINE is set: pre-download it where the hub is reachable (`hf download {repo}` "
            "with the same HF_HOME), or unset HF_HUB_OFFLINE")
    has_token = huggingface_hub.get_token() is not None
    api = huggingface_hub.HfApi()
    try:
        info = api.model_info(repo, revision=revision, timeout=HUB_TIMEOUT_S)
        if info.gated:  # its metadata is public: whether this token may download it is asked apart
            api.auth_check(repo)
        return
    except GatedRepoError:  # before RepositoryNotFoundError: it is a subclass
        if has_token:
            raise LayercutError(
                f"model {repo} is gated and the Hugging Face token in use has no access: accept its "
                f"license on {HUB}/{repo} with that token's account, or set HF_TOKEN to a token "
                f"that has access; {TOKEN_HELP}") from None
        raise LayercutError(
            f"model {repo} is gated and no Hugging Face token is set: accept its license on "
            f"{HUB}/{repo}, then set HF_TOKEN to a read token of that account; {TOKEN_HELP}") from None
    except RevisionNotFoundError:
        raise LayercutError(f"model {repo} has no revision {revision!r} on the Hugging Face hub: "
                            "check model.revision") from None
    except RepositoryNotFoundError:
        fix = ("check the id, or set HF_TOKEN to a token that can read it" if not has_token
               else "check the id, and that the token in use (HF_TOKEN or `hf auth login`) can read it")
        raise LayercutError(f"model {repo} was not found on the Hugging Face hub (a typo, or a private "
                            f"repository): {fix}; {TOKEN_HELP}") from None
    except HfHubHTTPError as error:  # the hub answered with another refusal (an invalid token: 401)
        raise LayercutError(f"the Hugging Face hub refused access to model {repo} ({_first_line(error)}): "
                            f"check HF_TOKEN; {TOKEN_HELP}") from None
    except Exception as error:  # noqa: BLE001 - no answer (DNS, proxy, timeout): the cache may do
        if _cached(repo, revision):
            return
        raise LayercutError(
            f"cannot reach the Hugging Face hub to check model {repo} ({_first_line(error)}) and it is "
            "not in the local cache: check the network, or pre-download it and set HF_HUB_OFFLINE=1") from None
