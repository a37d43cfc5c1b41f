"""Fuzzing the two readers of untrusted bytes the sweep meets before any
manifest: link files (layergc.storage.links.parse_link) and upload `startedat`
times (layergc.gc.uploads.parse_rfc3339). Whatever the input, each returns its
value or raises its one documented error, never anything else; and what Go
writes always reads back. (The manifest parser is fuzzed in
tests/test_manifest_fuzz.py.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from layergc.digest import ALGORITHMS, Digest
from layergc.errors import InvalidLink
from layergc.gc.uploads import parse_rfc3339
from layergc.storage.links import MAX_LINK_SIZE, parse_link

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

digests = st.builds(
    lambda algorithm, data: Digest.of(data, algorithm),
    st.sampled_from(sorted(ALGORITHMS)),
    st.binary(max_size=64),
)


def _link_like() -> st.SearchStrategy[bytes]:
    """Bytes near a valid link: mutations of real ones, and plain noise."""
    valid = digests.map(lambda d: str(d).encode())
    mutated = st.tuples(valid, st.integers(0, 140), st.binary(max_size=4)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
    )
    padded = st.tuples(
        st.sampled_from([b"", b" ", b"\n", b"\r\n", b"\t", b"\x00", b"\xef\xbb\xbf"]),
        valid,
        st.sampled_from([b"", b" ", b"\n", b"\r\n", b"\x00", b"\xff"]),
    ).map(lambda t: t[0] + t[1] + t[2])
    return st.one_of(st.binary(max_size=300), mutated, padded, valid.map(bytes.upper))


@FUZZ
@given(_link_like())
@example(b"")
@example(b"sha256:")
@example(b":" + b"0" * 64)
@example(b"x" * (MAX_LINK_SIZE + 1))
@example("sha256:" + "\u0660" * 64)  # Arabic-Indic digits: not hex
def test_parse_link_returns_a_digest_or_invalid_link(content: bytes | str) -> None:
    raw = content.encode() if isinstance(content, str) else content
    try:
        d = parse_link("/fuzz/link", raw)
    except InvalidLink as exc:
        assert "/fuzz/link" in str(exc)
        return
    assert isinstance(d, Digest)
    # A digest came out: the link holds exactly it, give or take surrounding space.
    assert raw.decode("ascii").strip() == str(d)
    assert len(d.hex) == ALGORITHMS[d.algorithm]
    assert parse_link("/fuzz/link", str(d).encode()) == d


@FUZZ
@given(digests)
def test_every_link_go_writes_reads_back(d: Digest) -> None:
    assert parse_link("/l", str(d).encode("ascii")) == d


def _near_rfc3339() -> st.SearchStrategy[str]:
    """Arbitrary text, and valid times with a character or two replaced."""
    valid = _rfc3339_texts().map(lambda case: case[0])
    mutated = st.tuples(valid, st.integers(0, 40), st.text(max_size=2)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
    )
    return st.one_of(st.text(max_size=80), mutated)


@FUZZ
@given(st.deferred(_near_rfc3339))
@example("")
@example("9999-12-31T23:59:59-01:00")  # past year 9999 once in UTC
@example("0001-01-01T00:00:00+01:00")  # before year 1 once in UTC
@example("2026-02-30T00:00:00Z")
@example("2026-11-19T24:00:00Z")
@example("2026-11-19T05:34:60Z")  # leap second
@example("2026-11-19T05:34:45+24:00")
@example("\uff12026-11-19T05:34:45Z")  # a full-width digit
@example("2026-11-19T05:34:45.\u0661Z")  # an Arabic-Indic digit in the fraction
@example("2026-11-19T05:34:45")  # no zone
def test_parse_rfc3339_returns_a_utc_time_or_value_error(text: str) -> None:
    try:
        value = parse_rfc3339(text)
    except ValueError:
        return
    assert isinstance(value, datetime)
    assert value.utcoffset() == timedelta(0)


def _rfc3339_texts() -> st.SearchStrategy[tuple[str, datetime]]:
    """(text, the instant it names), in the forms RFC 3339 allows."""
    moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2999, 12, 31)).map(
        lambda d: d.replace(tzinfo=UTC)
    )
    offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timedelta(minutes=m))
    fraction_digits = st.integers(0, 9)

    def render(
        moment: datetime, offset: timedelta, digits: int, z: str, t: str
    ) -> tuple[str, datetime]:
        local = moment.astimezone(timezone(offset))
        text = local.strftime(f"%Y-%m-%d{t}%H:%M:%S")
        expected = moment.replace(microsecond=0)
        if digits:
            nanos = f"{local.microsecond:06d}000"[:digits]
            text += "." + nanos
            expected = moment.replace(microsecond=int(nanos[:6].ljust(6, "0")))
        if offset == timedelta(0) and z:
            text += z
        else:
            sign = "-" if offset < timedelta(0) else "+"
            minutes = abs(int(offset.total_seconds())) // 60
            text += f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
        return text, expected

    return st.builds(
        render,
        moments,
        st.one_of(st.just(timedelta(0)), offsets),
        fraction_digits,
        st.sampled_from(["Z", "z", ""]),
        st.sampled_from(["T", "t"]),
    )


@FUZZ
@given(_rfc3339_texts())
@example(("2026-11-19T05:34:45Z", datetime(2026, 11, 19, 5, 34, 45, tzinfo=UTC)))
def test_every_rfc3339_time_reads_back(case: tuple[str, datetime]) -> None:
    text, expected = case
    assert parse_rfc3339(text) == expected
