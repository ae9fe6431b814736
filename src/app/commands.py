"""Bodies of the `pull` and `models` subcommands: thin wrappers over the HuggingFaceStore."""

from __future__ import annotations

import sys
from typing import TextIO

from ..adapters.store.hf_store import HuggingFaceStore
from ..domain.errors import ModelNotFound, ModelUnavailable

EXIT_OK = 0
EXIT_UNAVAILABLE = 1  # offline, hub unreachable, gated, conversion failed
EXIT_NOT_FOUND = 2  # not a model name, or the hub has no such repo


def pull(store: HuggingFaceStore, name: str, out: TextIO = sys.stdout) -> int:
    """Resolve `name` and make it local (downloading with the hub's progress bars on stderr, or
    converting a GGUF file), then print the local model directory.

    Exit codes: 0 done; 1 the model exists but cannot be made local now (offline, hub
    unreachable, gated repo, conversion failure); 2 no such model (bad name or unknown repo).
    On failure the error message goes to `out`, prefixed with ``error:``.

    A local path is allowed here whatever the server would allow: on the command line, the
    operator named it."""
    store.allow(name)
    try:
        ref = store.fetch(store.resolve(name))
    except ModelNotFound as exc:
        print(f"error: {exc.message}", file=out)
        return EXIT_NOT_FOUND
    except ModelUnavailable as exc:
        print(f"error: {exc.message}", file=out)
        return EXIT_UNAVAILABLE
    print(ref.source, file=out)
    return EXIT_OK


def list_local(store: HuggingFaceStore, out: TextIO = sys.stdout) -> int:
    """Print a table of the models the server may be asked for: id, aliases, and whether it is
    available locally (loads without network). Never touches the network; returns 0."""
    rows = [("ID", "ALIASES", "LOCAL")]
    for info in store.list_models():
        rows.append((info.id, ",".join(info.aliases) or "-", "yes" if info.available else "no"))
    widths = [max(len(row[col]) for row in rows) for col in range(2)]
    for model_id, aliases, local in rows:
        print(f"{model_id:<{widths[0]}}  {aliases:<{widths[1]}}  {local}", file=out)
    return EXIT_OK
