"""``rtsql demo``: the main job on the embedded default, over the sample_events/ set."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import catalog, events, generate, ingest, output, recommend, refresh


def _demo_users(con) -> list[str]:
    """A heavy user, a light one (few events), and a visitor with no history (cold start)."""
    ranked = con.execute("""
        select user_id from users join events using (user_key)
        group by user_id order by count(*) desc, user_id""").fetchall()
    picks = [ranked[0][0], ranked[len(ranked) * 3 // 4][0]] if ranked else []
    return picks + ["new-visitor"]


def run(con, sample_dir: Path, echo: Callable[[str], None] = print) -> None:
    """Ingest the sample (idempotent), load its catalog, refresh, and print recommendations
    with their reasons for a few users."""
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
    result = refresh.refresh(con)
    echo(f"\n{result.summary()}")
    users = _demo_users(con)
    for user in users:
        rows = recommend.recommend(con, user, 5)
        echo(f"\nrecommend('{user}', 5):")
        echo(output.render(rows.columns, rows.rows).rstrip())
    rows = recommend.similar_items(con, "sku-1", 3)
    echo("\nsimilar_items('sku-1', 3):")
    echo(output.render(rows.columns, rows.rows).rstrip())
    echo(f"\nThe same from any DuckDB client: SELECT * FROM recommend('{users[0]}', 10);")
