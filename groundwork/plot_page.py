"""The page `dvc plots show` writes, drawing with no network. DVC's own page loads vega, vega-lite and vega-embed
from a CDN, so offline every vega plot is blank and no error shows. `.dvc/config` points DVC at this template
instead (`plots.html_template`), which carries the three libraries inline, bundled by vl-convert (its version
pinned in requirements.lock). The template is generated, not committed (900 kB of minified JavaScript): `make`
writes it, and every pipeline flow run writes it again where it is missing.

    python -m groundwork.plot_page [--force]     # write .dvc/offline_plots.html"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from collections.abc import Sequence
from pathlib import Path

from groundwork.data.atomic import atomic_path

PAGE = Path(".dvc") / "offline_plots.html"  # .dvc/config: html_template = offline_plots.html (relative to .dvc/)
VEGA_LITE = "5.21"  # DVC's templates are vega-lite v5 specs
# DVC fills {refresh_tag} and {plot_divs} by plain replacement, so the bundle's own braces are safe; there is no
# {scripts} placeholder, which is where DVC would put its CDN <script> tags.
TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- MARK -->
    <script>
BUNDLE
    </script>
    <script>
        // SVG rather than canvas (a plot can be saved, and a test can read its marks), and a plot that fails
        // to draw says why on the page instead of staying blank
        window.vegaEmbed = ((embed) => (el, spec, options) =>
            embed(el, spec, {renderer: "svg", ...options}).catch((error) => {
                const shown = document.createElement("pre");
                shown.className = "plot-error";
                shown.textContent = `this plot could not be drawn: ${error}`;
                document.querySelector(el).appendChild(shown);
                throw error;
            }))(window.vegaEmbed);
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
        .plot-error {
            color: #b00020;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _mark() -> str:
    """What the page was built from: a page from another vl-convert is rebuilt."""
    return f"vega, vega-lite {VEGA_LITE}, vega-embed, bundled by vl-convert-python " \
           f"{importlib.metadata.version('vl-convert-python')}"


def write_plot_page(root: Path, force: bool = False) -> Path:
    """Write the page template under `root` unless an identical build is there; return its path."""
    page = root / PAGE
    mark = f"<!-- {_mark()} -->"
    if not force and page.is_file() and mark in page.read_text(encoding="utf-8")[:1000]:
        return page
    bundle = _bundle()
    if "</script" in bundle.lower():
        raise RuntimeError("the vega bundle contains '</script' and cannot be inlined in a <script> element")
    with atomic_path(page) as tmp:
        tmp.write_text(TEMPLATE.replace("<!-- MARK -->", mark).replace("BUNDLE", bundle), encoding="utf-8")
    return page


def _bundle() -> str:
    """The three libraries in one script that sets window.vega, vegaLite and vegaEmbed: 4 s of bundling, so kept
    in the user's cache for every project on the machine."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "groundwork" / (
        f"vega-bundle-{importlib.metadata.version('vl-convert-python')}-{VEGA_LITE}.js")
    if cache.is_file():
        return cache.read_text(encoding="utf-8")
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        tmp.write_text(bundle, encoding="utf-8")
    return bundle


def main(argv: Sequence[str] | None = None) -> int:
    """Write the template into the current project."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even when an identical page is there")
    args = parser.parse_args(argv)
    print(write_plot_page(Path.cwd(), force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
