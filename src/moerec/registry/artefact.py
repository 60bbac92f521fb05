"""Versioned model artefacts: a directory per trained model that loads back bit-identically.

    <registry>/<name>/v0001/
        model.safetensors   weights (safetensors: no pickle, so loading runs no code)
        vocab.json          raw item and user ids, in encoded order
        manifest.json       format, config, metrics, data fingerprint, sha256 of each file
        manifest.sha256     sha256 of manifest.json
    <registry>/<name>/PROMOTED   the version to serve, when one was promoted (promotion.py)

Loading verifies every checksum before reading a byte of weights: a corrupted or edited file
(the manifest included) is refused with a message that says which file and what to do. The
checksums detect damage and casual edits, not forgery: whoever can rewrite every file can
rewrite the checksums too; protect the model store itself for that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import moerec
from moerec import MoerecError
from moerec.config import ExperimentConfig
from moerec.data.dataset import Dataset, load_dataset
from moerec.data.vocab import Vocabulary
from moerec.model import SequentialRecommender
from moerec.registry.pointer import POINTER, VERSION_NAME, PointerError, read_pointer

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
VOCAB = "vocab.json"
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
PAYLOAD = frozenset({WEIGHTS, VOCAB})


class ArtefactError(MoerecError):
    """A model artefact that cannot be used as it is."""


@dataclass(frozen=True)
class Artefact:
    path: Path
    model: SequentialRecommender
    config: ExperimentConfig
    vocab: Vocabulary
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def load_data(self, path: Path | str, format: str | None = None) -> Dataset:
        """``path`` read and split with the settings this model was trained with.

        The model carries its item attribute table, so the interactions are all this reads: a
        feature file that has moved since training does not matter. A file with another item
        catalogue is refused (the scores would be for other items); one with the same catalogue
        and other interactions is accepted: compare ``dataset.fingerprint`` with the manifest's
        ``data_fingerprint`` to tell.
        """
        settings = self.config.data.model_copy(update={"item_features": None})
        dataset = load_dataset(path, settings, format)
        if dataset.vocab.item_ids != self.vocab.item_ids:
            raise ArtefactError(
                f"{path}: its item catalogue differs from the one {self.path} was trained on; "
                "evaluate a model on the data (and data settings) it was trained with"
            )
        return dataset


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_versions(model_dir: Path) -> list[Path]:
    """Version directories of one model name, oldest first."""
    if not model_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in model_dir.iterdir() if (m := VERSION_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_artefact(path: Path | str) -> Path:
    """A version directory as given; under a model-name directory, the version its
    ``PROMOTED`` pointer names, else (nothing promoted) the newest version."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    try:
        promoted = read_pointer(path)
    except PointerError as exc:
        raise ArtefactError(str(exc)) from None
    if promoted is not None:
        if not (path / promoted).is_dir():
            raise ArtefactError(
                f"{path / POINTER}: names {promoted}, which is not in {path}; promote an "
                f"existing version with `moerec registry promote {path} VERSION` "
                "(see `moerec registry list`)"
            )
        return path / promoted
    versions = list_versions(path)
    if versions:
        return versions[-1]
    raise ArtefactError(
        f"{path}: no model artefact here (expected {MANIFEST}, or version folders v0001, …). "
        "Train one with `moerec train --data … --registry DIR`."
    )


def save_artefact(
    registry: Path | str,
    name: str,
    model: SequentialRecommender,
    config: ExperimentConfig,
    vocab: Vocabulary,
    metrics: dict[str, Any],
    data_fingerprint: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the next version of ``name`` atomically (temp dir, then rename); return its path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ArtefactError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    model_dir = Path(registry) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS))
        (staging / VOCAB).write_text(json.dumps(vocab.to_dict()), encoding="utf-8")
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "moerec_version": moerec.__version__,
            "torch_version": torch.__version__,
            "config": config.to_dict(),
            "metrics": metrics,
            "data_fingerprint": data_fingerprint,
            "files": {f: sha256_file(staging / f) for f in (WEIGHTS, VOCAB)},
            **(extra or {}),
        }
        return _publish(model_dir, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(model_dir: Path, staging: Path, manifest: dict[str, Any]) -> Path:
    """Claim the next free version number; rename is atomic, so readers never see half a model."""
    while True:
        versions = list_versions(model_dir)
        number = int(versions[-1].name[1:]) + 1 if versions else 1
        manifest["version"] = f"v{number:04d}"
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        (staging / MANIFEST_DIGEST).write_text(sha256_file(staging / MANIFEST) + "\n")
        target = model_dir / manifest["version"]
        try:
            os.rename(staging, target)
        except OSError:  # another writer took this number first
            if target.exists():
                continue
            raise
        return target


def load_artefact(path: Path | str) -> Artefact:
    """Verify checksums, rebuild the model from its config, load weights strictly."""
    path = resolve_artefact(path)
    manifest = _read_manifest(path)
    if set(manifest["files"]) != PAYLOAD:
        raise ArtefactError(
            f"{path / MANIFEST}: lists files {sorted(manifest['files'])}, expected "
            f"{sorted(PAYLOAD)}; the manifest was modified"
        )
    for file_name, expected in manifest["files"].items():
        file_path = path / file_name
        if not file_path.is_file():
            raise ArtefactError(f"{file_path}: missing from the artefact; re-export the model")
        actual = sha256_file(file_path)
        if actual != expected:
            raise ArtefactError(
                f"{file_path}: checksum mismatch (manifest {expected[:12]}…, file {actual[:12]}…); "
                "the artefact is corrupted or was modified. Restore it or load another version."
            )
    try:
        config = ExperimentConfig.model_validate(manifest["config"])
        vocab = Vocabulary.from_dict(json.loads((path / VOCAB).read_text(encoding="utf-8")))
        model = SequentialRecommender(config.model)
        model.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ArtefactError(f"{path}: cannot rebuild the model from this artefact: {exc}") from None
    model.eval()
    return Artefact(path=path, model=model, config=config, vocab=vocab, manifest=manifest)


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of a version folder, its own checksum verified (not the payload's): cheap
    enough to list every version, see :func:`load_artefact` for a full verification."""
    return _read_manifest(Path(path))


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        expected = (path / MANIFEST_DIGEST).read_text(encoding="utf-8").strip()
    except OSError:
        raise ArtefactError(
            f"{path / MANIFEST_DIGEST}: missing; this is not a complete moerec artefact"
        ) from None
    actual = sha256_file(path / MANIFEST)
    if actual != expected:
        raise ArtefactError(
            f"{path / MANIFEST}: checksum mismatch (expected {expected[:12]}…, file "
            f"{actual[:12]}…); the manifest was modified. Restore it or load another version."
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{path / MANIFEST}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtefactError(f"{path / MANIFEST}: not a moerec manifest (no 'files' section)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(
            f"{path / MANIFEST}: artefact format {manifest.get('format_version')!r} is not "
            f"supported by this moerec (format {FORMAT_VERSION}); upgrade moerec or re-export"
        )
    return manifest
