"""The README's config table states configs/base.py's defaults (the first field of each row)."""

from __future__ import annotations

import ast
import pathlib
import re

from configs import base

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| original option | config field | default (base) |"


def _rows():
    text = README.read_text()
    table = text[text.index(HEADER) :].split("\n\n", 1)[0]
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        yield line, cells


def _top_level_items(cell):
    """``cell`` split at commas outside parentheses: ``(1, 2), (3, 4)`` -> two items."""
    items, depth, current = [], 0, ""
    for char in cell:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [*items, current.strip()]


def _value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def test_config_table_defaults_are_the_config_defaults():
    config = base.get_config()
    checked = 0
    for line, cells in _rows():
        assert len(cells) == 3, line
        fields = re.findall(r"`([a-z_0-9]+(?:\.[a-z_0-9]+)*)`", cells[1])
        fields = [f for f in fields if f.split(".")[0] in config]
        if not fields:
            continue
        node = config
        for part in fields[0].split("."):
            node = node[part]
        stated = _top_level_items(cells[2])[0]
        if not stated.startswith("("):
            stated = stated.split(" ")[0]
        if stated.startswith("`"):  # a path pattern, e.g. `<workdir>/../h0_cache`
            continue
        want = _value(stated)
        got = tuple(node) if isinstance(node, (list, tuple)) else node
        assert got == want, f"README says {fields[0]} = {stated!r}; configs/base.py has {node!r}"
        checked += 1
    assert checked >= 30, checked
