"""`dunning emails preview --out DIR`: every template rendered for representative cases (worker/delivery/email_previews.py)."""

from __future__ import annotations

from pathlib import Path

import click

from worker.cli.base import emit, main


@main.group()
def emails() -> None:
    """Billing emails."""


@emails.command("preview")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="directory to write the previews and index.html into")
@click.option("--json", "as_json", is_flag=True)
def emails_preview(out: Path, as_json: bool) -> None:
    """Render every template (USD/JPY, with/without card, before/after disruption, every locale) as HTML and text."""
    from config.settings import ConfigError, load_settings
    from worker.delivery.email_previews import write_previews
    try:
        settings = load_settings()
    except ConfigError:
        settings = None  # previews need no service: the sender name is then left out
    written = write_previews(out, settings)
    emit({"out": str(out), "index": str(out / "index.html"), "emails": written}, as_json,
         lambda d: click.echo(f"wrote {len(d['emails'])} previews; open {d['index']}"))
