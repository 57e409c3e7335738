"""Champion beside challenger in one replica: which loaded version answers a request (canary share,
an explicit pick by header or query parameter), shadow scoring, and the per-version metrics.

    versions = ServedVersions("models:/pneumo-pneumonia@champion", tracking_uri, settings)
    role, model = versions.choose(request)     # "champion" | "challenger", with the ServedModel
    versions.shadow_of(role)                   # the challenger, when serve.shadow and it is loaded

Both aliases live in the same replica and share its batcher (one model call per version per
batch), rather than in two deployments: no extra proxy hop or replica per version, and the
challenger's share can be any fraction without a replica count to match.
"""

from __future__ import annotations

import random
from typing import Optional

from ray.serve import metrics
from starlette.requests import Request

from pneumo.config import ServeConfig
from pneumo.registry.aliases import CHALLENGER, CHAMPION  # serving roles follow the registry aliases
from pneumo.serve.inputs import RequestError
from pneumo.serve.loader import ModelLoader, ServedModel
from pneumo.serve.prometheus import LATENCY_BOUNDARIES_MS

VERSION_HEADER = "X-Model-Version"  # request: pick a version (role or number); answer: the version used
VERSION_QUERY = "version"  # ?version=challenger or ?version=7, same as the header
VERSION_PARAMETERS = [  # the OpenAPI description of the choice, on every route that scores
    {
        "name": VERSION_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "answer with this served version: a role (champion, challenger) or its version number; "
        "without it serve.challenger_traffic splits the requests (an unknown version: 404 naming the served ones)",
    },
    {
        "name": VERSION_QUERY,
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": f"the same choice as the {VERSION_HEADER} header",
    },
]
ANSWER_HEADERS = {VERSION_HEADER: {"schema": {"type": "string"}, "description": "the version that answered"}}
PROBABILITY_BOUNDARIES = [0.05 * i for i in range(1, 20)]
RETRY_AFTER_S = "5"  # hint for clients that hit the endpoint while the model loads


def alias_uri(uri: str, alias: str) -> Optional[str]:
    """models:/NAME@champion -> models:/NAME@<alias>; None for URIs without an alias."""
    if not uri.startswith("models:/") or "@" not in uri:
        return None
    return f"{uri.rsplit('@', 1)[0]}@{alias}"


class VersionMetrics:
    """Prometheus series per role and version: answers, latency, score distribution, shadow agreement."""

    def __init__(self) -> None:
        tags = ("role", "version")
        self.answers = metrics.Counter("pneumo_version_answers", "answers per served version", tag_keys=tags)
        self.latency_ms = metrics.Histogram(
            "pneumo_version_latency_ms",
            "time in the replica per answer, ms",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=tags,
        )
        self.probability = metrics.Histogram(
            "pneumo_version_probability", "P(pneumonia) answered", boundaries=PROBABILITY_BOUNDARIES, tag_keys=tags
        )
        self.shadow = metrics.Counter(
            "pneumo_shadow_comparisons",
            "shadow-scored requests: agree is whether the challenger's label equals the champion's",
            tag_keys=("agree",),
        )

    def record(self, role: str, model: ServedModel, probability: float, seconds: float) -> None:
        tags = {"role": role, "version": model.fetched.version}
        self.answers.inc(tags=tags)
        self.latency_ms.observe(1000 * seconds, tags=tags)
        self.probability.observe(probability, tags=tags)

    def record_shadow(self, agree: bool) -> None:
        self.shadow.inc(tags={"agree": str(agree).lower()})


def route(asked: Optional[str], loaded: dict[str, ServedModel], traffic: float, draw: float) -> str:
    """The role that answers: the one `asked` names (a role or a version number; 404 naming the served
    versions otherwise), else the challenger when it is loaded and `draw` (uniform in [0, 1)) falls
    under the canary share `traffic`, else the champion."""
    if asked:
        for role, model in loaded.items():
            if asked in (role, model.fetched.version):
                return role
        served = ", ".join(f"{role} (version {model.fetched.version})" for role, model in loaded.items())
        raise RequestError(
            404,
            f"model version {asked!r} is not served here; served: {served or 'none yet'}",
            f"{VERSION_HEADER} header or ?{VERSION_QUERY}=",
        )
    return CHALLENGER if CHALLENGER in loaded and draw < traffic else CHAMPION


class ServedVersions:
    """The champion loader and, for registry aliases with serve.challenger set, the challenger's."""

    def __init__(self, model_uri: str, tracking_uri: str, settings: ServeConfig):
        self.settings = settings
        self.loaders = {CHAMPION: ModelLoader(model_uri, tracking_uri, settings)}
        challenger_uri = alias_uri(model_uri, settings.challenger) if settings.challenger else None
        if challenger_uri and challenger_uri != model_uri:
            self.loaders[CHALLENGER] = ModelLoader(challenger_uri, tracking_uri, settings)
        self.metrics = VersionMetrics()
        self._random = random.Random()

    @property
    def champion(self) -> ModelLoader:
        return self.loaders[CHAMPION]

    def loaded(self) -> dict[str, ServedModel]:
        return {role: loader.served for role, loader in self.loaders.items() if loader.served is not None}

    def choose(self, request: Request) -> tuple[str, ServedModel]:
        """The role and model that answer `request` (see `route`); 503 while the champion loads."""
        asked = request.headers.get(VERSION_HEADER) or request.query_params.get(VERSION_QUERY)
        loaded = self.loaded()
        if CHAMPION not in loaded:
            self.loaded_champion()  # raises the 503 that says why
        role = route(asked, loaded, self.settings.traffic, self._random.random())
        return role, loaded[role] if role != CHAMPION else self.loaded_champion()

    def loaded_champion(self) -> ServedModel:
        """The champion, or a 503 saying why it is not loaded (yet)."""
        served = self.champion.served
        if served is None:
            status = self.champion.status()
            reason = f"model is {status['state']}" + (f": {status['error']}" if "error" in status else "")
            raise RequestError(503, f"{reason} (see /readyz)", "model", {"Retry-After": RETRY_AFTER_S})
        return served

    def shadow_of(self, role: str) -> Optional[ServedModel]:
        """The challenger, when serve.shadow is on, it is loaded and the champion answered."""
        return self.loaded().get(CHALLENGER) if self.settings.shadow and role == CHAMPION else None

    def describe(self) -> dict[str, dict]:
        """Each loaded role's model description, plus where each loader stands."""
        return {
            role: {**loader.status(), **({"model": loader.model.describe()} if loader.model else {})}
            for role, loader in self.loaders.items()
        }
