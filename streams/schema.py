"""JSON Schema (draft 2020-12) of every topic's record value, generated from the models the worker uses.

The files in docs/schemas/ are this module's output (``adpulse schema --out docs/schemas``); a test keeps
them current. A schema says what a well-formed record looks like; a few rules need more than the record
(the configured currency, the clock, the lateness, the size limit), and docs/events.md lists them.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from pydantic import BaseModel

from streams.dlq import DlqRecord
from streams.events import BudgetSetting, ClickEvent, OrderEvent, SpendEvent

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: Topic short name → the model of its record value.
SCHEMA_MODELS: Final[dict[str, type[BaseModel]]] = {
    "clicks": ClickEvent,
    "orders": OrderEvent,
    "spend": SpendEvent,
    "budgets": BudgetSetting,
    "dlq": DlqRecord,
}


def topic_schema(topic: str) -> dict[str, Any]:
    """The JSON Schema of a record value of ``topic`` (a short name of ``SCHEMA_MODELS``)."""
    model = SCHEMA_MODELS[topic]
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": DIALECT,
        "$id": f"{topic}.schema.json",
        **schema,
        "title": f"adpulse.{topic} record value",
    }


def render(schema: dict[str, Any]) -> bytes:
    """The bytes of a schema file: indented JSON and a final newline (stable, for diffs)."""
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n"


def file_name(topic: str) -> str:
    """The schema file of ``topic`` in docs/schemas/."""
    return f"{topic}.schema.json"
