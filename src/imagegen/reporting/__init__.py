"""Reports rendered for people: markdown and a self-contained HTML page with charts."""

from imagegen.reporting.render import render_html, render_markdown

__all__ = ["render_html", "render_markdown"]
