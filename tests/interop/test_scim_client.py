"""scim2-client (a real SCIM 2.0 client library) against a live idhub server.

The client discovers ``{issuer}/scim/v2`` (/ServiceProviderConfig, /ResourceTypes, /Schemas), then drives a
provisioning cycle with scim2-models' ``User[EnterpriseUser]`` and ``Group``: create, a filtered GET and a POST
/.search, PATCH, deactivation, group membership, an optimistic-concurrency conflict, a duplicate userName, delete
and the 404 after it. The library validates every response against the SCIM models under its strict policy (an
attribute it does not know is an error, so is a wrong content type or status), so this checks the wire format idhub
produces as much as its behaviour. Its network engine is httpx2 (``scim2-client[httpx2]``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from tests.conftest import Env
from tests.scim.conftest import provisioning_token

try:
    import httpx2
    from scim2_client import UnexpectedStatusCodeException
    from scim2_client.engines.httpx2 import SyncSCIMClient
    from scim2_models import (
        Context,
        Email,
        EnterpriseUser,
        Group,
        GroupMember,
        InvalidFilterException,
        ListResponse,
        Name,
        NotFoundException,
        PatchOp,
        PatchOperation,
        PreconditionFailedException,
        Resource,
        ScimProvider,
        SearchRequest,
        ServiceProviderConfig,
        UnauthorizedException,
        UniquenessException,
        User,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"scim2-client[httpx2] is not installed ({exc})", allow_module_level=True)

pytestmark = pytest.mark.interop

ENTERPRISE_URN = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
SCIM_JSON = "application/scim+json"

FullUser = User[EnterpriseUser]


def full_user(result: object) -> User[EnterpriseUser]:
    """Check the library answered with the composed ``User[EnterpriseUser]`` model (and narrow it for mypy)."""
    assert type(result) is FullUser, result
    return cast(User[EnterpriseUser], result)


def group_of(result: object) -> Group:
    assert type(result) is Group, result
    return result


@dataclass
class Exchange:
    """One request the library sent, and the answer it got."""

    method: str
    path: str
    request_headers: dict[str, str]
    status: int
    content_type: str


@dataclass
class Wire:
    """An httpx2 client bound to a tenant's SCIM base URL, recording what goes over the wire."""

    base_url: str
    token: str
    exchanges: list[Exchange] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx2.Client:
        def record(response: httpx2.Response) -> None:
            request = response.request
            self.exchanges.append(
                Exchange(
                    method=request.method,
                    path=request.url.path.removeprefix(httpx2.URL(self.base_url).path),
                    request_headers={k.lower(): v for k, v in request.headers.items()},
                    status=response.status_code,
                    content_type=response.headers.get("content-type", ""),
                )
            )

        return httpx2.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token or self.token}"},
            event_hooks={"response": [record]},
            timeout=10,
        )

    def last(self, method: str) -> Exchange:
        return next(e for e in reversed(self.exchanges) if e.method == method)


@pytest.fixture
def wire(live: Env) -> Wire:
    """A fresh tenant on the live server, with a provisioning token."""
    tenant = live.tenant()
    return Wire(base_url=f"{tenant.issuer}/scim/v2", token=provisioning_token(live, tenant))


@pytest.fixture
def scim_http(wire: Wire) -> Iterator[httpx2.Client]:
    """The library's HTTP client for that tenant (named apart from conftest's plain ``http``)."""
    with wire.client() as client:
        yield client


def static_client(http: httpx2.Client) -> SyncSCIMClient:
    """A client on scim2-models' own classes; discovery binds them with the resource types idhub publishes."""
    scim = SyncSCIMClient(http, provider=ScimProvider(models=[User, EnterpriseUser, Group], resource_types=()))
    scim.discover()  # /ResourceTypes and /ServiceProviderConfig; the models are known, so not /Schemas
    return scim


def test_scim2_client_discovers_idhub(wire: Wire, scim_http: httpx2.Client) -> None:
    """Discovery from scratch: the library builds its models from idhub's /Schemas and /ResourceTypes."""
    scim = SyncSCIMClient(scim_http)
    scim.discover()
    assert [(e.method, e.path, e.status) for e in wire.exchanges] == [
        ("GET", "/ResourceTypes", 200),
        ("GET", "/Schemas", 200),
        ("GET", "/ServiceProviderConfig", 200),
    ]
    assert all(e.content_type.startswith(SCIM_JSON) for e in wire.exchanges)
    config = scim.provider.config
    assert isinstance(config, ServiceProviderConfig)
    assert config.patch and config.patch.supported
    assert config.filter and config.filter.supported and config.filter.max_results
    assert config.etag and config.etag.supported
    resource_types = {str(rt.name): rt for rt in scim.provider.resource_types}
    assert {name: rt.endpoint for name, rt in resource_types.items()} == {"User": "/Users", "Group": "/Groups"}
    assert [str(ext.schema_) for ext in resource_types["User"].schema_extensions or []] == [ENTERPRISE_URN]
    assert {str(model.__schema__) for model in scim.provider.models} == {
        str(User.__schema__),
        str(Group.__schema__),
        ENTERPRISE_URN,
    }

    # The models built from idhub's /Schemas read and write idhub's resources.
    user_model = scim.get_resource_model("User")
    assert user_model is not None and user_model is not FullUser
    name = f"dyn-{uuid.uuid4().hex[:8]}"
    payload = {
        "schemas": [str(User.__schema__), ENTERPRISE_URN],
        "userName": name,
        "name": {"givenName": "Dyn", "familyName": "Amic"},
        "emails": [{"value": f"{name}@example.com", "type": "work", "primary": True}],
        ENTERPRISE_URN: {"employeeNumber": "42", "department": "R&D"},
    }
    created = scim.create(user_model.model_validate(payload, scim_ctx=Context.RESOURCE_CREATION_REQUEST))
    assert isinstance(created, Resource) and created.id
    dumped = created.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    assert dumped["userName"] == name and dumped[ENTERPRISE_URN] == {"employeeNumber": "42", "department": "R&D"}
    assert "password" not in dumped
    fetched = scim.query(user_model, created.id)
    assert isinstance(fetched, Resource)
    dumped = fetched.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
    assert dumped["name"]["familyName"] == "Amic" and dumped["emails"][0]["value"] == f"{name}@example.com"
    assert scim.delete(user_model, created.id) is None


def test_scim2_client_provisioning_cycle(wire: Wire, scim_http: httpx2.Client) -> None:
    # 1. discovery
    scim = static_client(scim_http)
    user_model = scim.get_resource_model("User")
    assert user_model is FullUser
    assert scim.get_resource_model("Group") is Group
    tag = uuid.uuid4().hex[:8]
    user_name = f"bjensen-{tag}@example.com"

    # 2. create, with a name, a primary work email and the enterprise extension
    user = FullUser(
        user_name=user_name,
        name=Name(given_name="Barbara", family_name="Jensen", formatted="Barbara Jensen"),
        emails=[Email(value=f"bjensen-{tag}@example.com", type=Email.Type.work, primary=True)],
        active=True,
    )
    user[EnterpriseUser] = EnterpriseUser(employee_number="701984", department="Tour Operations")
    created = full_user(scim.create(user))
    sent = wire.last("POST")
    assert (sent.path, sent.status) == ("/Users", 201)
    # httpx2 sends the body as application/json, which RFC 7644 §8.1 lets servers take; idhub answers scim+json.
    assert sent.request_headers["content-type"] == "application/json" and sent.content_type.startswith(SCIM_JSON)
    assert created.id
    assert created.user_name == user_name and created.active is True
    assert created.name and (created.name.given_name, created.name.family_name) == ("Barbara", "Jensen")
    assert created.emails and len(created.emails) == 1
    email = created.emails[0]
    assert (email.value, email.type, email.primary) == (f"bjensen-{tag}@example.com", Email.Type.work, True)
    assert created[EnterpriseUser].employee_number == "701984"
    assert created[EnterpriseUser].department == "Tour Operations"
    assert created.meta and created.meta.resource_type == "User" and created.meta.version
    assert created.meta.location == f"{wire.base_url}/Users/{created.id}"

    # 3. search: GET /Users?filter=userName eq, and POST /Users/.search with a `co` filter
    found = scim.query(FullUser, query_parameters=SearchRequest(filter=f'userName eq "{user_name}"'))
    assert isinstance(found, ListResponse)
    assert found.total_results == 1 and found.resources and len(found.resources) == 1
    assert found.resources[0].id == created.id
    assert found.resources[0][EnterpriseUser].department == "Tour Operations"
    found = scim.search(FullUser, SearchRequest(filter=f'userName co "{tag}"', attributes=["userName"]))
    assert (wire.last("POST").path, wire.last("POST").status) == ("/Users/.search", 200)
    assert isinstance(found, ListResponse)
    assert found.total_results == 1 and found.resources and len(found.resources) == 1
    hit = found.resources[0]
    assert (hit.id, hit.user_name, hit.name) == (created.id, user_name, None)

    # 4. PATCH displayName and the enterprise department; the library makes it conditional (If-Match)
    patch = PatchOp[FullUser](
        operations=[
            PatchOperation[FullUser](op=PatchOperation.Op.replace_, path="displayName", value="Babs Jensen"),
            PatchOperation[FullUser](op=PatchOperation.Op.replace_, path=f"{ENTERPRISE_URN}:department", value="Sales"),
        ]
    )
    patched = full_user(scim.modify(created, patch))
    sent = wire.last("PATCH")
    assert (sent.path, sent.status) == (f"/Users/{created.id}", 200)
    assert sent.request_headers.get("if-match") == created.meta.version
    assert patched.display_name == "Babs Jensen" and patched[EnterpriseUser].department == "Sales"
    assert patched[EnterpriseUser].employee_number == "701984"
    assert patched.meta and patched.meta.version and patched.meta.version != created.meta.version

    # The stale copy is refused: 412, surfaced as the library's precondition error.
    with pytest.raises(PreconditionFailedException) as stale:
        scim.modify(created, patch)
    assert stale.value.to_error().status == 412

    # 5. deactivate (unconditional PATCH by id), then a GET shows active false
    deactivate = PatchOp[FullUser](
        operations=[PatchOperation[FullUser](op=PatchOperation.Op.replace_, path="active", value=False)]
    )
    scim.modify(FullUser, created.id, deactivate)
    assert "if-match" not in wire.last("PATCH").request_headers
    current = full_user(scim.query(FullUser, created.id))
    assert current.active is False and current.display_name == "Babs Jensen"
    # ...and a full replacement (PUT, conditional too) keeps it inactive
    current.title = "Tour Guide"
    replaced = full_user(scim.replace(current))
    assert (wire.last("PUT").status, wire.last("PUT").request_headers.get("if-match")) == (
        200,
        current.meta and current.meta.version,
    )
    assert replaced.title == "Tour Guide" and replaced.active is False
    assert replaced[EnterpriseUser].department == "Sales" and replaced.emails == current.emails

    # 6. a group with the user as member, seen in the user's `groups`
    group = group_of(scim.create(Group(display_name=f"tour-guides-{tag}", members=[GroupMember(value=created.id)])))
    assert (wire.last("POST").path, wire.last("POST").status) == ("/Groups", 201)
    assert group.id and group.members
    assert [m.value for m in group.members] == [created.id]
    current = full_user(scim.query(FullUser, created.id))
    assert current.groups
    assert [(g.value, g.display) for g in current.groups] == [(group.id, group.display_name)]

    # 8. a duplicate userName: idhub's 409 surfaces as the library's uniqueness error
    with pytest.raises(UniquenessException) as duplicate:
        scim.create(FullUser(user_name=user_name))
    error = duplicate.value.to_error()
    assert (error.status, error.scim_type) == (409, "uniqueness")
    assert wire.last("POST").content_type.startswith(SCIM_JSON)

    # 7. delete, then a GET raises the library's not-found error; the membership went with the user
    assert scim.delete(FullUser, created.id) is None
    assert (wire.last("DELETE").path, wire.last("DELETE").status) == (f"/Users/{created.id}", 204)
    with pytest.raises(NotFoundException) as not_found:
        scim.query(FullUser, created.id)
    assert not_found.value.to_error().status == 404
    group_now = group_of(scim.query(Group, group.id))
    assert not group_now.members
    assert scim.delete(group_now) is None  # conditional on the group's current version
    assert wire.last("DELETE").request_headers.get("if-match") == (group_now.meta and group_now.meta.version)


def test_scim2_client_parses_idhub_errors(wire: Wire, scim_http: httpx2.Client) -> None:
    """idhub's error bodies are read into scim2-models' SCIMException hierarchy."""
    scim = static_client(scim_http)
    with pytest.raises(NotFoundException):
        scim.query(FullUser, str(uuid.uuid4()))
    with pytest.raises(NotFoundException):
        scim.delete(Group, str(uuid.uuid4()))

    # The library checks filters itself, so an invalid one is sent unchecked to see the server's answer.
    with pytest.raises(InvalidFilterException) as bad_filter:
        scim.query(
            FullUser,
            query_parameters={"filter": 'userName eq "unterminated'},
            check_request_payload=False,
            url="/Users",
        )
    error = bad_filter.value.to_error()
    assert (error.status, error.scim_type) == (400, "invalidFilter")
    assert wire.last("GET").content_type.startswith(SCIM_JSON)

    # A token idhub does not know: 401 with a SCIM error body.
    with wire.client(token="not-a-provisioning-token") as stranger_http:
        stranger = SyncSCIMClient(stranger_http, provider=scim.provider)
        try:
            stranger.query(FullUser, str(uuid.uuid4()))
        except UnauthorizedException as unauthorized:
            assert unauthorized.to_error().status == 401
        except UnexpectedStatusCodeException as unexpected:  # pragma: no cover - a server bug, reported as such
            pytest.fail(f"idhub answered 401 without a SCIM error body: {unexpected}")
        else:  # pragma: no cover
            pytest.fail("an unknown token was accepted")
    assert wire.exchanges[-1].status == 401


def test_scim2_client_root_search(scim_http: httpx2.Client) -> None:
    """POST /.search spans both resource types; the library reads the mixed page into its composed models."""
    scim = static_client(scim_http)
    tag = uuid.uuid4().hex[:8]
    user = full_user(scim.create(FullUser(user_name=f"root-{tag}", display_name=f"Root {tag} user")))
    group = group_of(scim.create(Group(display_name=f"Root {tag} group")))
    found = scim.search(SearchRequest(filter=f'displayName sw "Root {tag}"'))
    assert isinstance(found, ListResponse) and found.total_results == 2 and found.resources
    assert {(type(r), r.id) for r in found.resources} == {(Group, group.id), (FullUser, user.id)}
    only_users = scim.search(SearchRequest(filter=f'meta.resourceType eq "User" and displayName sw "Root {tag}"'))
    assert isinstance(only_users, ListResponse) and only_users.resources
    assert [r.id for r in only_users.resources] == [user.id]


def test_scim2_client_root_search_on_a_user_attribute(scim_http: httpx2.Client) -> None:
    scim = static_client(scim_http)
    user_name = f"root-{uuid.uuid4().hex[:8]}"
    user = full_user(scim.create(FullUser(user_name=user_name)))
    found = scim.search(SearchRequest(filter=f'userName eq "{user_name}"'))
    assert isinstance(found, ListResponse) and found.resources
    assert [r.id for r in found.resources] == [user.id]
