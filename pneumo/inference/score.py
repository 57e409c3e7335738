"""The Ray Data pipeline of `pneumo predict`, as Ray Data means batch inference to run:

    listed paths (blocks of read_rows)
      -> map_batches(read_batch)              CPU tasks: read the bytes, SHA-256, decode and resize
      -> map_batches(FilmScorer, ActorPool)   min_actors..max_actors actors, each with the model loaded once
      -> the driver                           small rows only (no pixels): written in parts as they come

Nothing is materialized: blocks stream through, so memory stays bounded whatever the archive's size
(object store: a few blocks of decoded films per operator; driver: the listing's paths and a part's
rows). With use_gpu each actor holds one GPU and scores batches of batch_size films on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import ray.data

from pneumo.data.transforms import Preprocessing
from pneumo.inference.read import read_batch
from pneumo.inference.scorer import FilmScorer


@dataclass(frozen=True)
class ScoringPlan:
    model_uri: str  # pinned (models:/NAME/VERSION, runs:/…, or a checkpoint folder every node can read)
    tracking_uri: str
    runtime: str  # torch | onnxruntime | openvino (auto is resolved before planning)
    ood_policy: str  # reject | flag | off, as serve.ood_policy
    max_image_pixels: int  # larger films are refused as decompression bombs
    batch_size: int = 64  # films per model call, per actor
    max_actors: int = 1  # the actor pool grows from min_actors to this many while read tasks keep up
    threads: int = 1  # intra-op threads (and Ray CPUs) per actor
    use_gpu: bool = False  # one GPU per actor, PyTorch on CUDA
    read_rows: int = 32  # paths per read task: small, so the first films reach the actors early
    read_cpus: float = 0.5  # Ray CPUs per read task: unlike the actors', so Ray does not fuse reading into them
    explain: bool = False  # Grad-CAM overlays for films at or above the threshold
    min_actors: int = 1  # actors started at once


def default_actors(use_gpu: bool, threads: int) -> int:
    """One actor per GPU of the cluster with use_gpu; else one per 2 x threads CPUs (the other half
    decodes), at least one."""
    resources = ray.cluster_resources()
    if use_gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1) // (2 * threads)))


def score_films(listing: pa.Table, plan: ScoringPlan, preprocessing: Preprocessing) -> Iterator[pa.Table]:
    """Scored rows (output.SCORED_SCHEMA) of every listed path, in blocks as they finish."""
    blocks = [listing.slice(start, plan.read_rows) for start in range(0, len(listing), plan.read_rows)]
    films = ray.data.from_arrow(blocks).map_batches(  # [1] decode in CPU tasks, one row per file whatever happens
        read_batch,
        fn_kwargs={"preprocessing": preprocessing, "max_pixels": plan.max_image_pixels},
        batch_size=None,
        batch_format="numpy",
        num_cpus=plan.read_cpus,
    )
    scored = films.map_batches(  # [2] score in a bounded pool of actors (the model loads once per actor)
        FilmScorer,
        fn_constructor_kwargs={
            "model_uri": plan.model_uri,
            "tracking_uri": plan.tracking_uri,
            "runtime": plan.runtime,
            "threads": plan.threads,
            "use_gpu": plan.use_gpu,
            "ood_policy": plan.ood_policy,
            "explain": plan.explain,
        },
        compute=ray.data.ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
        batch_size=plan.batch_size,
        batch_format="numpy",
        num_cpus=plan.threads,
        num_gpus=1 if plan.use_gpu else None,
    )
    # rows may come in any order (parts are keyed by path): kept in order, every block would wait for the slowest
    scored.context.execution_options.preserve_order = False
    yield from scored.iter_batches(batch_size=None, batch_format="pyarrow")  # [3] stream the rows to the driver
