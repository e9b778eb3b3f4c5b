"""The soak's chart as a small self-contained SVG (no plotting library needed): requests
per second and latency over time, and the RSS of every web and worker process, with the
faults marked where they happened."""

from __future__ import annotations

from html import escape

WIDTH, PANEL_H, LEFT, RIGHT, TOP, GAP = 960, 190, 70, 170, 40, 60
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _panel(
    out: list[str],
    y0: float,
    title: str,
    unit: str,
    series: list[tuple[str, list[tuple[float, float]]]],
    t_max: float,
    faults: list[tuple[float, str]],
) -> None:
    plot_w = WIDTH - LEFT - RIGHT
    values = [v for _, pts in series for _, v in pts] or [1.0]
    v_max = max(values) * 1.1 or 1.0

    def x(t: float) -> float:
        return LEFT + plot_w * t / t_max

    def y(v: float) -> float:
        return y0 + PANEL_H - PANEL_H * v / v_max

    out.append(
        f'<text x="{LEFT}" y="{y0 - 10}" font-size="14" font-weight="bold">{escape(title)}</text>'
    )
    out.append(
        f'<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>'
    )
    for i in range(5):
        v = v_max * i / 4
        out.append(
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">'
            f"{v:.0f}</text>"
        )
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            'stroke="#eee"/>'
        )
    out.append(
        f'<text x="16" y="{y0 + PANEL_H / 2}" font-size="11" '
        f'transform="rotate(-90 16 {y0 + PANEL_H / 2})" text-anchor="middle">{escape(unit)}</text>'
    )
    step = 30 if t_max > 90 else 10
    for t in range(0, int(t_max) + 1, step):
        out.append(
            f'<text x="{x(t):.1f}" y="{y0 + PANEL_H + 14}" font-size="11" '
            f'text-anchor="middle">{t}s</text>'
        )
    for n, (t, label) in enumerate(faults):
        out.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y0}" y2="{y0 + PANEL_H}" '
            'stroke="#aaa" stroke-dasharray="4 3"/>'
        )
        out.append(
            f'<text x="{x(t) + 3:.1f}" y="{y0 + 11 + 11 * (n % 2)}" font-size="9" fill="#666">'
            f"{escape(label)}</text>"
        )
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if pts:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>'
            )
        ly = y0 + 12 + 15 * i
        out.append(
            f'<line x1="{WIDTH - RIGHT + 10}" x2="{WIDTH - RIGHT + 28}" y1="{ly - 4}" '
            f'y2="{ly - 4}" stroke="{color}" stroke-width="2"/>'
        )
        out.append(f'<text x="{WIDTH - RIGHT + 32}" y="{ly}" font-size="11">{escape(name)}</text>')


def render(
    title: str,
    t_max: float,
    faults: list[tuple[float, str]],
    panels: list[tuple[str, str, list[tuple[str, list[tuple[float, float]]]]]],
) -> str:
    height = TOP + len(panels) * (PANEL_H + GAP) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="20" font-size="15">{escape(title)}</text>',
    ]
    for i, (panel_title, unit, series) in enumerate(panels):
        _panel(out, TOP + 25 + i * (PANEL_H + GAP), panel_title, unit, series, t_max, faults)
    out.append("</svg>")
    return "\n".join(out) + "\n"
