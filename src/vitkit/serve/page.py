"""The web page at GET /: page.html filled in for one model."""

from __future__ import annotations

import html
from pathlib import Path

from .explain import map_caption

PAGE = (Path(__file__).parent / "page.html").read_text()


def render_page(classifier, explainer) -> str:
    """The page for `classifier`'s answers and `explainer`'s maps."""
    shows = "every label above its threshold" if classifier.multi_label else "the top-5 classes"
    return (
        PAGE.replace("{{model}}", html.escape(classifier.name))
        .replace("{{summary}}", html.escape(classifier.summary))
        .replace("{{shows}}", shows)
        .replace("{{map}}", html.escape(map_caption(explainer)))
    )
