"""`pneumo monitor`'s report: the terminal summary and report.html (verdict, tests, pictures of the
distributions and the features, the most unusual films as thumbnails). The job that fills it is
pneumo/jobs/monitor.py; monitoring.json beside it keeps the numbers for machines.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo.monitoring.drift import FAMILIES
from pneumo.monitoring.features import Observations
from pneumo.monitoring.ood import VAL_QUANTILE
from pneumo.monitoring.pictures import distributions, feature_map, thumbnail
from pneumo.monitoring.profile import ReferenceProfile

MOST_UNUSUAL_SHOWN = 20  # films listed by out-of-distribution score


@dataclass
class ReportPictures:
    """What the pictures are drawn from: the model's reference profile and the films seen here."""

    reference: ReferenceProfile
    here: Observations
    here_projected: np.ndarray  # (N, k) the films' features in the profile's PCA directions
    here_refused: np.ndarray  # (N,) whether the gate refuses each film
    films: dict[str, np.ndarray]  # path -> decoded film, for the most unusual ones


def format_summary(report: dict[str, Any]) -> str:
    """The terminal summary of `pneumo monitor`."""
    lines = [
        f"drift: {'YES' if report['drift'] else 'no'} (family-wise alpha {report.get('alpha')}, "
        f"{report['tested_films']} films tested)"
    ]
    for family in FAMILIES:
        if family in report:
            entry = report[family]
            lines.append(
                f"  {family:<12} p = {entry['p_value']:.4g}  {'DRIFT' if entry['drift'] else 'ok':<5}  {entry['test']}"
            )
    ood = report["ood"]
    lines.append(
        f"out of distribution: {ood['count']} of {ood['films']} films ({ood['rate']:.1%}), cut-off {ood['cutoff']:.3g}"
    )
    return "\n".join(lines)


def _unusual_films(report: dict[str, Any], films: dict[str, np.ndarray]) -> str:
    cards = []
    for film in report["most_unusual"]:
        image = films.get(film["path"])
        picture = f'<img src="{thumbnail(image)}" alt="">' if image is not None else "<div>(not decoded)</div>"
        cards.append(
            f"<figure>{picture}<figcaption>score {film['ood_score']:.3g}<br>"
            f"<code>{html.escape(film['path'].rsplit('/', 1)[-1])}</code></figcaption></figure>"
        )
    return '<div class="films">' + "".join(cards) + "</div>"


def render_html(report: dict[str, Any], pictures: ReportPictures) -> str:
    """A self-contained page: verdict, the three test families, the distributions and the features
    drawn against the reference, intensity statistics, the most unusual films as thumbnails."""

    def row(*cells: Any) -> str:
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    families = "".join(
        row(f, report[f]["test"], f"{report[f]['p_value']:.4g}", "DRIFT" if report[f]["drift"] else "ok")
        for f in FAMILIES
        if f in report
    )
    statistics = "".join(
        row(name, f"{s['mean']:.4f}", f"{s['reference_mean']:.4f}", f"{s['p_value']:.3g}")
        for name, s in report.get("intensities", {}).get("statistics", {}).items()
    )
    verdict = "Drift detected" if report["drift"] else "No drift detected"
    ood = report["ood"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>pneumo monitor: {html.escape(str(report["data"]))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse;margin:1em 0}}.films{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;text-align:center;font-size:12px}}figure img{{width:128px;height:128px;image-rendering:pixelated}}
img.plot{{max-width:100%}}</style></head><body>
<h1>{verdict}</h1>
<p>Model <code>{html.escape(report["model_uri"])}</code>, data <code>{html.escape(str(report["data"]))}</code>
(split {html.escape(report["split"])}), {report["tested_films"]} films tested against the model's reference profile
(family-wise false-alarm rate {report.get("alpha")}).</p>
<p>Out of distribution: {ood["count"]} of {ood["films"]} films ({ood["rate"]:.1%}) beyond the cut-off {ood["cutoff"]:.3g}
(about {1 - VAL_QUANTILE:.0%} of validation films are).</p>
<h2>Tests</h2><table><tr><th>family</th><th>test</th><th>p-value</th><th></th></tr>{families}</table>
<h2>Distributions: reference (blue) and here (red)</h2>
<img class="plot" alt="histograms of each intensity statistic and of P(pneumonia)" src="{distributions(pictures.reference, pictures.here)}">
<h2>Features</h2><p>Every film as a point in the first two principal directions of the training films' features.</p>
<img class="plot" alt="reference and new films in the profile's PCA plane" src="{feature_map(pictures.reference, pictures.here_projected, pictures.here_refused)}">
<h2>Intensity statistics</h2><table><tr><th>statistic</th><th>mean here</th><th>reference mean</th><th>KS p-value</th></tr>
{statistics}</table>
<h2>Most unusual films</h2>{_unusual_films(report, pictures.films)}
</body></html>
"""
