"""``python -m swarmbinder.config`` prints the option reference kept in docs/config.md."""

from .docs import render_markdown

print(render_markdown(), end="")
