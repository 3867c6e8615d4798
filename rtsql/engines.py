"""Who builds a full refresh, behind one interface: this process (``Local``, rtsql/refresh.py)
or an Apache Spark job (``Spark``, rtsql/spark.py). Both take a database connection and return
the same ``refresh.RefreshResult`` with the lists, trending and the watermark in place; each
says which item-item measures it builds. ``rtsql refresh --full --engine NAME`` picks one from
``ENGINES``. (The sparse top-K engine inside a build is rtsql/measures/engine.py.)

Incremental refreshes are the local engine's alone: they fold new events into the lists the
last full build left, whichever engine built them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol

from .vocabulary import AUTO, MEASURE_NAMES, SPARK_MEASURES

if TYPE_CHECKING:  # the builds' modules load when a build runs (the CLI starts without them)
    from .refresh import Progress, RefreshResult

Log = Callable[[str], None]


class Engine(Protocol):
    name: ClassVar[str]
    measures: ClassVar[tuple[str, ...]]  # the ``similarity`` values it builds

    def full(self, con, progress: Progress | None = None,
             log: Log = lambda line: None) -> RefreshResult:
        """A full refresh of ``con``'s database; ``progress`` hears a local build's stages,
        ``log`` a Spark build's."""


@dataclass
class Local:
    """This process: every measure, the similarity compute on ``settings threads`` cores."""

    name: ClassVar[str] = "local"
    measures: ClassVar[tuple[str, ...]] = (AUTO,) + MEASURE_NAMES
    drop_external: bool = False  # may drop the events a Spark --events build read

    def full(self, con, progress: Progress | None = None,
             log: Log = lambda line: None) -> RefreshResult:
        from . import refresh

        return refresh.refresh(con, full=True, progress=progress,
                               drop_external=self.drop_external)


@dataclass
class Spark:
    """A PySpark job (``master``: local[2] unless named), the local engine's kernel in its
    executors; cosine lists only (``similarity auto`` means cosine there)."""

    name: ClassVar[str] = "spark"
    measures: ClassVar[tuple[str, ...]] = SPARK_MEASURES
    master: str | None = None
    conf: dict = field(default_factory=dict)
    work: str | os.PathLike | None = None  # keep the export and the job's output here
    events: list[str] = field(default_factory=list)  # Parquet the database does not hold
    mapping: object = None  # ingest.ColumnMapping of ``events``

    def full(self, con, progress: Progress | None = None,
             log: Log = lambda line: None) -> RefreshResult:
        from . import spark

        return spark.refresh(con, master=self.master, conf=self.conf, work=self.work,
                             events=self.events, mapping=self.mapping, log=log)


ENGINES: dict[str, type] = {engine.name: engine for engine in (Local, Spark)}
