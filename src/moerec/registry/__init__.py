"""Versioned model artefacts: safetensors weights + manifest, verified on load."""

from moerec.registry.artefact import (
    Artefact,
    ArtefactError,
    list_versions,
    load_artefact,
    resolve_artefact,
    save_artefact,
)

__all__ = [
    "Artefact",
    "ArtefactError",
    "list_versions",
    "load_artefact",
    "resolve_artefact",
    "save_artefact",
]
