"""The backend a stage runs its step on: `backend(p, "optimize")` is `hailopipe.backends.get` for
params.yaml's `backend`, with a missing SDK reported as one error naming params.yaml."""

from __future__ import annotations

from hailopipe import backends
from hailopipe.errors import PipelineError
from stages.params import Params


def backend(p: Params, step: str):
    """The module that runs `step` on params.yaml's backend; a backend that is not installed is one
    error naming params.yaml."""
    name = backend_name(p)
    try:
        return backends.get(name, step)
    except PipelineError as exc:
        raise PipelineError(f"{p.path}: {exc}") from None


def backend_name(p: Params) -> str:
    return p.choice("backend", backends.NAMES)
