"""``rtsql demo``: the main job on the embedded default, over the sample_events/ set."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import catalog, events, generate, ingest, output


def run(con, sample_dir: Path, echo: Callable[[str], None] = print) -> None:
    """Ingest the sample (idempotent), load its catalog and print what the database holds."""
    if not (sample_dir / "events").is_dir():
        echo(f"{sample_dir}/ not found: writing the sample set there with the seeded generator")
        generate.write_sample(sample_dir)
    results = ingest.ingest(con, [sample_dir / "events"])
    echo("Ingested sample events:")
    echo(output.render(["file", "status", "ingested", "rejected", "skipped"],
                       [(Path(r.path).name, r.status, r.ingested, r.rejected, r.skipped)
                        for r in results]).rstrip())
    counts = catalog.load_items(con, sample_dir / "items.csv")
    echo(f"\nCatalog: {counts['upserted']} items upserted.")
    echo("\nDatabase:")
    echo(output.render(["what", "count"], events.summary(con).items()).rstrip())
    echo("\nRejected rows (kept with their reason, file and line):")
    echo(output.render(["source", "line", "reason"],
                       [(Path(s).name, line, reason)
                        for s, line, reason, _ in events.rejects(con, 10)]).rstrip())
