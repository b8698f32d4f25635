"""The outbox relay: publishes committed outbox rows to JetStream, at least once."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf import symbol_database
from google.protobuf.message import DecodeError
from sqlalchemy import insert, or_, select, update
from visionmesh.api.common.v1 import job_pb2
from visionmesh.common.db import Database
from visionmesh.common.errors import FailedPrecondition
from visionmesh.common.events import EventBus
from visionmesh.common.logging import get_logger
from visionmesh.gateway.core import states
from visionmesh.gateway.core.jobs import JobWatchers, next_event, now, state_event
from visionmesh.gateway.db import models as db

_log = get_logger(__name__)

DEAD_LETTER_REASON = "OUTBOX_DEAD_LETTER"
"""`JobError.reason` of a job whose request could never be handed to the workers."""


class _Unpublishable(Exception):
    """The row can never be published (unknown type, undecodable, too large): dead-letter it."""


class _Rejected(Exception):
    """The server refused the message (no stream for the subject, a JetStream API error).

    Possibly a passing misconfiguration, so it is retried, but only `max_attempts` times.
    """


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    subject: str
    msg_id: str
    payload_type: str
    payload: bytes
    job_id: str
    attempts: int


@dataclass(slots=True)
class _Round:
    """What one relay round did."""

    claimed: int = 0
    published: list[_Row] = field(default_factory=list)
    retried: list[tuple[_Row, str]] = field(default_factory=list)
    dead: list[tuple[_Row, str]] = field(default_factory=list)


def _backoff(base: float, failures: int, cap: float) -> float:
    """`base` doubled per failure, at most `cap`; the exponent is bounded because a row can
    fail for hours (2 ** 1024 no longer converts to a float)."""
    return min(base * 2 ** min(failures, 32), cap)


class OutboxRelay:
    """Moves outbox rows to JetStream; the message id (job id) makes re-sends harmless.

    A round claims a batch of rows in a short transaction (SKIP LOCKED on PostgreSQL, and
    a `claimed_until` lease on every backend, so several gateway replicas can relay side
    by side without sending the same row at once), commits, publishes outside any
    transaction, then records the outcome in a second short transaction. Holding a
    transaction across the publish would hold SQLite's only write lock, or PostgreSQL row
    locks on the jobs, for as long as NATS takes to answer: a NATS outage would stall
    every other write of the gateway.

    A row whose publish fails waits out its own backoff (through `claimed_until`) and is
    retried: a job accepted while NATS is down stays PENDING until NATS is back. A row
    that can never be published is dead-lettered and its job FAILED, so one bad row
    neither blocks nor slows down the others.
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
        lease_seconds: float = 30.0,
        max_attempts: int = 5,
        max_retry_seconds: float = 10.0,
    ) -> None:
        self._db = db
        self._bus = bus
        self._watchers = watchers
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self.publish_timeout = publish_timeout
        """Seconds one publish may wait for the stream's ack."""
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._wakeup = asyncio.Event()

    def wakeup(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        errors = 0
        while True:
            self._wakeup.clear()
            try:
                result = await self._round()
            except Exception:  # keep relaying whatever a single round hits
                _log.exception("outbox relay round failed")
                errors += 1
            else:
                errors = 0
                if result.claimed == self._batch_size and not result.retried:
                    continue  # more rows are waiting (and NATS takes them)
            # Failed rows wait out their own backoff, so only a failing database (a round
            # that raised) slows the loop down.
            wait = _backoff(self._poll_seconds, errors, 10.0) if errors else self._poll_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), wait)

    async def relay_once(self) -> tuple[int, int]:
        """Relays one batch; returns (published, failed) counts, dead letters counted failed."""
        result = await self._round()
        return len(result.published), len(result.retried) + len(result.dead)

    async def _round(self) -> _Round:
        rows, claimed = await self._claim()
        result = _Round(claimed=claimed)
        if not rows:
            return result
        outcomes = await asyncio.gather(
            *(self._publish(row) for row in rows), return_exceptions=True
        )
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome is None:
                result.published.append(row)
            elif not isinstance(outcome, Exception):
                raise outcome  # cancelled: the lease runs out and another round sends it
            elif isinstance(outcome, _Unpublishable) or (
                isinstance(outcome, _Rejected) and row.attempts + 1 >= self._max_attempts
            ):
                result.dead.append((row, str(outcome) or repr(outcome)))
            else:
                result.retried.append((row, str(outcome) or repr(outcome)))
        changed = await self._settle(result)
        if result.retried:
            _log.warning(
                "outbox publish failed; retrying later",
                failed=len(result.retried),
                published=len(result.published),
                error=result.retried[0][1],
            )
        for row, error in result.dead:
            _log.error(
                "outbox row dead-lettered",
                outbox_id=row.id,
                subject=row.subject,
                job_id=row.job_id,
                error=error,
            )
        for job_id in changed:
            self._watchers.notify(job_id)
        return result

    async def _claim(self) -> tuple[list[_Row], int]:
        """Takes due rows for this relay until the lease ends; the rest of the round runs
        outside this transaction. Returns the rows to publish and how many rows it took."""
        outbox = db.OutboxMessage
        at = now()
        # The lease outlives the publish, so no other replica sends the row meanwhile; if
        # this one dies, the row is due again once the lease ends.
        lease = timedelta(seconds=max(self._lease_seconds, 3 * self.publish_timeout))
        async with self._db.session() as session:
            query = (
                select(
                    outbox.id,
                    outbox.subject,
                    outbox.msg_id,
                    outbox.payload_type,
                    outbox.payload,
                    outbox.job_id,
                    outbox.attempts,
                )
                .where(
                    outbox.published_at.is_(None),
                    outbox.dead_lettered_at.is_(None),
                    or_(outbox.claimed_until.is_(None), outbox.claimed_until <= at),
                )
                .order_by(outbox.id)
                .limit(self._batch_size)
            )
            if self._db.is_postgresql:
                # Rows another replica is claiming right now are skipped, not waited for.
                query = query.with_for_update(skip_locked=True)
            rows = [_Row(**row._mapping) for row in (await session.execute(query)).all()]
            if not rows:
                return [], 0
            job_ids = {row.job_id for row in rows if row.job_id}
            ended: set[str] = set()
            if job_ids:
                # No lock on the jobs: a job cancelled after this read still gets its
                # request sent, and its worker skips it on the cancel control message.
                ended = set(
                    (
                        await session.scalars(
                            select(db.Job.id).where(
                                db.Job.id.in_(job_ids), db.Job.state.in_(states.TERMINAL)
                            )
                        )
                    ).all()
                )
            # A job that ended (cancelled) before its request went out needs no request.
            skipped = [row.id for row in rows if row.job_id in ended]
            due = [row for row in rows if row.job_id not in ended]
            if skipped:
                await session.execute(
                    update(outbox).where(outbox.id.in_(skipped)).values(published_at=at)
                )
            if due:
                await session.execute(
                    update(outbox)
                    .where(outbox.id.in_([row.id for row in due]))
                    .values(claimed_until=at + lease)
                )
        return due, len(rows)

    async def _settle(self, result: _Round) -> set[str]:
        """Records a round's outcome in one short transaction; returns the jobs it changed."""
        outbox = db.OutboxMessage
        at = now()
        changed: set[str] = set()
        async with self._db.session() as session:
            if result.published:
                await session.execute(
                    update(outbox)
                    .where(outbox.id.in_([row.id for row in result.published]))
                    .values(published_at=at, claimed_until=None)
                )
            for row, error in result.retried:
                retry_in = _backoff(self._poll_seconds, row.attempts + 1, self._max_retry_seconds)
                await session.execute(
                    update(outbox)
                    .where(outbox.id == row.id)
                    .values(
                        attempts=outbox.attempts + 1,
                        last_error=error[:2000],
                        claimed_until=at + timedelta(seconds=retry_in),
                    )
                )
            for row, error in result.dead:
                await session.execute(
                    update(outbox)
                    .where(outbox.id == row.id)
                    .values(
                        attempts=outbox.attempts + 1,
                        last_error=error[:2000],
                        dead_lettered_at=at,
                        claimed_until=None,
                    )
                )
            queued = {row.job_id for row in result.published if row.job_id}
            failed = {row.job_id: error for row, error in result.dead if row.job_id}
            if not queued and not failed:
                return changed
            job_query = (
                select(db.Job).where(db.Job.id.in_(queued | set(failed))).order_by(db.Job.id)
            )
            if self._db.is_postgresql:
                # Event appends bump last_event_sequence: lock like every other writer.
                job_query = job_query.with_for_update()
            events: list[dict[str, Any]] = []
            for job in (await session.scalars(job_query)).all():
                if job.id in failed and job.state not in states.TERMINAL:
                    job_error = job_pb2.JobError(
                        reason=DEAD_LETTER_REASON,
                        message=f"the job request could not be handed to workers: {failed[job.id]}"[
                            :2000
                        ],
                    )
                    job.state = states.FAILED
                    job.error_reason = job_error.reason
                    job.error_message = job_error.message
                    job.ended_at = at
                    events.append(
                        next_event(
                            job,
                            source_key="gateway/dead-letter",
                            event=state_event(states.FAILED, job_error),
                            at=at,
                        )
                    )
                    changed.add(job.id)
                elif job.id in queued and job.state == states.PENDING:
                    job.state = states.QUEUED
                    events.append(
                        next_event(
                            job,
                            source_key="gateway/queued",
                            event=state_event(states.QUEUED),
                            at=at,
                        )
                    )
                    changed.add(job.id)
            if events:
                await session.execute(insert(db.JobEvent), events)
        return changed

    async def _publish(self, row: _Row) -> None:
        try:
            message_class = symbol_database.Default().GetSymbol(row.payload_type)
        except KeyError:
            raise _Unpublishable(f"unknown payload type {row.payload_type!r}") from None
        try:
            message = message_class.FromString(row.payload)
        except DecodeError as exc:
            raise _Unpublishable(f"undecodable {row.payload_type}: {exc}") from exc
        try:
            await self._bus.publish(
                row.subject, message, msg_id=row.msg_id, timeout=self.publish_timeout
            )
        except (
            nats.errors.MaxPayloadError,
            nats.errors.BadSubjectError,
            nats.errors.BadHeaderError,
        ) as exc:
            raise _Unpublishable(f"publish refused: {exc!r}") from exc
        except FailedPrecondition as exc:  # no stream stores the subject
            raise _Rejected(str(exc)) from exc
        except nats.js.errors.ServiceUnavailableError as exc:
            raise ConnectionError(f"publish failed: {exc!r}") from exc
        except nats.js.errors.APIError as exc:
            raise _Rejected(f"publish rejected: {exc!r}") from exc
        # Anything else (timeouts, connection lost, reconnecting) is an outage, not the
        # row's fault: it is retried for as long as it takes, never dead-lettered.
