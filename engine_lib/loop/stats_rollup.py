"""The statistics history's upkeep: hourly and daily rollups and the retention purge,
run by the engine loop at start and then every hour."""

from __future__ import annotations

import logging

from engine_lib.model import utcnow
from engine_lib.services import stats_history

log = logging.getLogger("kestrel.engine.stats")
# Rollups take only complete hours, so once an hour keeps the hour rows at most an
# hour behind; a run that finds nothing new reads one index range and writes nothing.
INTERVAL_S = 3600.0


class StatsRollup:
    def __init__(self, engine):
        self.engine = engine

    def cycle(self) -> dict:
        with self.engine.store.transaction() as session:
            done = stats_history.rollup(session, utcnow())
        log.info("statistics history: %(hour)d hour rows, %(day)d day rows written, "
                 "%(purged)d rows past retention deleted", done)
        return done
