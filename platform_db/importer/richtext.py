"""Plain text of Payload rich text, for the searchable `pages.content` column.

Payload stores rich text as a tree: Slate (Payload 1-2) is a list of nodes
`{"type": "h2", "children": [{"text": "...", "bold": true}]}`; Lexical (Payload 3) is
`{"root": {"type": "root", "children": [...]}}` with text nodes `{"type": "text",
"text": "..."}`. Block layouts (`layout: [{blockType, richText, ...}]`) nest either.
The tree itself is kept in the row's JSON column, so the page stays renderable by the
same renderer; this module only extracts the words, a paragraph per block-level node.
"""

from __future__ import annotations

from typing import Any

_INLINE = frozenset({"text", "link", "autolink", "linebreak", "tab", "mark", "code-highlight"})
_MAX_DEPTH = 200


def plain_text(value: Any) -> str:
    """The text of a rich-text tree (or of a block layout holding some)."""
    parts: list[str] = []
    _walk(value, parts, 0)
    text = "".join(parts)
    lines = [line.strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def _walk(node: Any, parts: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, list):
        for child in node:
            _walk(child, parts, depth + 1)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "linebreak":
        parts.append("\n")
        return
    text = node.get("text")
    if isinstance(text, str):
        parts.append(text)
    children = node.get("children")
    if isinstance(children, list):
        _walk(children, parts, depth + 1)
        if kind not in _INLINE:
            parts.append("\n")
        return
    # Not a rich-text node: a block or a Lexical root. Look inside for rich text (but not
    # inside ids, urls and other scalars).
    for key, value in node.items():
        if key in ("root", "richText", "content", "columns", "blocks", "layout", "fields") or (
            isinstance(value, dict | list) and key not in ("media", "image", "link")
        ):
            _walk(value, parts, depth + 1)
