"""Line charts as inline SVG, drawn on the server: no script, no library, nothing fetched.

    svg = line_chart([Series("charged", "#2563eb", [(t0, 0), (t1, 3000)])], unit="units")

The SVG scales to its container's width (``viewBox``); values are step lines (a total holds
until the next sample). Returns ``markupsafe.Markup`` for a Jinja template.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

__all__ = ["Series", "line_chart"]

_RIGHT, _TOP, _BOTTOM = 12, 12, 30


@dataclass(frozen=True, slots=True)
class Series:
    """One line: a name for the legend, a CSS colour, and (unix time, value) points."""

    name: str
    color: str
    points: Sequence[tuple[float, float]]
    step: bool = True  # a running total (step) rather than a rate (straight segments)


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}" if value % 1 else f"{int(value)}"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S" if t % 60 else "%H:%M", time.gmtime(t))


def line_chart(series: Sequence[Series], *, unit: str = "", title: str = "",
               wide: bool = False) -> Markup:
    """An SVG chart of ``series`` over a shared time axis (UTC clock labels). ``wide``: drawn
    for a full-width card (the stylesheet sizes its text per screen through the class)."""
    _W, _H = (900, 240) if wide else (480, 220)
    _LEFT = 80
    points = [p for s in series for p in s.points]
    if not points:
        return Markup('<p class="empty">no data yet</p>')
    t0 = min(t for t, _ in points)
    t1 = max(t for t, _ in points)
    if t1 - t0 < 60:
        t0, t1 = t0 - 30, t1 + 30
    top = max(max(v for _, v in points), 1e-9)
    top *= 1.1
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(t: float) -> float:
        return _LEFT + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return _TOP + plot_h - v / top * plot_h

    out = [(f'<svg class="chart {"wide" if wide else "half"}" viewBox="0 0 {_W} {_H}" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">')]
    for frac in (0.0, 0.5, 1.0):
        value = top / 1.1 * frac
        yy = y(value)
        out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{escape(_fmt(value, unit))}</text>')
    for t, anchor in ((t0, "start"), ((t0 + t1) / 2, "middle"), (t1, "end")):
        out.append(f'<text x="{x(t):.1f}" y="{_H - 6}" text-anchor="{anchor}">{_clock(t)}</text>')
    for s in series:
        pts = sorted(s.points)
        if not pts:
            continue
        coords: list[str] = []
        prev: float | None = None
        for t, v in pts:
            if s.step and prev is not None:
                coords.append(f"{x(t):.1f},{y(prev):.1f}")
            coords.append(f"{x(t):.1f},{y(v):.1f}")
            prev = v
        if len(pts) == 1 or s.step:
            coords.append(f"{x(t1):.1f},{y(pts[-1][1]):.1f}")  # a total holds until now
        out.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="{escape(s.color)}" '
                   'stroke-width="2.5" stroke-linejoin="round"/>')
        lt, lv = pts[-1]
        out.append(f'<circle cx="{x(lt):.1f}" cy="{y(lv):.1f}" r="3.5" fill="{escape(s.color)}"/>')
    out.append("</svg>")
    # Swatches as SVG: the console's Content-Security-Policy allows no inline style attribute.
    legend = "".join(f'<span><svg class="swatch" viewBox="0 0 10 10"><rect width="10" height="10" '
                     f'rx="2" fill="{escape(s.color)}"/></svg>{escape(s.name)}</span>' for s in series)
    return Markup("".join(out) + f'<div class="legend">{legend}</div>')
