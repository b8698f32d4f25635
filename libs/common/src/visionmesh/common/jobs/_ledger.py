"""The attempt ledger: one record per job in a JetStream key-value bucket, changed by CAS.

The JOBS work queue alone cannot tell a redelivery from a second copy of the request
(an outbox relay that crashed between publish and mark re-publishes after the
duplicate window), nor a crash from a graceful hand-back. The ledger can:

- `request_seq` is the stream sequence of the request message that owns the job; a
  delivery of any other message for the job is a duplicate and never runs.
- `attempt` is a fencing token, raised by compare-and-set on every start, so two
  workers can never believe they run the same attempt; the gateway drops events from an
  attempt older than the newest it has seen.
- `state` says how the last attempt left: an attempt found still `running` by the next
  claim crashed, and spends one unit of the retry budget; `handed_back` (SIGTERM) and
  `retrying` (transient error, with its own counter) spend none.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass

import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue
from visionmesh.common.events import EventBus
from visionmesh.common.jobs._failures import StaleAttemptError

BUCKET = "JOB_ATTEMPTS"
_CAS_TRIES = 16


class AttemptState(enum.StrEnum):
    RUNNING = "running"
    HANDED_BACK = "handed_back"
    RETRYING = "retrying"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    request_seq: int
    attempt: int
    state: AttemptState
    crashes: int = 0
    transient_retries: int = 0
    hand_backs: int = 0
    worker_id: str = ""

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> AttemptRecord:
        data = json.loads(raw)
        data["state"] = AttemptState(data["state"])
        return cls(**data)


class ClaimVerdict(enum.Enum):
    RUN = "run"
    """This delivery starts attempt `record.attempt`."""
    DUPLICATE = "duplicate"
    """Another request message owns the job: drop this one without running it."""
    ALREADY_ENDED = "already_ended"
    """The job ended but the ack was lost: ack again, run nothing."""
    BUDGET_SPENT = "budget_spent"
    """Attempts crashed `max_crashes` times: fail the job instead of running it."""


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: ClaimVerdict
    record: AttemptRecord


class AttemptLedger:
    """Claims and closes attempts; every write is a compare-and-set on the job's record."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, bus: EventBus, *, ttl_days: float = 30.0) -> AttemptLedger:
        try:
            kv = await bus.js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            kv = await bus.js.create_key_value(
                api.KeyValueConfig(bucket=BUCKET, history=1, ttl=ttl_days * 24 * 3600)
            )
        return cls(kv)

    async def get(self, job_id: str) -> AttemptRecord | None:
        record, _ = await self._read(job_id)
        return record

    async def _read(self, job_id: str) -> tuple[AttemptRecord | None, int | None]:
        try:
            entry = await self._kv.get(job_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, None
        if entry.value is None:
            return None, None
        return AttemptRecord.decode(entry.value), entry.revision

    async def _write(self, job_id: str, record: AttemptRecord, revision: int | None) -> bool:
        try:
            if revision is None:
                await self._kv.create(job_id, record.encode())
            else:
                await self._kv.update(job_id, record.encode(), last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            return False  # someone else wrote first: read again and decide again
        return True

    async def claim(
        self, job_id: str, *, request_seq: int, worker_id: str, max_crashes: int
    ) -> Claim:
        for _ in range(_CAS_TRIES):
            current, revision = await self._read(job_id)
            if current is None:
                record = AttemptRecord(
                    request_seq=request_seq,
                    attempt=1,
                    state=AttemptState.RUNNING,
                    worker_id=worker_id,
                )
                if await self._write(job_id, record, None):
                    return Claim(ClaimVerdict.RUN, record)
                continue
            if current.request_seq != request_seq:
                return Claim(ClaimVerdict.DUPLICATE, current)
            if current.state is AttemptState.ENDED:
                return Claim(ClaimVerdict.ALREADY_ENDED, current)
            crashes = current.crashes + (current.state is AttemptState.RUNNING)
            if crashes >= max_crashes:
                # The verdict is reported as an attempt of its own: reusing the crashed
                # attempt's number would reuse its event ids, which JetStream deduplicates.
                ended = dataclasses.replace(
                    current,
                    attempt=current.attempt + 1,
                    crashes=crashes,
                    state=AttemptState.ENDED,
                    worker_id=worker_id,
                )
                if await self._write(job_id, ended, revision):
                    return Claim(ClaimVerdict.BUDGET_SPENT, ended)
                continue
            record = dataclasses.replace(
                current,
                attempt=current.attempt + 1,
                state=AttemptState.RUNNING,
                crashes=crashes,
                worker_id=worker_id,
            )
            if await self._write(job_id, record, revision):
                return Claim(ClaimVerdict.RUN, record)
        raise TimeoutError(f"attempt record of job {job_id} kept changing under the claim")

    async def close(self, job_id: str, *, attempt: int, state: AttemptState) -> AttemptRecord:
        """Records how `attempt` left; `StaleAttemptError` if a newer attempt took the job."""
        for _ in range(_CAS_TRIES):
            current, revision = await self._read(job_id)
            if current is None or current.attempt != attempt:
                raise StaleAttemptError(f"attempt {attempt} of job {job_id} was superseded")
            record = dataclasses.replace(
                current,
                state=state,
                transient_retries=current.transient_retries + (state is AttemptState.RETRYING),
                hand_backs=current.hand_backs + (state is AttemptState.HANDED_BACK),
            )
            if await self._write(job_id, record, revision):
                return record
        raise TimeoutError(f"attempt record of job {job_id} kept changing under the close")

    async def is_current(self, job_id: str, attempt: int) -> bool:
        current = await self.get(job_id)
        return current is not None and current.attempt == attempt
