"""A gallery of an MEI table: per unit its best MEI, the other seeds beside it, scores, evaluation curves and
the failed keys, as one self-contained HTML page (images embedded, opens from disk) and a PNG grid.

from mei_service import gallery
gallery(MEI & {"method_hash": ...})              # shown inline in a notebook
gallery(MEI, limit=50, page=2).save("gallery")   # gallery/index.html and gallery/gallery.png

Units are the seed groups of ``mei.results.seed_groups`` (keys that differ only in ``mei_seed``), sorted
by their best score, ``limit`` to a page. Only the page's MEIs are fetched, through the table's store (a folder
or S3) as any reader would.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mei.results import SEED, best_first, seed_groups
from mei_service import client, jobs
from mei_service.tables import table_path

# Frames of a video MEI shown in its strip, evenly spaced.
VIDEO_FRAMES = 6
# Failed keys listed on a page; the rest are counted (``mei-service errors`` lists them all).
FAILED_SHOWN = 100
CURVE_SIZE = (180, 48)
# Image cells of the PNG grid per row.
GRID_COLUMNS = 8


@dataclass
class Seeded:
    """One MEI of a unit: its seed, score, images (H x W grey or H x W x 3 colour, in [0, 1]) and curve."""

    seed: int
    score: float
    images: list[np.ndarray]
    curve: tuple[str, list[int], list[float]] | None  # (tracked objective, steps, values)


@dataclass
class Unit:
    """A seed group: what its keys share, and its MEIs best first."""

    key: dict[str, Any]
    meis: list[Seeded]


@dataclass
class Gallery:
    """One page of a table's gallery: ``html`` (self-contained) and ``png`` (a grid of the best MEIs)."""

    title: str
    units: list[Unit]
    page: int
    pages: int
    limit: int
    unit_count: int
    failures: list[tuple[dict, str]] = field(default_factory=list)
    failed_count: int = 0

    @property
    def html(self) -> str:
        """The page: a whole HTML document, images embedded."""
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>MEIs of {html.escape(self.title)}'
            f"</title></head>\n<body>{_fragment(self)}</body></html>\n"
        )

    @property
    def png(self) -> bytes:
        return _grid(self.units, self.title, 1 + (self.page - 1) * self.limit)

    def save(self, folder: str | Path) -> list[Path]:
        """Writes ``index.html`` and ``gallery.png`` into ``folder``; returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        page, grid = folder / "index.html", folder / "gallery.png"
        page.write_text(self.html, encoding="utf-8")
        grid.write_bytes(self.png)
        return [page, grid]

    def _repr_html_(self) -> str:
        return _fragment(self)

    def __repr__(self) -> str:
        shown = f"{len(self.units)} of {self.unit_count} units"
        return f"Gallery({self.title}, page {self.page} of {self.pages}: {shown}, {self.failed_count} failed keys)"


def gallery(query: Any, restriction: Any = None, *, limit: int = 50, page: int = 1) -> Gallery:
    """The gallery of an MEI table or a restriction of it: units sorted by their best score, ``limit`` units
    to a page (``page`` counts from 1), and the failed keys with their messages."""
    if limit < 1 or page < 1:
        raise ValueError(f"limit and page count from 1, got limit={limit}, page={page}")
    table, restriction = client.split_query(query, restriction)
    meis = table() & restriction if restriction is not None else table()
    # Ties in the best score are broken by the key, so that every unit is on exactly one page.
    groups = sorted(seed_groups(meis), key=lambda group: (*best_first(group[1][0]["score"]), str(group[0])))
    pages = max(1, math.ceil(len(groups) / limit))
    if page > pages:
        raise ValueError(f"page {page} is past the last page, {pages}, of {len(groups)} units at {limit} a page")
    shown = groups[(page - 1) * limit : page * limit]
    failed = client.errors(table, restriction, limit=FAILED_SHOWN)
    fetched = _fetched(table, [row for _, rows in shown for row in rows])
    return Gallery(
        title=table_path(table),
        units=[Unit(shared, [fetched[_identity(row)] for row in rows]) for shared, rows in shown],
        page=page,
        pages=pages,
        limit=limit,
        unit_count=len(groups),
        failures=[(key, message) for key, message, _ in failed],
        failed_count=jobs.count_restricted(table, restriction)[jobs.KeyState.FAILED],
    )


def _identity(row: Mapping[str, Any]) -> tuple:
    return tuple(sorted((name, value) for name, value in row.items() if name != "score"))


def _fetched(table: type, rows: Sequence[Mapping[str, Any]]) -> dict[tuple, Seeded]:
    """The MEIs of ``rows`` (primary keys with their scores), in one query through the table's store."""
    keys = [dict(_identity(row)) for row in rows]
    found = (table() & keys).to_dicts() if keys else []
    by_key = {_identity({name: row[name] for name in keys[0]}): row for row in found}
    return {
        identity: Seeded(row[SEED], row["score"], images(row["mei"]), curve(row["output"]))
        for identity, row in by_key.items()
    }


def images(mei: Any) -> list[np.ndarray]:
    """The pictures of an MEI tensor: one per MEI of ``n_meis``; channels other than 1 or 3 side by side,
    a video as a strip of frames. Values map to [0, 1] symmetrically around zero (grey is 0)."""
    array = torch.as_tensor(mei).detach().cpu().float().numpy()
    if array.ndim <= 3:
        array = array.reshape((1,) * (4 - array.ndim) + array.shape)
    return [_picture(single / (2 * (float(np.nanmax(np.abs(single))) or 1.0)) + 0.5) for single in array]


def _picture(scaled: np.ndarray) -> np.ndarray:
    """One MEI, already scaled to [0, 1], as a picture: channels x height x width, or with frames a strip."""
    if scaled.ndim == 4:  # channels x frames x height x width: every frame on the MEI's one scale
        frames = np.linspace(0, scaled.shape[1] - 1, min(VIDEO_FRAMES, scaled.shape[1])).round().astype(int)
        return np.concatenate([_picture(scaled[:, frame]) for frame in frames], axis=1)
    if scaled.shape[0] == 3:
        return scaled.transpose(1, 2, 0)
    return np.concatenate(list(scaled), axis=1)


def curve(output: Any) -> tuple[str, list[int], list[float]] | None:
    """The first tracked objective of a tracker log (``{name: {"times": [...], "values": [...]}}``) whose
    values are numbers, preferring an evaluation; ``None`` when the output has none."""
    if not isinstance(output, Mapping):
        return None
    names = sorted(output, key=lambda name: "Evaluation" not in str(name))
    for name in names:
        log = output[name]
        if not (isinstance(log, Mapping) and log.get("values")):
            continue
        try:
            values = [float(value) for value in log["values"]]
        except (TypeError, ValueError):
            continue
        steps = [int(step) for step in log.get("times") or range(len(values))]
        finite = [(step, value) for step, value in zip(steps, values, strict=False) if math.isfinite(value)]
        if finite:
            return str(name).rsplit(".", 1)[-1], [step for step, _ in finite], [value for _, value in finite]
    return None


def _png(image: np.ndarray) -> bytes:
    from matplotlib import image as matplotlib_image

    buffer = io.BytesIO()
    matplotlib_image.imsave(buffer, np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, format="png")
    return buffer.getvalue()


def _img(image: np.ndarray, alt: str, css_class: str) -> str:
    data = base64.b64encode(_png(image)).decode()
    height, width = image.shape[:2]
    scale = 96 / height
    return (
        f'<img class="{css_class}" alt="{html.escape(alt)}" width="{round(width * scale)}" height="96" '
        f'src="data:image/png;base64,{data}">'
    )


def _svg(found: tuple[str, list[int], list[float]] | None) -> str:
    if found is None:
        return '<span class="none">no curve</span>'
    name, steps, values = found
    width, height = CURVE_SIZE
    low, high = min(values), max(values)
    first, last = steps[0], steps[-1]

    def point(step: int, value: float) -> str:
        x = 2 + (width - 4) * ((step - first) / (last - first) if last > first else 0.5)
        y = height - 2 - (height - 4) * ((value - low) / (high - low) if high > low else 0.5)
        return f"{x:.1f},{y:.1f}"

    points = " ".join(point(step, value) for step, value in zip(steps, values, strict=False))
    return (
        f'<svg class="curve" width="{width}" height="{height}" role="img" aria-label="{html.escape(name)}">'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{points}"/></svg>'
        f'<div class="axis">{html.escape(name)}: {values[0]:.3g} &rarr; {values[-1]:.3g} '
        f"(step {first} to {last})</div>"
    )


def _labels(units: Sequence[Unit]) -> tuple[list[str], str]:
    """Each unit's label, by the attributes in which the units differ, and what they all share."""
    names = list(units[0].key) if units else []
    varying = [name for name in names if len({str(unit.key[name]) for unit in units}) > 1] or names
    shared = {name: units[0].key[name] for name in names if name not in varying}
    return [_key_text({name: unit.key[name] for name in varying}) for unit in units], _key_text(shared)


def _key_text(key: Mapping[str, Any]) -> str:
    def short(value: Any) -> str:
        text = str(value)
        return text if len(text) <= 12 else text[:10] + "…"

    return ", ".join(f"{name}={short(value)}" for name, value in key.items())


# Scoped to the gallery's own element, so that shown inline it leaves a notebook's other outputs alone.
STYLE = """
.mei-gallery { font-family: system-ui, sans-serif; color: #1b1f24; }
.mei-gallery table { border-collapse: collapse; }
.mei-gallery td, .mei-gallery th { border-bottom: 1px solid #d0d7de; padding: 6px; vertical-align: top; }
.mei-gallery th { text-align: left; }
.mei-gallery img { image-rendering: pixelated; border: 1px solid #8c959f; margin-right: 4px; }
.mei-gallery img.best { border: 3px solid #1a7f37; }
.mei-gallery .seed { display: inline-block; text-align: center; font-size: 85%; }
.mei-gallery .seeds { display: flex; flex-wrap: wrap; gap: 8px; }
.mei-gallery .key, .mei-gallery .axis, .mei-gallery .none { font-size: 80%; color: #57606a; }
.mei-gallery td.key { max-width: 16em; overflow-wrap: anywhere; }
.mei-gallery .failed { color: #cf222e; }
"""


def _fragment(found: Gallery) -> str:
    rows = []
    labels, shared = _labels(found.units)
    first_rank = 1 + (found.page - 1) * found.limit
    for rank, unit, unit_label in zip(
        range(first_rank, first_rank + len(found.units)), found.units, labels, strict=True
    ):
        best = unit.meis[0]
        cells = []
        for seeded in unit.meis:
            label = f"seed {seeded.seed}: {seeded.score:.4g}" + (" (best)" if seeded is best else "")
            pictures = "".join(
                _img(image, f"MEI of {unit_label}, {label}", "best" if seeded is best else "other")
                for image in seeded.images
            )
            cells.append(f'<div class="seed">{pictures}<br>{html.escape(label)}</div>')
        rows.append(
            f'<tr data-score="{best.score}"><td>{rank}</td><td class="key">{html.escape(unit_label)}</td>'
            f'<td>{best.score:.4g}</td><td><div class="seeds">{"".join(cells)}</div></td>'
            f"<td>{_svg(best.curve)}</td></tr>"
        )
    failures = "".join(
        f'<li class="failed"><span class="key">{html.escape(_key_text(key))}</span>: {html.escape(message)}</li>'
        for key, message in found.failures
    )
    more = found.failed_count - len(found.failures)
    if more:
        failures += f"<li>and {more} more: <code>mei-service errors {html.escape(found.title)}</code></li>"
    meis = sum(len(unit.meis) for unit in found.units)
    return f"""<div class="mei-gallery"><style>{STYLE}</style>
<h2>MEIs of {html.escape(found.title)}</h2>
<p id="summary">{found.unit_count} units, {found.failed_count} failed keys. Page {found.page} of {found.pages}:
{len(found.units)} units, {meis} MEIs, sorted by the best score; the best seed of each unit is framed green.</p>
<p class="key">All units shown share {html.escape(shared) or "nothing"}.</p>
<table id="units"><thead><tr><th>#</th><th>unit</th><th>best score</th><th>MEIs by seed</th>
<th>evaluation of the best</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<h3>Failed keys ({found.failed_count})</h3>
<ul id="failures">{failures or "<li>none</li>"}</ul>
</div>
"""


def _grid(units: Sequence[Unit], title: str, first_rank: int) -> bytes:
    from matplotlib.figure import Figure

    labels, _ = _labels(units)
    columns = max(1, min(GRID_COLUMNS, len(units)))
    rows = max(1, math.ceil(len(units) / columns))
    figure = Figure(figsize=(2.2 * columns, 2.0 * rows + 0.4), layout="constrained")
    figure.suptitle(f"best MEI per unit: {title}")
    for index in range(rows * columns):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.set_axis_off()
        if index < len(units):
            best = units[index].meis[0]
            axes.imshow(np.clip(np.concatenate(best.images, axis=1), 0, 1), cmap="gray", vmin=0, vmax=1)
            axes.set_title(f"#{index + first_rank} {labels[index]}\nseed {best.seed}: {best.score:.3g}", fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
