#!/usr/bin/env python3
"""The README's picture of a report: one scenario's throughput and latency charts, cut from
the loadgen's own HTML report (`--html`) into one standalone SVG.

    scripts/report-image.py report.html docs/report.svg [SCENARIO]

SCENARIO names the section to take (default: the first). The charts are the report's own
SVG, unchanged; only the page's chart styles are copied in, so the image draws the same
outside the page.
"""

import re
import sys

STYLE = (
    "<style>.title{font:600 13px system-ui,sans-serif;fill:#343a40}"
    ".tick{font:11px system-ui,sans-serif;fill:#495057}.grid{stroke:#e9ecef}</style>"
)


def main(report, out, scenario=None):
    page = open(report, encoding="utf-8").read()
    sections = re.findall(r"<section><h2>(.*?) <span.*?</section>", page, re.S)
    bodies = re.findall(r"<section>.*?</section>", page, re.S)
    if not bodies:
        sys.exit(f"{report}: no scenario sections (is it a vecrig-loadgen --html report?)")
    index = 0 if scenario is None else sections.index(scenario)
    charts = re.findall(r"<svg .*?</svg>", bodies[index], re.S)[:2]
    if len(charts) < 2:
        sys.exit(f"{report}: scenario {sections[index]!r} has fewer than two charts")
    sizes = [tuple(float(v) for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', c).groups())
             for c in charts]
    width = max(w for w, _ in sizes)
    height = sum(h for _, h in sizes)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:g} {height:g}" '
        f'width="{width:g}" height="{height:g}">{STYLE}'
        f'<rect width="100%" height="100%" fill="#fff"/>'
    ]
    y = 0.0
    for chart, (_, h) in zip(charts, sizes):
        parts.append(f'<g transform="translate(0 {y:g})">{chart}</g>')
        y += h
    parts.append("</svg>\n")
    with open(out, "w", encoding="utf-8") as f:
        f.write("".join(parts))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
