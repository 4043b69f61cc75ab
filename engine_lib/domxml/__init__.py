"""Domain XML: the one conversion, from the engine's VM entity to libvirt.

``viewmodel`` computes everything (names, targets, placeholders, boot order)
in Python; the Jinja2 template only loops and prints. ``render`` joins them.
"""

from engine_lib.domxml.render import render, render_redacted

__all__ = ["render", "render_redacted"]
