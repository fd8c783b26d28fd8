"""SCIM filters and sortBy run as SQL (RFC 7644 §3.4.2.2, §3.4.2.3), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from idhub.scim.errors import InvalidFilter
from idhub.scim.filter import AttrPath, Compare, Expr, Present, ValuePath, parse_filter
from idhub.scim.query import group_filter, group_sort, user_filter, user_sort
from idhub.storage.models import Group, GroupMember, User, UserValue
from tests.conftest import Env

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
T0 = datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
DAY = timedelta(days=1)
USERS = {"alice", "bob", "carol", "dave"}


def ms(when: datetime) -> str:
    """Render a timestamp the way resources show it (milliseconds, ``Z``)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Directory:
    """A fresh tenant holding a small directory; queries return the labels of matching rows."""

    env: Env
    tenant_id: uuid.UUID
    ids: dict[str, uuid.UUID]

    def _labels(self, ids: Any) -> list[str]:
        names = {v: k for k, v in self.ids.items()}
        return [names[i] for i in ids]

    def _run(self, stmt: Any) -> list[str]:
        async def work() -> list[uuid.UUID]:
            async with self.env.ctx.sessionmaker() as session:
                return list((await session.scalars(stmt)).all())

        return self._labels(self.env.run(work))

    def users(self, text: str) -> set[str]:
        where = user_filter(parse_filter(text), tenant_id=self.tenant_id)
        return set(self._run(select(User.id).where(User.tenant_id == self.tenant_id, where)))

    def groups(self, text: str) -> set[str]:
        where = group_filter(parse_filter(text), tenant_id=self.tenant_id)
        return set(self._run(select(Group.id).where(Group.tenant_id == self.tenant_id, where)))

    def user_order(self, sort_by: str, *, descending: bool = False) -> list[str]:
        key = user_sort(sort_by)
        stmt = select(User.id).where(User.tenant_id == self.tenant_id).order_by(key.desc() if descending else key)
        return self._run(stmt.order_by(User.id))

    def group_order(self, sort_by: str) -> list[str]:
        stmt = select(Group.id).where(Group.tenant_id == self.tenant_id).order_by(group_sort(sort_by), Group.id)
        return self._run(stmt)

    def add(self, *rows: Any) -> None:
        async def work() -> None:
            async with self.env.ctx.sessionmaker() as session:
                session.add_all(rows)
                await session.commit()

        self.env.run(work)


def _value(user: User, attribute: str, position: int = 0, **columns: Any) -> UserValue:
    return UserValue(user_id=user.id, attribute=attribute, position=position, **columns)


def build(env: Env) -> Directory:
    """Create a tenant with four users and three groups (staff contains eng, so alice is in staff indirectly)."""
    tenant_id = env.tenant().id
    ids = {label: uuid.uuid4() for label in ("alice", "bob", "carol", "dave", "eng", "staff", "empty")}
    alice = User(
        id=ids["alice"], tenant_id=tenant_id, username="alice", user_name="Alice", external_id="EXT-1",
        name="Ms Alice Smith", given_name="Alice", family_name="Smith", display_name="Alice Smith", nick_name="Al",
        title="Engineer", user_type="Employee", locale="en-US", enabled=True, employee_number="1001",
        cost_center="CC-1", department="R&D", manager_id=str(ids["bob"]), created_at=T0, updated_at=T0 + DAY,
    )  # fmt: skip
    bob = User(
        id=ids["bob"], tenant_id=tenant_id, username="bob", external_id="ext-1", given_name="Bob", family_name="Jones",
        display_name="Bob Jones", title="Manager", enabled=False, department="Sales",
        created_at=T0 + DAY, updated_at=T0 + 2 * DAY,
    )  # fmt: skip
    carol = User(
        id=ids["carol"], tenant_id=tenant_id, username="100%real", family_name="adams", display_name="Carol",
        title="", enabled=True, department="Sales", created_at=T0 + 2 * DAY, updated_at=T0 + 3 * DAY,
    )  # fmt: skip
    dave = User(
        id=ids["dave"], tenant_id=tenant_id, username="d_ve", nick_name="back\\slash/", enabled=True,
        created_at=T0 + 3 * DAY, updated_at=T0 + 3 * DAY + timedelta(hours=1),
    )  # fmt: skip
    eng = Group(id=ids["eng"], tenant_id=tenant_id, display_name="Engineering", display_name_key="engineering",
                external_id="G-ENG", created_at=T0, updated_at=T0)  # fmt: skip
    staff = Group(id=ids["staff"], tenant_id=tenant_id, display_name="All Staff", display_name_key="all staff",
                  created_at=T0 + DAY, updated_at=T0 + DAY)  # fmt: skip
    empty = Group(id=ids["empty"], tenant_id=tenant_id, display_name="Empty", display_name_key="empty",
                  created_at=T0 + 2 * DAY, updated_at=T0 + 2 * DAY)  # fmt: skip
    directory = Directory(env, tenant_id, ids)
    directory.add(alice, bob, carol, dave, eng, staff, empty)
    directory.add(
        _value(alice, "emails", 0, value="alice@acme.com", type="work", primary=True),
        _value(alice, "emails", 1, value="alice@home.org", type="home"),
        _value(alice, "phoneNumbers", 0, value="+1 555 0100", type="work"),
        _value(alice, "addresses", 0, locality="Paris", country="FR", postal_code="75001", type="work"),
        _value(alice, "x509Certificates", 0, value="MIIcert"),
        _value(alice, "roles", 0, value="admin", display="Administrator"),
        # bob: an acme address that is not "work", and a work address that is not acme.
        _value(bob, "emails", 0, value="bob@acme.com", type="home"),
        _value(bob, "emails", 1, value="zz-bob@work.NET", type="work", primary=True),
        _value(dave, "emails", 0, value="dave@acme.com"),
        GroupMember(group_id=ids["eng"], user_id=ids["alice"]),
        GroupMember(group_id=ids["staff"], member_group_id=ids["eng"]),
        GroupMember(group_id=ids["staff"], user_id=ids["carol"]),
    )
    return directory


@pytest.fixture
def d(env: Env) -> Directory:
    """A fresh tenant and directory for each test."""
    return build(env)


def run_cases(d: Directory, cases: list[tuple[str, set[str]]]) -> None:
    """Check every filter returns exactly the expected users (collects all failures)."""
    wrong = {text: (got, want) for text, want in cases if (got := d.users(text)) != want}
    assert not wrong, wrong


# ------------------------------------------------------------------------------------------------- operators


def test_string_operators_on_case_insensitive_username(d: Directory) -> None:
    run_cases(
        d,
        [
            ('userName eq "ALICE"', {"alice"}),
            ('userName eq "alice"', {"alice"}),
            ('userName ne "Alice"', {"bob", "carol", "dave"}),
            ('userName co "LI"', {"alice"}),
            ('userName sw "B"', {"bob"}),
            ('userName ew "CE"', {"alice"}),
            ('userName gt "bob"', {"dave"}),
            ('userName ge "BOB"', {"bob", "dave"}),
            ('userName lt "bob"', {"alice", "carol"}),
            ('userName le "bob"', {"alice", "bob", "carol"}),
            ("userName pr", USERS),
        ],
    )


def test_display_name_and_name_compare_case_insensitively(d: Directory) -> None:
    run_cases(
        d,
        [
            ('displayName eq "alice smith"', {"alice"}),
            ('displayName co "JONES"', {"bob"}),
            ('name.familyName eq "SMITH"', {"alice"}),
            ('name.givenName sw "b"', {"bob"}),
            ('name.formatted ew "alice smith"', {"alice"}),
            ('name.familyName gt "b"', {"bob", "alice"}),  # "adams" < "b" even though it is lowercase
            ('name[givenName eq "alice" and familyName eq "smith"]', {"alice"}),
            ('title eq "engineer"', {"alice"}),
            ('userType eq "EMPLOYEE"', {"alice"}),
            ('locale eq "en-us"', {"alice"}),
            ('nickName eq "al"', {"alice"}),
        ],
    )


def test_external_id_is_case_exact(d: Directory) -> None:
    run_cases(
        d,
        [
            ('externalId eq "EXT-1"', {"alice"}),
            ('externalId eq "ext-1"', {"bob"}),
            ('externalId co "ext"', {"bob"}),  # SQLite's LIKE alone would also match EXT-1
            ('externalId sw "EXT"', {"alice"}),
            ('externalId ew "t-1"', {"bob"}),
            ('externalId gt "EXT-0"', {"alice", "bob"}),
            ('externalId ne "EXT-1"', {"bob", "carol", "dave"}),
            ("externalId pr", {"alice", "bob"}),
        ],
    )


def test_ne_includes_resources_without_the_attribute(d: Directory) -> None:
    run_cases(
        d,
        [
            ('title ne "Engineer"', {"bob", "carol", "dave"}),
            ('not (title eq "Engineer")', {"bob", "carol", "dave"}),
            ("title eq null", {"dave"}),
            ("title ne null", {"alice", "bob", "carol"}),
        ],
    )


def test_pr_excludes_null_and_empty_string(d: Directory) -> None:
    run_cases(
        d,
        [
            ("title pr", {"alice", "bob"}),
            ("not (title pr)", {"carol", "dave"}),
            ("name pr", {"alice", "bob", "carol"}),
            ("name.givenName pr", {"alice", "bob"}),
        ],
    )


def test_boolean_active(d: Directory) -> None:
    run_cases(
        d,
        [
            ("active eq true", {"alice", "carol", "dave"}),
            ("active eq false", {"bob"}),
            ("active ne true", {"bob"}),
            ("active pr", USERS),
        ],
    )


def test_and_binds_tighter_than_or(d: Directory) -> None:
    run_cases(
        d,
        [
            ('userName eq "alice" or userName eq "bob" and active eq false', {"alice", "bob"}),
            ('(userName eq "alice" or userName eq "bob") and active eq false', {"bob"}),
            ('not (userName eq "alice" or userName eq "bob")', {"carol", "dave"}),
            ('not (active eq true) and userName sw "b"', {"bob"}),
            ('userName eq "alice" and not (title eq "Engineer") or userName eq "dave"', set()),
            ('userName eq "d_ve" or userName eq "alice" and not (title eq "Engineer")', {"dave"}),
        ],
    )


def test_like_wildcards_in_values_are_literal(d: Directory) -> None:
    run_cases(
        d,
        [
            ('userName co "%"', {"carol"}),
            ('userName co "_"', {"dave"}),
            ('userName sw "%"', set()),
            ('userName ew "_"', set()),
            ('userName co "0%r"', {"carol"}),
            ('userName co "d_v"', {"dave"}),
            ('userName co "a%"', set()),
            (r'nickName co "\\"', {"dave"}),
            ('nickName co "/"', {"dave"}),
            ('nickName ew "h/"', {"dave"}),
            ('nickName co "%/"', set()),
        ],
    )


def test_injection_attempts_match_nothing(d: Directory) -> None:
    run_cases(
        d,
        [
            ("""userName eq "alice' OR '1'='1\"""", set()),
            ("""userName co "' OR 1=1 --\"""", set()),
            (r'displayName eq "x\") OR (1=1"', set()),
            ('userName eq "alice; DROP TABLE \\"user\\"; --"', set()),
            ("""externalId co "%' OR '%'='\"""", set()),
        ],
    )
    assert d.users("userName pr") == USERS  # the table is still there


# ------------------------------------------------------------------------------------------------- multi-valued


def test_emails_match_any_element(d: Directory) -> None:
    run_cases(
        d,
        [
            ('emails co "acme"', {"alice", "bob", "dave"}),
            ('emails.value co "@HOME.org"', {"alice"}),
            ('emails.value ew ".net"', {"bob"}),
            ('emails eq "ALICE@acme.com"', {"alice"}),
            ('emails.value sw "alice@home"', {"alice"}),
            ('emails.type eq "work"', {"alice", "bob"}),
            ("emails pr", {"alice", "bob", "dave"}),
            ("not (emails pr)", {"carol"}),
            ("emails.primary pr", {"alice", "bob"}),
            ("emails.type pr", {"alice", "bob"}),
        ],
    )


def test_multi_valued_ne_and_null(d: Directory) -> None:
    run_cases(
        d,
        [
            # Any element differs (alice's home address), or there is no element (carol).
            ('emails ne "alice@acme.com"', USERS),
            ('emails.type ne "home"', {"alice", "bob", "carol", "dave"}),
            ('not (emails.type eq "home")', {"carol", "dave"}),
            ("emails.type eq null", {"carol", "dave"}),
            ("emails.type ne null", {"alice", "bob"}),
        ],
    )


def test_value_path_conditions_apply_to_one_element(d: Directory) -> None:
    run_cases(
        d,
        [
            ('emails[type eq "work" and value co "@acme.com"]', {"alice"}),
            ('emails.type eq "work" and emails.value co "@acme.com"', {"alice", "bob"}),
            ('emails[type eq "work" or value sw "dave"]', {"alice", "bob", "dave"}),
            ('emails[not (type eq "work")]', {"alice", "bob", "dave"}),
            ('emails[primary eq true and type eq "WORK"]', {"alice", "bob"}),
            ('emails[primary eq false and value ew "acme.com"]', {"bob", "dave"}),
            ("emails[type pr]", {"alice", "bob"}),
            ('emails[type ne "work"]', {"alice", "bob", "dave"}),
            (f'{CORE_USER}:emails[type eq "home"]', {"alice", "bob"}),
            ('not (emails[type eq "work"])', {"carol", "dave"}),
        ],
    )


def test_other_multi_valued_attributes(d: Directory) -> None:
    run_cases(
        d,
        [
            ('phoneNumbers.value sw "+1 555"', {"alice"}),
            ('phoneNumbers[type eq "work"]', {"alice"}),
            ('addresses.locality eq "paris"', {"alice"}),
            ('addresses[country eq "fr" and type eq "work" and postalCode sw "75"]', {"alice"}),
            ("addresses.region pr", set()),
            ("addresses pr", {"alice"}),
            ('roles.display eq "administrator"', {"alice"}),
            ('x509Certificates.value eq "MIIcert"', {"alice"}),
            ('x509Certificates.value eq "miicert"', set()),  # binary values are caseExact
            ("ims pr", set()),
        ],
    )


# ------------------------------------------------------------------------------------------------- schemas, ids, meta


def test_enterprise_attributes_with_and_without_urn(d: Directory) -> None:
    bob = d.ids["bob"]
    run_cases(
        d,
        [
            (f'{ENTERPRISE}:department eq "r&d"', {"alice"}),
            (f'{ENTERPRISE}:employeeNumber eq "1001"', {"alice"}),
            (f'{ENTERPRISE}:costCenter sw "cc"', {"alice"}),
            (f'{ENTERPRISE.upper()}:department eq "SALES"', {"bob", "carol"}),
            ('department eq "sales"', {"bob", "carol"}),
            (f'{ENTERPRISE}:manager.value eq "{bob}"', {"alice"}),
            (f'{ENTERPRISE}:manager eq "{bob}"', {"alice"}),
            (f"{ENTERPRISE}:manager pr", {"alice"}),
            (f'{CORE_USER}:userName eq "bob"', {"bob"}),
            (f'{CORE_USER}:name.familyName eq "jones"', {"bob"}),
        ],
    )


def test_id_compares_as_canonical_string(d: Directory) -> None:
    alice = str(d.ids["alice"])
    run_cases(
        d,
        [
            (f'id eq "{alice}"', {"alice"}),
            (f'id eq "{alice.upper()}"', set()),
            ('id eq "not-a-uuid"', set()),
            ('id ne "not-a-uuid"', USERS),
            (f'id ne "{alice}"', {"bob", "carol", "dave"}),
            (f'id sw "{alice[:13]}"', {"alice"}),
            (f'id ew "{alice[-14:]}"', {"alice"}),
            (f'id co "{alice[7:20]}"', {"alice"}),
            ("id pr", USERS),
        ],
    )


def test_meta_datetimes_compare_at_written_precision(d: Directory) -> None:
    modified = T0 + DAY  # alice's lastModified, stored with microseconds
    run_cases(
        d,
        [
            (f'meta.lastModified eq "{ms(modified)}"', {"alice"}),
            (f'meta.lastModified gt "{ms(modified)}"', {"bob", "carol", "dave"}),
            (f'meta.lastModified ge "{ms(modified)}"', USERS),
            (f'meta.lastModified lt "{ms(T0 + 2 * DAY)}"', {"alice"}),
            (f'meta.lastModified le "{ms(T0 + 2 * DAY)}"', {"alice", "bob"}),
            (f'meta.lastModified ne "{ms(modified)}"', {"bob", "carol", "dave"}),
            ('meta.created eq "2025-01-01T12:00:00Z"', {"alice"}),  # the whole second
            ('meta.created eq "2025-01-01T12:00:00.123456Z"', {"alice"}),
            ('meta.created eq "2025-01-01T12:00:00.123457Z"', set()),
            ('meta.created eq "2025-01-01T13:00:00.123+01:00"', {"alice"}),
            ('meta.created lt "2025-01-02T00:00:00"', {"alice"}),  # no offset: UTC
            ("meta.created pr", USERS),
            ('meta.resourceType eq "User"', USERS),
            ('meta.resourceType eq "Group"', set()),
            ('meta.resourceType ne "Group"', USERS),
        ],
    )


# ------------------------------------------------------------------------------------------------- groups


def test_user_groups_direct_and_nested(d: Directory) -> None:
    eng, staff = d.ids["eng"], d.ids["staff"]
    run_cases(
        d,
        [
            (f'groups.value eq "{eng}"', {"alice"}),
            (f'groups eq "{staff}"', {"alice", "carol"}),  # alice through eng
            (f'groups[value eq "{staff}" and type eq "indirect"]', {"alice"}),
            (f'groups[value eq "{staff}" and type eq "direct"]', {"carol"}),
            ('groups.display eq "ENGINEERING"', {"alice"}),
            ('groups.display sw "all"', {"alice", "carol"}),
            ("groups pr", {"alice", "carol"}),
            ('groups.value eq "not-a-uuid"', set()),
            (f'groups.value eq "{d.ids["empty"]}"', set()),
        ],
    )


def test_user_groups_stay_in_the_tenant_and_survive_cycles(env: Env, d: Directory) -> None:
    other = env.tenant().id
    foreign = Group(id=uuid.uuid4(), tenant_id=other, display_name="Foreign", display_name_key="foreign")
    d.add(foreign)
    # Rows the service would refuse: a cross-tenant membership and a nesting cycle.
    d.add(
        GroupMember(group_id=foreign.id, user_id=d.ids["alice"]),
        GroupMember(group_id=d.ids["eng"], member_group_id=d.ids["staff"]),
    )
    assert d.users(f'groups.value eq "{foreign.id}"') == set()
    assert d.users(f'groups.value eq "{d.ids["eng"]}"') == {"alice", "carol"}


def test_group_filters(d: Directory) -> None:
    alice, carol, eng = d.ids["alice"], d.ids["carol"], d.ids["eng"]
    cases = [
        ('displayName eq "engineering"', {"eng"}),
        ('displayName co "STAFF"', {"staff"}),
        ('displayName gt "e"', {"eng", "empty"}),
        ('externalId eq "G-ENG"', {"eng"}),
        ('externalId eq "g-eng"', set()),
        (f'members.value eq "{alice}"', {"eng"}),  # direct members only
        (f'members eq "{carol}"', {"staff"}),
        (f'members.value eq "{eng}"', {"staff"}),
        ('members.value eq "not-a-uuid"', set()),
        (f'members.value sw "{str(carol)[:9]}"', {"staff"}),
        ('members.type eq "group"', {"staff"}),
        ('members[type eq "User" and display sw "car"]', {"staff"}),
        ('members.display co "alice smith"', {"eng"}),
        ("members pr", {"eng", "staff"}),
        ("not (members pr)", {"empty"}),
        (f'id eq "{eng}"', {"eng"}),
        (f'{CORE_GROUP}:displayName sw "e"', {"eng", "empty"}),
        ('meta.created gt "2025-01-01T12:00:00.123Z"', {"staff", "empty"}),
        ('meta.resourceType eq "Group"', {"eng", "staff", "empty"}),
    ]
    wrong = {text: (got, want) for text, want in cases if (got := d.groups(text)) != want}
    assert not wrong, wrong


# ------------------------------------------------------------------------------------------------- sorting


def test_sort_by_username_family_name_and_dates(d: Directory) -> None:
    assert d.user_order("userName") == ["carol", "alice", "bob", "dave"]
    assert d.user_order("userName", descending=True) == ["dave", "bob", "alice", "carol"]
    # Case-insensitive (RFC 7644 §3.4.2.3); dave has no family name, where NULLs go is the database's default.
    assert [u for u in d.user_order("name.familyName") if u != "dave"] == ["carol", "bob", "alice"]
    assert d.user_order("meta.created", descending=True) == ["dave", "carol", "bob", "alice"]
    assert d.user_order(f"{CORE_USER}:meta.lastModified") == ["alice", "bob", "carol", "dave"]
    assert [u for u in d.user_order(f"{ENTERPRISE}:department") if u != "dave"][:1] == ["alice"]
    assert sorted(d.user_order("meta.resourceType")) == sorted(USERS)


def test_sort_by_multi_valued_uses_primary_then_first(d: Directory) -> None:
    # alice: alice@acme.com (primary); bob: zz-bob@work.NET (primary, second); dave: dave@acme.com (first).
    assert [u for u in d.user_order("emails") if u != "carol"] == ["alice", "dave", "bob"]
    assert d.user_order("addresses.locality")[0 if d.env.backend == "postgresql" else -1] == "alice"


def test_group_sort(d: Directory) -> None:
    assert d.group_order("displayName") == ["staff", "empty", "eng"]
    assert d.group_order("meta.created") == ["eng", "staff", "empty"]


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text",
    [
        'nosuch eq "x"',
        'name.nosuch eq "x"',
        'userName.sub eq "x"',
        'name eq "x"',  # complex: a sub-attribute is required
        'addresses eq "Paris"',
        'password eq "secret"',
        "password pr",
        f'{CORE_GROUP}:userName eq "x"',
        f'{CORE_USER}:department eq "x"',
        'urn:example:nosuch:2.0:User:userName eq "x"',
        'emails[nosuch eq "x"]',
        'userName[value eq "x"]',
        'active eq "yes"',
        "active eq 1",
        "active gt true",
        "userName eq 5",
        "userName eq true",
        "userName gt null",
        "userName co null",
        "emails.primary co true",
        'meta.created eq "yesterday"',
        'meta.created eq "2025-02-30T00:00:00Z"',
        'meta.created eq "9999-12-31T23:59:59Z"',
        'meta.created eq "0001-01-01T00:00:00+01:00"',
        'meta.created co "2025"',
        "meta.created eq 5",
        'members eq "x"',
        'groups.$ref eq "x"',
    ],
)
def test_invalid_user_filters_raise(text: str) -> None:
    with pytest.raises(InvalidFilter):
        user_filter(parse_filter(text), tenant_id=uuid.uuid4())


@pytest.mark.parametrize(
    "expr",
    [
        Compare(AttrPath(None, "active"), "gt", True),
        Compare(AttrPath(None, "userName"), "gt", None),
        Compare(AttrPath(None, "userName"), "co", None),
        Compare(AttrPath(None, "emails", "primary"), "co", True),
        Compare(AttrPath(None, "meta", "created"), "lt", None),
        Compare(AttrPath(None, "meta", "resourceType"), "co", None),
        ValuePath(AttrPath(None, "emails"), ValuePath(AttrPath(None, "type"), Present(AttrPath(None, "value")))),
        ValuePath(AttrPath(None, "emails"), Present(AttrPath(CORE_USER, "type"))),
        ValuePath(AttrPath(None, "emails"), Present(AttrPath(None, "type", "value"))),
        ValuePath(AttrPath(None, "emails", "value"), Present(AttrPath(None, "type"))),
    ],
)
def test_invalid_trees_the_parser_never_builds_raise(expr: Expr) -> None:
    with pytest.raises(InvalidFilter):
        user_filter(expr, tenant_id=uuid.uuid4())


@pytest.mark.parametrize("text", ['userName eq "x"', 'members.nosuch eq "x"', f'{CORE_USER}:displayName eq "x"'])
def test_invalid_group_filters_raise(text: str) -> None:
    with pytest.raises(InvalidFilter):
        group_filter(parse_filter(text), tenant_id=uuid.uuid4())


@pytest.mark.parametrize(
    "sort_by", ["", "nosuch", "password", "name", "addresses", "groups", 'emails[type eq "work"].value', "a..b"]
)
def test_invalid_user_sort_raises(sort_by: str) -> None:
    with pytest.raises(InvalidFilter):
        user_sort(sort_by)


@pytest.mark.parametrize("sort_by", ["members", "userName", "members.value"])
def test_invalid_group_sort_raises(sort_by: str) -> None:
    with pytest.raises(InvalidFilter):
        group_sort(sort_by)


# ------------------------------------------------------------------------------------------------- Entra ID's form


def test_user_filter_entra_value_path_sub_attribute_matches_one_element(d: Directory) -> None:
    # Microsoft Entra ID's emails[type eq "work"].value eq "x": the work email must be x (one element matches both).
    run_cases(
        d,
        [
            ('emails[type eq "work"].value eq "alice@acme.com"', {"alice"}),
            ('emails[type eq "work"].value eq "ALICE@ACME.COM"', {"alice"}),
            # bob: home bob@acme.com, work zz-bob@work.NET; his work element matches the brackets, not the value.
            ('emails[type eq "work"].value eq "bob@acme.com"', set()),
            ('emails[type eq "home"].value eq "bob@acme.com"', {"bob"}),
            ('emails.type eq "work" and emails.value eq "bob@acme.com"', {"bob"}),  # separate elements
            ('emails[type eq "work"].value ew "acme.com"', {"alice"}),
            ('emails[type eq "work"].value ne "alice@acme.com"', {"bob"}),
            ('emails[type eq "work" or type eq "home"].value co "@acme"', {"alice", "bob"}),
            ('emails[type eq "work"].value pr', {"alice", "bob"}),
            ('emails[type eq "home"].primary eq true', set()),
            ('emails[type eq "work"].primary eq true', {"alice", "bob"}),
            ('addresses[type eq "work"].locality eq "paris"', {"alice"}),
            (f'{CORE_USER}:emails[type eq "work"].value eq "zz-bob@work.net"', {"bob"}),
            ('not (emails[type eq "work"].value eq "alice@acme.com")', {"bob", "carol", "dave"}),
            ('emails[type eq "work"].value eq "alice@acme.com" or userName eq "d_ve"', {"alice", "dave"}),
        ],
    )


def test_group_filter_entra_value_path_sub_attribute_matches_one_member(d: Directory) -> None:
    alice, eng = d.ids["alice"], d.ids["eng"]
    assert d.groups(f'members[type eq "User"].value eq "{alice}"') == {"eng"}
    assert d.groups(f'members[type eq "User"].value eq "{eng}"') == set()  # eng is a member of staff, as a Group
    assert d.groups(f'members[type eq "Group"].value eq "{eng}"') == {"staff"}


@pytest.mark.parametrize(
    "text", ['emails[type eq "work"].nosuch eq "x"', 'emails[type eq "work"].value eq 5', "name[x pr].givenName pr"]
)
def test_user_filter_entra_form_unknown_or_mistyped_raises(text: str) -> None:
    with pytest.raises(InvalidFilter):
        user_filter(parse_filter(text), tenant_id=uuid.uuid4())
