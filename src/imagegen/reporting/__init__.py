"""Reports rendered for people: markdown and a self-contained HTML page with charts."""

from imagegen.reporting.markdown import render_markdown
from imagegen.reporting.page import render_html

__all__ = ["render_html", "render_markdown"]
