"""Versioned model artefacts: safetensors weights + manifest, verified on load; promotion."""

from moerec.registry.artefact import (
    Artefact,
    ArtefactError,
    list_versions,
    load_artefact,
    read_manifest,
    resolve_artefact,
    save_artefact,
)
from moerec.registry.pointer import POINTER, pointer_signature
from moerec.registry.promotion import (
    NEWEST,
    PromotionError,
    PromotionRecord,
    VersionInfo,
    list_promotions,
    promote,
    promoted_version,
    rollback,
)

__all__ = [
    "NEWEST",
    "POINTER",
    "Artefact",
    "ArtefactError",
    "PromotionError",
    "PromotionRecord",
    "VersionInfo",
    "list_promotions",
    "list_versions",
    "load_artefact",
    "pointer_signature",
    "promote",
    "promoted_version",
    "read_manifest",
    "resolve_artefact",
    "rollback",
    "save_artefact",
]
