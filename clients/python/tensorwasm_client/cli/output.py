"""`--output json|table`: records and lists printed as JSON or as aligned columns.

Without `--output` each command keeps its usual form (`deploy` and `get` print JSON,
`list` prints lines), so scripts written against it keep working.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import typer

from tensorwasm_client.cli.common import global_options

Document = Mapping[str, object]


def show_record(ctx: typer.Context, document: Document, usual: Callable[[], None]) -> None:
    """One record: JSON, `key  value` lines, or the command's usual form."""
    output = global_options(ctx).output
    if output == "json":
        print(json.dumps(document))
    elif output == "table":
        width = max((len(key) for key in document), default=0)
        for key, value in document.items():
            print(f"{key:<{width}}  {_cell(value)}")
    else:
        usual()


def show_rows(
    ctx: typer.Context,
    rows: Sequence[Document],
    columns: Sequence[str],
    usual: Callable[[], None],
) -> None:
    """Several records: a JSON array, a table with a header, or the usual form."""
    output = global_options(ctx).output
    if output == "json":
        print(json.dumps(list(rows)))
    elif output == "table":
        cells = [[column.upper() for column in columns]]
        cells += [[_cell(row.get(column, "")) for column in columns] for row in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        for line in cells:
            print(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(line, widths, strict=True)
                ).rstrip()
            )
    else:
        usual()


def _cell(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return json.dumps(value)
