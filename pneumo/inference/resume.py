"""Whose results an output folder holds, and which films it already has.

One output folder holds one model's predictions: `predict.json` names the model (registry name and
version, URI, weights digest) when the first part is written. Without --resume a folder that already
holds predictions is refused (scoring again would write every film twice); with --resume it must be
the same model (an alias that moved since is another model), and only the listed paths not yet in a
whole part are scored. Parts are whole or absent (output.py), so nothing is scored twice and nothing
is missed, wherever the previous job was killed.

Ray Data's own CheckpointConfig was not used: it filters rows at a datasource read and records them
at a write sink, reserves 1 GiB per checkpoint actor, and knows nothing of which model wrote a row.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pneumo.inference.output import OWNER_FILE, OutputError, OutputFolder
from pneumo.registry.uri import FetchedModel


def model_identity(model: FetchedModel) -> dict[str, Any]:
    """What makes two runs the same model: name, version, pinned URI and the weights' digest."""
    return {
        "model_name": model.name,
        "model_version": model.version,
        "model_uri": model.uri,
        "weights_sha256": model.loaded.meta.weights_sha256,
    }


def _describe(owner: dict[str, Any]) -> str:
    return f"{owner.get('model_name')} version {owner.get('model_version')} ({owner.get('model_uri')})"


def claim_folder(folder: OutputFolder, model: FetchedModel, resume: bool) -> int:
    """Check that `model` may write into `folder` (see the module docstring) and record it as the
    owner; returns how many rows the folder already holds. Raises OutputError saying why not."""
    identity = model_identity(model)
    owner = folder.read_json(OWNER_FILE)
    if owner is None:
        if not folder.is_empty():
            raise OutputError(
                f"--out {folder.location} is not empty and holds no pneumo predictions ({OWNER_FILE} is missing): "
                "choose an empty or new folder"
            )
        folder.write_json(OWNER_FILE, identity)
        return 0
    held = len(folder.read_rows(["path"]))
    if owner != identity:
        raise OutputError(
            f"--out {folder.location} holds {held} predictions of {_describe(owner)}, not of {_describe(identity)}: "
            "one folder holds one model's results; choose another --out"
        )
    if not resume and held:
        raise OutputError(
            f"--out {folder.location} already holds {held} predictions of this model: add --resume to score only "
            "the films not yet in it, or choose another --out"
        )
    return held


def films_to_score(listing: pa.Table, folder: OutputFolder) -> pa.Table:
    """The listed rows whose path is not yet in a whole part of `folder`."""
    done = folder.read_rows(["path"])["path"]
    if len(done) == 0:
        return listing
    return listing.filter(pc.invert(pc.is_in(listing["path"], value_set=done)))
