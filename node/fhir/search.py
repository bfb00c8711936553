"""FHIR R4 search plumbing shared by every resource: parameters, paging, dates, tokens.

The search rules of FHIR R4 §3.1.1.4 (http://hl7.org/fhir/R4/search.html): parameters may
repeat (AND) and hold comma-separated values (OR); `_count` sets the page size; dates carry
a comparison prefix and match over their stated precision; tokens are `[system|]code`.

Unknown parameters are refused (400) unless the client sends `Prefer: handling=lenient`, in
which case they are ignored and left out of the `self` link (§3.1.1.4.1 lets the server
choose; refusing is the safe default for a clinical record: a mistyped filter must not
silently widen the result).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Connection, FromClause, Row, and_, func, or_, select

from node.errors import InvalidRequestError

DEFAULT_COUNT: Final = 50
MAX_COUNT: Final = 500
# Parameters every search accepts beyond its own (`_offset` is our paging cursor).
_COMMON: Final = frozenset({"_count", "_offset", "_format", "_pretty"})
FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DATE: Final = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?:T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?")
_PREFIXES: Final = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


@dataclass(frozen=True)
class SearchRequest:
    """A parsed search: the resource's own parameters, the page asked for, the echo for links."""

    params: dict[str, list[str]]
    count: int
    offset: int
    echo: list[tuple[str, str]] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        """Every value given for a parameter (one per repetition; commas not yet split)."""
        return self.params.get(name, [])


@dataclass(frozen=True)
class Page:
    """One page of a search: the matching total and this page's resources."""

    total: int
    resources: list[dict[str, Any]]


def parse_search(
    items: Sequence[tuple[str, str]], allowed: frozenset[str], *, lenient: bool
) -> SearchRequest:
    """Split query items into the resource's parameters and paging; refuse unknown ones."""
    params: dict[str, list[str]] = {}
    echo: list[tuple[str, str]] = []
    count, offset = DEFAULT_COUNT, 0
    for name, value in items:
        base = name.split(":", 1)[0]
        if name == "_count":
            count = _int_param(name, value, 0, MAX_COUNT)
        elif name == "_offset":
            offset = _int_param(name, value, 0, 10**9)
        elif name in _COMMON:
            continue
        elif base in allowed and (name == base or name in allowed):
            if not value:
                raise InvalidRequestError(f"search parameter {name} has an empty value")
            params.setdefault(name, []).append(value)
            echo.append((name, value))
        elif lenient:
            continue
        else:
            known = ", ".join(sorted(allowed | {"_count"}))
            raise InvalidRequestError(
                f"unknown search parameter {name!r} (supported: {known}); "
                "send 'Prefer: handling=lenient' to have unknown parameters ignored"
            )
    return SearchRequest(params, count, offset, echo)


def _int_param(name: str, value: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise InvalidRequestError(f"{name} must be a whole number from {low} to {high}")
    return int(value)


def page_links(base: str, search: SearchRequest, total: int) -> list[dict[str, str]]:
    """Bundle.link entries (self, first, previous, next) for a searchset page."""

    def url(offset: int) -> str:
        query = [*search.echo, ("_count", str(search.count)), ("_offset", str(offset))]
        return f"{base}?{urlencode(query)}"

    links = [{"relation": "self", "url": url(search.offset)}]
    links.append({"relation": "first", "url": url(0)})
    if search.offset > 0 and search.count > 0:
        links.append({"relation": "previous", "url": url(max(0, search.offset - search.count))})
    if search.count > 0 and search.offset + search.count < total:
        links.append({"relation": "next", "url": url(search.offset + search.count)})
    return links


def split_or(values: list[str]) -> list[list[str]]:
    """Each repetition (AND) as its comma-separated alternatives (OR); `\\,` is a literal comma."""
    out = []
    for value in values:
        parts = [p.replace("\\,", ",") for p in re.split(r"(?<!\\),", value)]
        out.append([p for p in parts if p])
    return out


def token(value: str) -> tuple[str | None, str]:
    """A token parameter `[system|]code` as (system or None when absent, code)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


def reference_id(value: str, resource_type: str, param: str) -> str:
    """The logical id in a reference parameter (`Type/id`, `id` or an absolute URL)."""
    ref = value.rstrip("/")
    parts = ref.split("/")
    if len(parts) >= 2:
        if parts[-2] != resource_type:
            raise InvalidRequestError(f"{param} must reference a {resource_type}")
        ref = parts[-1]
    if not FHIR_ID.fullmatch(ref):
        raise InvalidRequestError(f"{param} does not hold a valid resource id")
    return ref


def date_condition(col: ColumnElement[Any], value: str, param: str) -> ColumnElement[bool]:
    """A FHIR date parameter (§3.1.1.4.4.5) against a DICOM DA column (`YYYYMMDD` text).

    The value matches over its precision: `2024-01` is every day of January 2024. A time part
    is accepted but compares by its date, which is all the index holds.
    """
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    body = value[2:] if value[:2] in _PREFIXES else value
    m = _DATE.fullmatch(body)
    if m is None:
        raise InvalidRequestError(f"{param} must be a FHIR date like 2024-01-15 (optional prefix)")
    year, month, day = m.group(1), m.group(2), m.group(3)
    low = year + (month or "01") + (day or "01")
    high = year + (month or "12") + (day or "31")
    if prefix == "eq":
        return and_(col >= low, col <= high)
    if prefix == "ne":
        return or_(col < low, col > high)
    if prefix in ("gt", "sa"):
        return col > high
    if prefix in ("lt", "eb"):
        return col < low
    if prefix == "ge":
        return col >= low
    return col <= high  # le


def fhir_date(da: str | None) -> str | None:
    """DICOM DA (`YYYYMMDD`) as a FHIR date, or None when absent or malformed."""
    if da and len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return None


def fhir_datetime(da: str | None, tm: str | None) -> str | None:
    """DICOM DA + TM as a FHIR dateTime.

    FHIR requires a time zone with a time; DICOM times are the modality's local time. The node
    runs in the hospital, so its local offset is the honest one (documented in docs/fhir.md).
    Without a usable time, the date alone is a valid dateTime.
    """
    date = fhir_date(da)
    if date is None:
        return None
    digits = (tm or "").split(".")[0]
    if len(digits) < 4 or not digits.isdigit():
        return date
    hh, mm, ss = digits[:2], digits[2:4], (digits[4:6] or "00")
    try:
        local = datetime.strptime(f"{da}{hh}{mm}{ss}", "%Y%m%d%H%M%S").astimezone()
    except ValueError:
        return date
    return local.isoformat()


def fhir_instant(value: datetime | None) -> str | None:
    """A stored timestamp as a FHIR instant; the index keeps UTC (naive from SQLite)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def human_name(pn: str | None) -> list[dict[str, Any]]:
    """A DICOM PN (`Family^Given^Middle^Prefix^Suffix`, alphabetic group) as FHIR HumanName."""
    if not pn:
        return []
    family, given, middle, prefix, suffix = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    givens = [g for g in (given, middle) if g]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    text = " ".join(p for p in (prefix, given, middle, family, suffix) if p)
    if text:
        name["text"] = text
    return [name] if name else []


def display_name(pn: str | None) -> str | None:
    """A PN as a readable display string (for Reference.display)."""
    names = human_name(pn)
    return names[0].get("text") if names else None


def like_escape(value: str) -> str:
    """A literal for a LIKE pattern with `\\` as the escape character."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def bundle(base: str, search: SearchRequest, page: Page, *, fhir_base: str) -> dict[str, Any]:
    """A searchset Bundle (R4 §3.1.1.3) of one page, with total and paging links."""
    result: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": page.total,
        "link": page_links(base, search, page.total),
    }
    if page.resources:  # FHIR JSON never carries an empty array
        result["entry"] = [
            {
                "fullUrl": f"{fhir_base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in page.resources
        ]
    return result


def now_instant() -> str:
    """The current time as a FHIR instant."""
    result = fhir_instant(datetime.now(UTC))
    assert result is not None
    return result


def run_page(
    conn: Connection,
    table: FromClause,
    where: list[ColumnElement[bool]],
    order: list[Any],
    search: SearchRequest,
) -> tuple[int, list[Row[Any]]]:
    """Count the matches and fetch one page of rows, in a total and stable order."""
    total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
    if search.count == 0:
        return int(total), []  # _count=0: the total alone (R4 §3.1.1.5.4)
    stmt = select(table).where(*where).order_by(*order).limit(search.count).offset(search.offset)
    return int(total), list(conn.execute(stmt).all())
