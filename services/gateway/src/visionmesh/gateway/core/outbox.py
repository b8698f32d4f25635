"""The outbox relay: publishes committed outbox rows to JetStream, at least once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from google.protobuf import symbol_database
from sqlalchemy import insert, select, update
from visionmesh.common.db import Database
from visionmesh.common.errors import VisionMeshError
from visionmesh.common.events import EventBus
from visionmesh.common.logging import get_logger
from visionmesh.gateway.core import states
from visionmesh.gateway.core.jobs import JobWatchers, next_event, now, state_event
from visionmesh.gateway.db import models as db

_log = get_logger(__name__)


class OutboxRelay:
    """Moves outbox rows to JetStream; the message id (job id) makes re-sends harmless.

    Rows are claimed with SKIP LOCKED on PostgreSQL, so several gateway replicas can
    relay side by side. A row whose publish fails stays unpublished and is retried with
    backoff: a job accepted while NATS is down stays PENDING until NATS is back.
    """

    def __init__(
        self,
        *,
        db: Database,
        bus: EventBus,
        watchers: JobWatchers,
        poll_seconds: float = 0.5,
        batch_size: int = 256,
        publish_timeout: float = 2.0,
    ) -> None:
        self._db = db
        self._bus = bus
        self._watchers = watchers
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._publish_timeout = publish_timeout
        self._wakeup = asyncio.Event()

    def wakeup(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        backoff = self._poll_seconds
        while True:
            self._wakeup.clear()
            try:
                published, failed = await self.relay_once()
            except Exception:  # keep relaying whatever a single round hits
                _log.exception("outbox relay round failed")
                published, failed = 0, 1
            if published == self._batch_size and not failed:
                continue  # more rows are waiting
            backoff = min(backoff * 2, 10.0) if failed else self._poll_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), backoff)

    async def relay_once(self) -> tuple[int, int]:
        """Publishes one batch; returns (published, failed) counts."""
        outbox = db.OutboxMessage
        async with self._db.session() as session:
            query = (
                select(
                    outbox.id,
                    outbox.subject,
                    outbox.msg_id,
                    outbox.payload_type,
                    outbox.payload,
                    outbox.job_id,
                )
                .where(outbox.published_at.is_(None))
                .order_by(outbox.id)
                .limit(self._batch_size)
            )
            if self._db.is_postgresql:
                query = query.with_for_update(skip_locked=True)
            rows = list((await session.execute(query)).all())
            if not rows:
                return 0, 0
            job_ids = {row.job_id for row in rows if row.job_id}
            jobs: dict[str, db.Job] = {}
            if job_ids:
                job_query = select(db.Job).where(db.Job.id.in_(job_ids)).order_by(db.Job.id)
                if self._db.is_postgresql:
                    # Event appends bump last_event_sequence: lock like every other writer.
                    job_query = job_query.with_for_update()
                jobs = {job.id: job for job in (await session.scalars(job_query)).all()}
            done: list[int] = []
            to_send = []
            for row in rows:
                job = jobs.get(row.job_id)
                if job is not None and job.state in states.TERMINAL:
                    done.append(row.id)  # cancelled before it was sent: nothing to do
                else:
                    to_send.append(row)
            results = await asyncio.gather(
                *(self._publish(row) for row in to_send), return_exceptions=True
            )
            published = failed = 0
            events = []
            for row, result in zip(to_send, results, strict=True):
                if isinstance(result, BaseException):
                    failed += 1
                    await session.execute(
                        update(outbox)
                        .where(outbox.id == row.id)
                        .values(attempts=outbox.attempts + 1, last_error=str(result)[:2000])
                    )
                    continue
                published += 1
                done.append(row.id)
                job = jobs.get(row.job_id)
                if job is not None and job.state == states.PENDING:
                    job.state = states.QUEUED
                    events.append(
                        next_event(
                            job, source_key="gateway/queued", event=state_event(states.QUEUED)
                        )
                    )
            if done:
                await session.execute(
                    update(outbox).where(outbox.id.in_(done)).values(published_at=now())
                )
            if events:
                await session.execute(insert(db.JobEvent), events)
            if failed:
                _log.warning("outbox publish failed", failed=failed, published=published)
        for job_id in job_ids:
            self._watchers.notify(job_id)
        return published, failed

    async def _publish(self, row: Any) -> None:
        message_class = symbol_database.Default().GetSymbol(row.payload_type)
        message = message_class.FromString(row.payload)
        try:
            await self._bus.publish(
                row.subject, message, msg_id=row.msg_id, timeout=self._publish_timeout
            )
        except VisionMeshError:
            raise
        except Exception as exc:  # not connected, connection closed mid-request...
            raise ConnectionError(f"publish failed: {exc!r}") from exc
