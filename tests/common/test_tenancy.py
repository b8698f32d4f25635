"""Keys callers give stay inside their tenant's area of the object store."""

from __future__ import annotations

import pytest
from visionmesh.common.errors import InvalidArgument
from visionmesh.common.tenancy import relative_key, tenant_key, tenant_root


def test_a_relative_key_lands_in_the_tenant_area_and_back() -> None:
    key = tenant_key("t1", "inputs/a.jpg", field="images[0].key")
    assert key == "tenants/t1/inputs/a.jpg"
    assert relative_key("t1", key) == "inputs/a.jpg"
    assert tenant_key("t1", "inputs/", field="spec.input_prefix", prefix=True) == (
        "tenants/t1/inputs/"
    )
    assert tenant_key("t1", "inputs", field="spec.input_prefix", prefix=True) == (
        "tenants/t1/inputs/"
    )


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../t2/a.jpg", "a/../../t2/a.jpg", "a//b.jpg", "./a.jpg", "a\\b.jpg"],
)
def test_keys_that_could_leave_the_tenant_are_refused_naming_the_field(key: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        tenant_key("t1", key, field="images[3].key")
    assert [v.field for v in raised.value.field_violations] == ["images[3].key"]


def test_a_key_of_another_tenant_is_not_relative_to_this_one() -> None:
    with pytest.raises(ValueError):
        relative_key("t1", "tenants/t2/a.jpg")
    with pytest.raises(ValueError):
        tenant_root("a/b")
