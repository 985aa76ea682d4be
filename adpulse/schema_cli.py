"""``adpulse schema``: the JSON Schema of each topic's records, as the worker checks them."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from streams.schema import SCHEMA_MODELS, file_name, render, topic_schema


@click.command("schema")
@click.argument("topic", required=False, type=click.Choice(sorted(SCHEMA_MODELS)))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write <topic>.schema.json files into this directory instead of printing.",
)
def schema_cli(topic: str | None, out: Path | None) -> None:
    """Print the JSON Schema (draft 2020-12) of TOPIC's record values (all topics without TOPIC).

    Generated from the models the worker validates with; docs/events.md explains every field and the
    rules a schema cannot express (currency, clocks, lateness, size).

    \b
    Examples:
      adpulse schema orders
      adpulse schema --out docs/schemas
    """
    topics = [topic] if topic else sorted(SCHEMA_MODELS)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in topics:
            path = out / file_name(name)
            path.write_bytes(render(topic_schema(name)))
            click.echo(str(path))
        return
    if topic is not None:
        click.echo(render(topic_schema(topic)).decode(), nl=False)
        return
    every = {name: topic_schema(name) for name in topics}
    click.echo(orjson.dumps(every, option=orjson.OPT_INDENT_2).decode())
