"""params.yaml's JSON Schema, generated from the params models (groundwork/params/) so that an editor with a
YAML language server completes keys, shows each key's description and flags a wrong type or range while typing.
params.yaml points to it on its first line (`# yaml-language-server: $schema=params.schema.json`).

The models stay the one source of truth: `python -m groundwork.schema` writes the file again after they change,
and tests/test_params.py fails while the file and the models disagree. Checks that span several keys (a warm-up
shorter than training, a budget below the cheapest model) live in model validators, which a schema cannot carry:
the stages still report those, before any work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundwork.params import Params

SCHEMA_FILE = "params.schema.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def params_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a params.yaml file."""
    return {"$schema": DRAFT, "title": "groundwork params.yaml", **Params.model_json_schema()}


def schema_text() -> str:
    """The schema as the file holds it: indented, keys in the models' order, one trailing newline."""
    return json.dumps(params_schema(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the schema file (default: params.schema.json beside params.yaml in the working directory)."""
    parser = argparse.ArgumentParser(prog="python -m groundwork.schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(SCHEMA_FILE), help="where to write the schema")
    args = parser.parse_args(argv)
    args.out.write_text(schema_text())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
