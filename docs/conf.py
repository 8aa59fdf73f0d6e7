"""The documentation site: Sphinx with MyST Markdown and the Furo theme.

    python -m sphinx -W -b html docs docs/_build/html      # what the tests build, warnings as errors

The settings reference (settings.md) is generated from ``semisup.config`` while the site builds."""
from semisup.tools.settings_reference import render

project = "semisup: Contrastive Grad-CAM Consistency"
author = "the semisup developers"
extensions = ["myst_parser"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "semisup · CGC"
suppress_warnings = ["myst.header"]  # the included FIDELITY.md / RELIABILITY.md start below level 1 in places


def _generated_settings(app, docname: str, source: list[str]) -> None:
    """settings.md holds a heading and a marker; the tables come from the config's metadata."""
    if docname == "settings":
        source[0] = source[0].replace("<!-- generated: semisup.tools.settings_reference -->", render())


def setup(app):
    app.connect("source-read", _generated_settings)
