"""The report's figures, from stored cells: the paper's Fig. 4 (accuracy vs attack MSE), Fig. 3 (attack MSE vs the
conditional-entropy measure) and a reconstruction gallery per row.

Figures are drawn with matplotlib's object API (``Figure``, no pyplot state, the
Agg canvas), each saved as PNG and SVG. One panel per (table group, attack,
column). Without CEM (λ = 0) is a circle, with CEM another marker per λ (a
triangle for the first).

* ``pareto``: per variant, mean accuracy (%) against mean attack MSE over seeds,
  with the 95 % intervals as error bars where there are several seeds. A colour
  per row, named in one legend beside the panels rather than in labels on the
  points, which overlapped wherever rows crowd; points of one row at one λ are
  joined in σ order (solid without CEM, dashed with), so a σ sweep reads as the
  paper's trade-off curve, labelled with its σ values; and an arrow leads from
  each row's point without CEM to each of its points with CEM at the same σ, so
  what CEM did to each defense reads at a glance. The two ends are means over
  the seeds each variant has stored.
* ``mse_vs_entropy``: every trained model, its attack MSE (log scale) against the
  ``entropy_bound`` its bundle's manifest records (the relative H(x|z) lower bound
  of Eq. 3 in nats, H(x) := 0); models trained without noise record none and are
  left out (counted in the panel title).
* ``gallery-<group>-<row>``: the first seed's ``reconstructions.png`` of every
  variant of the row (rows) and attack (columns), as ``cem-attack`` drew them:
  originals above reconstructions, the ``train`` column's images then ``infer``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.lines import Line2D
from matplotlib.typing import ColorType

from cem.stats import Estimate, mean_interval
from experiment.records import COLUMNS
from experiment.report import ACCURACY, Observation, grouped_by_variant, mse_metric
from experiment.spec import slugify
from experiment.store import CellStore

WITHOUT_CEM = ("0.45", "o")  # (colour, marker)
PALETTE = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:cyan")
CEM_MARKERS = ("^", "s", "D", "v", "P", "X")  # one per λ > 0, in order
ROW_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
               "tab:cyan")  # Fig. 4's colour per row: tab10 without its grey, which reads as "without CEM" in Fig. 3
ROW_COLOURMAP = "turbo"  # Fig. 4's row colours where ROW_PALETTE has too few: evenly spaced along it
PANEL_SIZE = (4.2, 3.2)
GRID_FILE = "reconstructions.png"  # what cem-attack draws into its --out folder
GALLERY_WIDTH = 5.5  # inches per attack column

Point = tuple[float, float]  # (mean attack MSE, mean accuracy %) of one variant


def _lambda_style(lam: float, lambdas: Sequence[float]) -> tuple[str, str]:
    """(colour, marker): grey circles without CEM, a colour and a marker per λ > 0."""
    if lam == 0:
        return WITHOUT_CEM
    index = [v for v in lambdas if v > 0].index(lam)
    return PALETTE[index % len(PALETTE)], CEM_MARKERS[index % len(CEM_MARKERS)]


def plot_panels(observations: Sequence[Observation], attacks: Sequence[str]) -> list[tuple[str, str, str]]:
    """(group, attack, column) for every attack with a stored score in the group: a partial grid (an attack not
    run yet) draws no empty panels."""
    groups = list(dict.fromkeys(o.group for o in observations))
    return [(group, attack, column) for group in groups for attack in attacks
            if any(o.group == group and mse_metric(attack, c) in o.values for o in observations for c in COLUMNS)
            for column in COLUMNS]


def _figure(count: int, size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    columns = len(COLUMNS) if count >= len(COLUMNS) else 1
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(max(count, 1))]
    return figure, axes


def _save(figure: Figure, directory: Path, stem: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    for path in paths:
        figure.savefig(path, dpi=120)
    return paths


def _legend(axes: Axes, lambdas: Sequence[float]) -> None:
    for lam in lambdas:
        color, marker = _lambda_style(lam, lambdas)
        axes.scatter([], [], color=color, marker=marker, label="w/o CEM (λ=0)" if lam == 0 else f"w/ CEM, λ={lam:g}")
    axes.legend(fontsize=7, loc="best")


def pareto_means(observations: Sequence[Observation], group: str, metric: str
                 ) -> dict[tuple[str, float, float], tuple[Estimate, Estimate]]:
    """(attack MSE, accuracy %) over seeds per variant of one table group, keyed (row, λ, σ), ordered by
    ``grouped_by_variant`` (rows by name, then σ and λ ascending): each (row, λ) meets its σ values in order, each
    (row, σ) its lowest λ first."""
    seen = [o for o in observations if o.group == group and metric in o.values and ACCURACY in o.values]
    return {(row, lam, sigma): (mean_interval(o.values[metric] for o in variant),
                                mean_interval(100 * o.values[ACCURACY] for o in variant))
            for (_, row, sigma, lam), variant in grouped_by_variant(seen, ()).items()}


def cem_steps(points: Mapping[tuple[str, float, float], Point]) -> list[tuple[str, Point, Point, float]]:
    """(row, point without CEM, point with CEM, its λ) for every (row, λ > 0, σ) whose row has a λ = 0 point at
    that σ: the arrows of Fig. 4. ``points`` is keyed by (row, λ, σ)."""
    return [(row, points[(row, 0.0, sigma)], point, lam) for (row, lam, sigma), point in sorted(points.items())
            if lam > 0 and (row, 0.0, sigma) in points]


def sigma_labels(variants: Sequence[tuple[str, float, float]]) -> list[tuple[str, float]]:
    """The (row, σ) points Fig. 4 labels with their σ, given its variants keyed (row, λ, σ): those of the rows drawn
    at several σ (a sweep's curve), where colour alone does not say which point is which."""
    sigmas: dict[str, list[float]] = {}
    for row, _, sigma in variants:
        if sigma not in sigmas.setdefault(row, []):
            sigmas[row].append(sigma)
    return [(row, sigma) for row, seen in sigmas.items() if len(seen) > 1 for sigma in seen]


def row_colours(rows: Sequence[str]) -> dict[str, ColorType]:
    """A colour per row of Fig. 4, none repeated: ROW_PALETTE's distinct colours while they last, else colours evenly
    spaced along a continuous map (less easy to tell apart, but a repeated colour would name two rows)."""
    if len(rows) <= len(ROW_PALETTE):
        return dict(zip(rows, ROW_PALETTE, strict=False))
    cmap = matplotlib.colormaps[ROW_COLOURMAP]
    return {row: cmap(0.05 + 0.9 * index / (len(rows) - 1)) for index, row in enumerate(rows)}


def _fig4_legend(figure: Figure, colours: Mapping[str, ColorType], lambdas: Sequence[float]) -> None:
    """One legend beside the panels: the rows' colours, then the markers of the λ values."""
    handles = [Line2D([], [], color=colour, linewidth=3, label=row) for row, colour in colours.items()]
    for lam in lambdas:
        marker = _lambda_style(lam, lambdas)[1]
        handles.append(Line2D([], [], color="0.2", marker=marker, linestyle="none",
                              label="w/o CEM (λ=0)" if lam == 0 else f"w/ CEM, λ={lam:g}"))
    figure.legend(handles=handles, loc="outside right upper", fontsize=7)


def plot_pareto(observations: Sequence[Observation], attacks: Sequence[str], directory: Path) -> list[Path]:
    """Fig. 4: accuracy against attack MSE, one marker per (row, σ, λ) in the row's colour, and an arrow from each
    row's λ = 0 point to its λ > 0 points at the same σ (``cem_steps``)."""
    panels = plot_panels(observations, attacks)
    figure, axes = _figure(len(panels), PANEL_SIZE)
    lambdas = sorted({o.cem_lambda for o in observations})
    rows = list(dict.fromkeys(o.row for o in observations))  # the table's order
    colours = row_colours(rows)
    for ax, (group, attack, column) in zip(axes, panels, strict=False):
        curves: dict[tuple[str, float], list[Point]] = {}
        points: dict[tuple[str, float, float], Point] = {}
        means = pareto_means(observations, group, mse_metric(attack, column))
        labelled = set(sigma_labels(list(means)))
        for (row, lam, sigma), (x, y) in means.items():
            ax.errorbar(x.mean, y.mean, xerr=None if math.isnan(x.half_width) else x.half_width,
                        yerr=None if math.isnan(y.half_width) else y.half_width, linestyle="none",
                        markersize=6, elinewidth=0.8, capsize=2, color=colours[row],
                        marker=_lambda_style(lam, lambdas)[1])
            if (row, sigma) in labelled:  # once per (row, σ), on its lowest λ's point
                labelled.discard((row, sigma))
                ax.annotate(f"σ={sigma:g}", (x.mean, y.mean), fontsize=6, xytext=(3, 3), textcoords="offset points",
                            color=colours[row])
            points[(row, lam, sigma)] = (x.mean, y.mean)
            curves.setdefault((row, lam), []).append((x.mean, y.mean))
        for (row, lam), curve in curves.items():
            if len(curve) > 1:
                xs, ys = zip(*curve, strict=True)
                ax.plot(xs, ys, linewidth=0.7, alpha=0.6, color=colours[row], linestyle="-" if lam == 0 else "--")
        for row, start, end, _ in cem_steps(points):
            ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "linewidth": 0.7, "alpha": 0.7,
                                                              "color": colours[row], "shrinkA": 4, "shrinkB": 4})
        ax.set_title(f"{group}\n{attack}, {column} column", fontsize=8)
        ax.set_xlabel(f"{attack} attack MSE ({column}) ↑ more private")
        ax.set_ylabel("test accuracy % ↑")
        ax.grid(alpha=0.3)
    if panels:
        _fig4_legend(figure, colours, lambdas)
    else:
        axes[0].text(0.5, 0.5, "no stored cells yet", ha="center", va="center")
    figure.suptitle("Accuracy vs attack MSE (paper Fig. 4)")
    return _save(figure, directory, "pareto")


def plot_mse_vs_entropy(observations: Sequence[Observation], attacks: Sequence[str], directory: Path) -> list[Path]:
    """Fig. 3: each model's attack MSE against its recorded conditional-entropy bound."""
    panels = plot_panels(observations, attacks)
    figure, axes = _figure(len(panels), PANEL_SIZE)
    lambdas = sorted({o.cem_lambda for o in observations})
    for ax, (group, attack, column) in zip(axes, panels, strict=False):
        metric = mse_metric(attack, column)
        seen = [o for o in observations if o.group == group and metric in o.values]
        bounded = [(o.entropy_bound, o) for o in seen if o.entropy_bound is not None and o.values[metric] > 0]
        for lam in lambdas:
            points = [(bound, o.values[metric]) for bound, o in bounded if o.cem_lambda == lam]
            if points:
                color, marker = _lambda_style(lam, lambdas)
                ax.scatter([x for x, _ in points], [y for _, y in points], s=18, color=color, marker=marker)
        if bounded:
            ax.set_yscale("log")
        left_out = len(seen) - len(bounded)
        note = f" ({left_out} without a bound left out)" if left_out else ""
        ax.set_title(f"{group}\n{attack}, {column} column{note}", fontsize=8)
        ax.set_xlabel("entropy_bound: relative H(x|z) lower bound (nats)")
        ax.set_ylabel(f"{attack} attack MSE ({column})")
        ax.grid(alpha=0.3, which="both")
        _legend(ax, lambdas)
    if not panels:
        axes[0].text(0.5, 0.5, "no stored cells yet", ha="center", va="center")
    figure.suptitle("Attack MSE vs conditional entropy (paper Fig. 3)")
    return _save(figure, directory, "mse_vs_entropy")


def plot_galleries(observations: Sequence[Observation], attacks: Sequence[str], store: CellStore,
                   directory: Path) -> list[tuple[str, list[Path]]]:
    """Per (group, row): the first seed's reconstruction grid of each variant and attack; (title, paths) each."""
    written = []
    keys = list(dict.fromkeys((o.group, o.row) for o in observations))
    for group, row in keys:
        seen = [o for o in observations if o.group == group and o.row == row]
        seed = min(o.seed for o in seen)
        variants = sorted((o for o in seen if o.seed == seed), key=lambda o: (o.sigma, o.cem_lambda))
        cells = [(o, attack) for o in variants for attack in attacks
                 if attack in o.attack_keys
                 and (store.output_dir("attack", o.attack_keys[attack]) / GRID_FILE).is_file()]
        if not cells:
            continue
        images = {(o.train_key, attack): imread(store.output_dir("attack", o.attack_keys[attack]) / GRID_FILE)
                  for o, attack in cells}
        height, width = next(iter(images.values())).shape[:2]
        shown = [attack for attack in attacks if any(stored == attack for _, stored in cells)]  # none not run yet
        columns = len(shown)
        panel_height = GALLERY_WIDTH * height / width + 0.3  # the image at the panel's width, and its title
        figure = Figure(figsize=(GALLERY_WIDTH * columns, panel_height * len(variants) + 0.5), layout="constrained")
        for index, o in enumerate(variants):
            for position, attack in enumerate(shown):
                ax = figure.add_subplot(len(variants), columns, index * columns + position + 1)
                ax.set_axis_off()
                image = images.get((o.train_key, attack))
                if image is None:
                    ax.text(0.5, 0.5, f"{attack}: not stored", ha="center", va="center", fontsize=7)
                    continue
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
                ax.set_title(f"σ={o.sigma:g} λ={o.cem_lambda:g} · {attack} (MSE train "
                             f"{o.values.get(mse_metric(attack, 'train'), float('nan')):.4f}, infer "
                             f"{o.values.get(mse_metric(attack, 'infer'), float('nan')):.4f})", fontsize=7)
        figure.suptitle(f"{row} · {group}, seed {seed}\noriginals above reconstructions: train column (left), "
                        "infer column (right)", fontsize=8)
        stem = f"gallery-{slugify(group)}-{slugify(row)}"
        written.append((f"{row} · {group}", _save(figure, directory, stem)))
    return written
