"""What each setting is, read from the settings classes' source: the comment above a field,
its type and default as written, and the validation messages that name it.

One source for the services' `--help` (`load_settings` gives each flag its description)
and for docs/SETTINGS.md (`tools/settings_reference.py`), so neither drifts from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SettingDoc:
    """One field of a settings class, as its source says."""

    name: str
    type: str
    default: str
    description: str
    checks: tuple[str, ...]  # validation messages that name the field


def describe(cls: type[Any]) -> list[SettingDoc]:
    """The fields `cls` itself declares (not its bases'), in declaration order."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    tree = ast.parse(source)
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    own = {f.name for f in dataclasses.fields(cls) if f.init} & set(cls.__annotations__)
    messages = _messages(body)
    docs = []
    for node in body.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        name = node.target.id
        if name not in own:
            continue
        docs.append(
            SettingDoc(
                name=name,
                type=ast.unparse(node.annotation),
                default=_default(node.value),
                description=_comment_above(lines, node.lineno - 1),
                checks=tuple(m for m in messages if re.search(rf"\b{name}\b", m)),
            )
        )
    return docs


def _default(value: ast.expr | None) -> str:
    if value is None:
        return "(required)"
    if isinstance(value, ast.Call) and ast.unparse(value.func).endswith("field"):
        for keyword in value.keywords:
            if keyword.arg == "default_factory":
                factory = keyword.value
                if isinstance(factory, ast.Lambda):
                    return ast.unparse(factory.body)
                return f"{ast.unparse(factory)}()"
            if keyword.arg == "default":
                return ast.unparse(keyword.value)
    return ast.unparse(value)


def _comment_above(lines: list[str], index: int) -> str:
    """The `#` comment lines right above line `index` (0-based), joined."""
    found: list[str] = []
    row = index - 1
    while row >= 0 and lines[row].strip().startswith("#"):
        found.insert(0, lines[row].strip().lstrip("#").strip())
        row -= 1
    return " ".join(found)


def _messages(body: ast.ClassDef) -> list[str]:
    """The literal text of every SettingsError the class raises (f-string holes as `…`)."""
    out = []
    for node in ast.walk(body):
        if not (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("SettingsError")):
            continue
        if not node.args:
            continue
        text = _literal(node.args[0])
        if text:
            out.append(text)
    return out


def _literal(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "…"
            for v in node.values
        )
    if isinstance(node, ast.BinOp):
        return _literal(node.left) + _literal(node.right)
    return ""


def describe_all(cls: type[Any]) -> list[SettingDoc]:
    """The fields of `cls` and of its settings bases (the bases' first); [] without source."""
    docs: list[SettingDoc] = []
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            docs += describe(klass)
        except (OSError, TypeError):  # no source (a frozen build): no descriptions
            return []
    return docs
