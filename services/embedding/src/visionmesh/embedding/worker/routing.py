"""Which collection each image of a job goes to, and the check of every target before writing.

An image goes to the collection its spec entry names; else to the collection its payload's
routing field names, through the routing map when the value is a key of it (so values need
not be collection names); else to the job's default collection. Every target is resolved and
checked against the job's model and dimension before anything is written, so a job never
half-fills one collection and then fails on another.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.common.errors import AlreadyExists, InvalidArgument, NotFound
from visionmesh.common.jobs import PermanentJobError
from visionmesh.embedding.core.collections import CollectionStore
from visionmesh.embedding.core.vector_store import Distance, VectorStore, space_name

__all__ = [
    "COLLECTION_NAME",
    "Collections",
    "NewCollection",
    "Route",
    "Target",
    "resolve_targets",
    "route",
]

COLLECTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""A collection name, as CreateCollectionRequest.name allows it."""


class NewCollection(NamedTuple):
    """How a job creates a collection routing names and that does not exist yet."""

    model: str
    dim: int
    distance: Distance


class Collections(Protocol):
    """The tenant's collection registry (the embedding service's collections table)."""

    async def resolve(
        self, tenant_id: str, name: str, *, create_with: NewCollection | None
    ) -> tuple[str, str, int, str]:
        """(vector space, model, dim, store key) of the tenant's collection `name`: the
        store key is what the vector store files its points under (the row's id, so a
        recreated collection of the same name never sees old points).

        With `create_with`, a missing collection is created with that model, dimension and
        distance (its space ensured in the vector store); without it, NotFound. The space of
        a collection returned here exists in the vector store.
        """
        ...


@dataclass(frozen=True, slots=True)
class Route:
    """Where one image goes, and which spec field chose it (named in errors)."""

    collection: str
    field: str


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved collection of the job."""

    name: str
    space: str
    model: str
    dim: int
    key: str
    """The vector store's key of the collection (Collections.resolve)."""


def route(
    routing: embedding_pb2.CollectionRouting,
    payload: Mapping[str, Any],
    *,
    collection: str = "",
    collection_field: str = "",
) -> Route:
    """The collection of one image: its own `collection` (named by `collection_field`), else
    the routing field's value mapped through `routing.routes`, else the default collection.

    A payload value that is absent, empty or not a string goes to the default collection.
    """
    if collection:
        return Route(collection, collection_field)
    if routing.field:
        value = _field_value(payload, routing.field)
        if isinstance(value, str) and value:
            if value in routing.routes:
                return Route(routing.routes[value], f"spec.routing.routes[{json.dumps(value)}]")
            return Route(value, "spec.routing.field")
    return Route(routing.default_collection, "spec.routing.default_collection")


def _field_value(payload: Mapping[str, Any], key: str) -> Any:
    node: Any = payload
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


async def resolve_targets(
    collections: Collections,
    tenant_id: str,
    routes: Iterable[Route],
    *,
    model: str,
    dim: int,
    routing: embedding_pb2.CollectionRouting,
) -> dict[str, Target]:
    """Every routed collection, resolved (created with create_missing) and checked.

    Raises (before anything is written): InvalidArgument naming the spec field that chose a
    collection with another model or dimension, or a name that is no collection name;
    PermanentJobError COLLECTION_NOT_FOUND for a missing one without create_missing.
    """
    first: dict[str, Route] = {}
    for one in routes:
        first.setdefault(one.collection, one)
    for name, chosen in first.items():
        if not COLLECTION_NAME.match(name):
            raise InvalidArgument.for_field(
                chosen.field,
                f"routes an image to {name!r}, which is not a collection name "
                "(1-63 lowercase letters, digits, '_' and '-')",
            )
    distance: Distance = _distance(routing.distance)
    create_with = NewCollection(model, dim, distance) if routing.create_missing else None
    targets: dict[str, Target] = {}
    for name in sorted(first):
        chosen = first[name]
        try:
            space, found_model, found_dim, key = await collections.resolve(
                tenant_id, name, create_with=create_with
            )
        except NotFound as exc:
            raise PermanentJobError(
                "COLLECTION_NOT_FOUND",
                f"{chosen.field}: collection {name!r} not found "
                "(create it, or set spec.routing.create_missing)",
            ) from exc
        if found_model != model or found_dim != dim:
            held = f"{found_model!r}" if found_model else "no model (vectors only)"
            raise InvalidArgument.for_field(
                chosen.field,
                f"collection {name!r} holds {found_dim}-d vectors of {held}; this job embeds "
                f"{dim}-d vectors with {model!r}",
                reason="COLLECTION_MODEL_MISMATCH",
            )
        targets[name] = Target(name=name, space=space, model=found_model, dim=found_dim, key=key)
    return targets


def _distance(value: str) -> Distance:
    if value in ("", "cosine"):
        return "cosine"
    if value == "dot":
        return "dot"
    if value == "euclid":
        return "euclid"
    raise InvalidArgument.for_field("spec.routing.distance", f"unknown distance {value!r}")


class JobCollections:
    """The jobs' view of the table (worker.routing.Collections): a collection's space, model,
    dimension and store key, created on demand with its vector space."""

    def __init__(self, collections: CollectionStore, vectors: VectorStore) -> None:
        self._collections = collections
        self._vectors = vectors

    async def resolve(
        self, tenant_id: str, name: str, *, create_with: NewCollection | None
    ) -> tuple[str, str, int, str]:
        row = await self._collections.get(tenant_id, name)
        if row is None:
            if create_with is None:
                raise NotFound(resource_type="collection", resource_id=name)
            space = space_name(create_with.model, create_with.dim, create_with.distance)
            await self._vectors.ensure_space(
                space, dim=create_with.dim, distance=create_with.distance
            )
            try:
                row = await self._collections.create(
                    tenant_id=tenant_id,
                    name=name,
                    model=create_with.model,
                    dim=create_with.dim,
                    distance=create_with.distance,
                    space=space,
                )
            except AlreadyExists:
                # Another attempt (or job) created it meanwhile: use theirs.
                row = await self._collections.get(tenant_id, name)
                if row is None:
                    raise
        return row.space, row.model, row.dim, row.id
