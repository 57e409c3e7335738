"""The registry aliases a version can hold, and the rule that hands out `champion`.

Serve follows both aliases (serve.challenger_traffic); `pneumo run` moves `champion` only to a version
that is strictly better on mlflow.champion_metric, so rerunning one YAML leaves it where it is.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pneumo.config import MlflowConfig, improves

CHAMPION = "champion"  # the version served by default
CHALLENGER = "challenger"  # the newest version that did not beat the champion


def champion_value(client: MlflowClient, name: str, metric: str) -> float | None:
    """The champion's `metric` as its run logged it (full precision), else its version tag; None when
    there is no champion or it has neither."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    if champion.run_id:
        logged = client.get_run(champion.run_id).data.metrics.get(metric)
        if logged is not None:
            return logged
    tag = champion.tags.get(metric)
    return float(tag) if tag is not None else None


def beats_champion(client: MlflowClient, name: str, cfg: MlflowConfig, metrics: dict[str, float]) -> bool:
    """True when there is no champion yet (or it lacks the metric), or `metrics` improve on it; a tie
    keeps the champion."""
    current = champion_value(client, name, cfg.champion_metric)
    return current is None or improves(float(metrics[cfg.champion_metric]), current, cfg.champion_mode)


def alias_for(client: MlflowClient, name: str, cfg: MlflowConfig, metrics: dict[str, float]) -> str:
    return CHAMPION if beats_champion(client, name, cfg, metrics) else CHALLENGER
