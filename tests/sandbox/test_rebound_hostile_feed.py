"""The ReBound client against a feed that misbehaves: pages that do not advance, long Retry-After
answers, and events holding bytes a JSON decoder refuses (a lone surrogate escape, bytes that are
not UTF-8). Nothing may loop, wait without bound, or refuse a whole page for one bad event."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from returnledger.clients.rebound import ReboundClient
from returnledger.clients.rebound_feed import (
    FeedPageError,
    FeedStalledError,
    ReboundError,
    ReboundUnavailableError,
    decode_event_page,
    split_event_page,
)
from returnledger.clients.retry_after import parse_retry_after
from returnledger_dev.sandbox.scenario import Scenario, load_scenario

CLIENT = dict(client_id="sandbox-client", client_secret="sandbox-secret")
UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
SURROGATE_EVENT = b'{"event_id":"bad-sur","type":"RECEIVED","return_id":"RB-1","note":"\\ud800 x"}'
NOT_UTF8_EVENT = b'{"event_id":"bad-utf8","type":"RECEIVED","return_id":"RB-1","note":"caf\xe9 \xff\xfe"}'
PLAIN_EVENT = (
    b'{"event_id":"ok-1","type":"IN_TRANSIT","return_id":"RB-1","occurred_at":"2026-10-02T09:00:00Z"}'
)


def page_bytes(events: list[bytes], next_cursor: str = "c1", has_more: bool = False) -> bytes:
    return (
        b'{"events":['
        + b",".join(events)
        + b'],"next_cursor":'
        + json.dumps(next_cursor).encode()
        + b',"has_more":'
        + (b"true" if has_more else b"false")
        + b"}"
    )


# --- what msgspec does today, which the fallback exists for -------------------------------------------


class _RawPage(msgspec.Struct):
    events: list[msgspec.Raw]
    next_cursor: str
    has_more: bool


def test_msgspec_refuses_a_lone_surrogate_even_in_raw_mode_and_passes_non_utf8_through():
    """Pinned so that a msgspec upgrade that changes either is noticed; the client is correct either way."""
    with pytest.raises(msgspec.DecodeError, match=r"hex escape|surrogate"):
        msgspec.json.decode(page_bytes([PLAIN_EVENT, SURROGATE_EVENT]), type=_RawPage)
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(SURROGATE_EVENT)
    assert json.loads(SURROGATE_EVENT)["note"] == "\ud800 x"  # the standard library reads it
    page = msgspec.json.decode(page_bytes([PLAIN_EVENT, NOT_UTF8_EVENT]), type=_RawPage)
    assert bytes(page.events[1]) == NOT_UTF8_EVENT  # skipped unread: the bytes are kept
    with pytest.raises(UnicodeDecodeError):
        msgspec.json.decode(NOT_UTF8_EVENT)


# --- the page splitter ----------------------------------------------------------------------------------


def test_split_keeps_each_event_byte_for_byte():
    tricky = [
        PLAIN_EVENT,
        b'{"s":"quote \\" and backslash \\\\","t":"brackets ]}{[ in a string","u":"\\\\"}',
        b'{ "nested" : { "a" : [ 1 , { "b" : [ ] } , "x\\"]" ] } , "n" : -1.5e3 }',
        b'"a bare string"',
        b"42",
        b"true",
        b"null",
        b"[]",
        b"{}",
        SURROGATE_EVENT,
        NOT_UTF8_EVENT,
        b'{"nul":"\\u0000","emoji":"\xf0\x9f\x98\x80"}',
    ]
    body = b'{"events":[' + b" ,\n ".join(tricky) + b'] ,"next_cursor":"c9","has_more":true}'
    events, fields = split_event_page(body)
    assert events == tricky
    assert fields == {"next_cursor": b'"c9"', "has_more": b"true"}
    # keys in any order, whitespace anywhere, an empty feed
    events, fields = split_event_page(b' \n{ "has_more" : false , "next_cursor":"z", "events" : [ ] }\r\n')
    assert events == [] and fields == {"has_more": b"false", "next_cursor": b'"z"'}


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"[]",
        b'{"events":[{"a":1}',
        b'{"events":[{"a":"unterminated}],"next_cursor":"c","has_more":false}',
        b'{"events":[{"a":1]],"next_cursor":"c","has_more":false}',
        b'{"events":[1,,2],"next_cursor":"c"}',
        b'{"next_cursor":"c","has_more":false}',
        b'{"events":{},"next_cursor":"c","has_more":false}',
        b'{"events":[],"next_cursor":"c","has_more":false} trailing',
        b'{"events":[],"events":[1],"next_cursor":"c","has_more":false}',
        b'{"events" [] }',
    ],
)
def test_split_refuses_what_is_not_a_feed_page(bad):
    with pytest.raises(ValueError):
        split_event_page(bad)


# characters with lone surrogates and JSON's structural characters drawn far more often than by chance
hostile_chars = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from('"\\[]{},: '))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=hostile_chars, max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(json_values, max_size=8), ensure_ascii=st.booleans(), indent=st.sampled_from([None, 0, 2])
)
def test_split_agrees_with_the_events_as_serialised(events, ensure_ascii, indent):
    """Any JSON values (lone surrogates included: st.characters() draws them), serialised the ways a
    server might: each slice is exactly one event's serialisation and reads back as that event."""
    parts = [
        json.dumps(e, ensure_ascii=ensure_ascii, indent=indent).encode("utf-8", "surrogatepass")
        for e in events
    ]
    body = b'{"events":[' + b",".join(parts) + b'],"next_cursor":"c","has_more":false}'
    slices, _ = split_event_page(body)
    assert slices == parts
    page = decode_event_page(body, raw=True)
    assert [bytes(e) for e in page.events] == parts


def _json_bytes_string(data: bytes) -> bytes:
    """A JSON string literal holding arbitrary bytes: only quote and backslash are escaped."""
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(st.lists(st.binary(max_size=16), min_size=1, max_size=3), max_size=6))
def test_split_keeps_arbitrary_bytes_inside_strings(payloads):
    """Bytes that are not UTF-8 (or are half a character, or NUL) inside event strings: the slices
    are the events' exact bytes and the page never fails as a whole."""
    events = [
        b'{"event_id":"e%d","parts":[' % i + b",".join(_json_bytes_string(b) for b in parts) + b"]}"
        for i, parts in enumerate(payloads)
    ]
    body = page_bytes(events, "c", False)
    assert split_event_page(body)[0] == events
    page = decode_event_page(body, raw=True)
    assert [bytes(e) for e in page.events] == events


def test_decode_event_page_fast_path_and_fallback():
    fast = decode_event_page(page_bytes([PLAIN_EVENT, NOT_UTF8_EVENT], "c2", True), raw=True)
    assert not fast.split and [bytes(e) for e in fast.events] == [PLAIN_EVENT, NOT_UTF8_EVENT]
    assert (fast.next_cursor, fast.has_more) == ("c2", True)

    mixed = page_bytes([PLAIN_EVENT, SURROGATE_EVENT, NOT_UTF8_EVENT, b'{"broken": tru}'], "c3")
    page = decode_event_page(mixed, raw=True)
    assert page.split and all(isinstance(e, msgspec.Raw) for e in page.events)
    assert [bytes(e) for e in page.events] == [
        PLAIN_EVENT,
        SURROGATE_EVENT,
        NOT_UTF8_EVENT,
        b'{"broken": tru}',
    ]
    assert (page.next_cursor, page.has_more) == ("c3", False)

    decoded = decode_event_page(mixed, raw=False)
    assert decoded.split
    assert decoded.events[0] == json.loads(PLAIN_EVENT)
    assert decoded.events[1]["note"] == "\ud800 x"  # the standard library's reading
    # what cannot become a dict comes back as its bytes instead of costing the page
    assert [bytes(e) for e in decoded.events[2:]] == [NOT_UTF8_EVENT, b'{"broken": tru}']

    assert decode_event_page(page_bytes([PLAIN_EVENT]), raw=False).events == [json.loads(PLAIN_EVENT)]


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize(
    "body, problem",
    [
        (b'{"events":[],"has_more":false}', "next_cursor"),
        (b'{"events":[],"next_cursor":7,"has_more":false}', "str"),
        (b'{"events":[],"next_cursor":"c","has_more":"yes"}', "bool"),
        (b'{"events":[{"a":"\\ud800"}],"next_cursor":"c"}', "has_more"),
        (b"<html>502 Bad Gateway</html>", "not a feed page"),
    ],
)
def test_a_page_whose_own_fields_are_wrong_is_a_feed_page_error(body, problem, raw):
    with pytest.raises(FeedPageError, match=problem):
        decode_event_page(body, raw=raw)


# --- a scripted ReBound (httpx MockTransport) ---------------------------------------------------------


class Script:
    """Answers /oauth/token, then /v1/events from a list of (status, headers, body) answers."""

    def __init__(self, answers: list, limit: int = 200):
        self.answers, self.limit, self.asked = list(answers), limit, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 3600})
        self.asked.append(request.url.params.get("cursor"))
        if len(self.asked) > self.limit:  # a client that loops would otherwise hang the test
            raise AssertionError("the client kept asking: it loops")
        status, headers, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return httpx.Response(status, headers=headers, content=body)


def scripted(answers, **kwargs) -> tuple[ReboundClient, Script, list[float]]:
    script = Script(answers)
    client = ReboundClient("http://rebound.test", **CLIENT, transport=httpx.MockTransport(script), **kwargs)
    slept: list[float] = []
    client.sleep = slept.append
    return client, script, slept


def ok(events, next_cursor, has_more):
    return 200, {}, page_bytes(events, next_cursor, has_more)


def test_a_page_that_keeps_the_cursor_while_saying_has_more_is_refused():
    client, script, _ = scripted([ok([PLAIN_EVENT], "c1", True), ok([PLAIN_EVENT], "c1", True)])
    pages = []
    with pytest.raises(FeedStalledError) as err:
        for page in client.iter_event_pages(None, UNTIL):
            pages.append(page)
    assert len(pages) == 1 and script.asked == [None, "c1"]  # the offending page is never yielded
    e = err.value
    assert isinstance(e, ReboundError)
    assert (e.cursor, e.next_cursor, e.has_more, e.events) == ("c1", "c1", True, 1)
    assert "not advancing at cursor 'c1'" in str(e) and "gives back the cursor it was asked with" in str(e)


def test_an_empty_page_that_keeps_the_cursor_while_saying_has_more_is_refused():
    client, script, _ = scripted([ok([], "c0", True)])
    with pytest.raises(FeedStalledError, match="not advancing at cursor 'c0'"):
        list(client.iter_event_pages("c0", UNTIL))
    assert script.asked == ["c0"]


def test_events_with_an_unmoved_cursor_are_refused_even_without_has_more():
    client, _, _ = scripted([ok([PLAIN_EVENT], "c5", False)])
    with pytest.raises(FeedStalledError, match="carries events but gives back the cursor"):
        list(client.iter_event_pages("c5", UNTIL))
    # an empty cursor is the beginning again: a page of events naming it does not advance either
    client, _, _ = scripted([ok([PLAIN_EVENT], "", True)])
    with pytest.raises(FeedStalledError):
        list(client.iter_event_pages(None, UNTIL))


def test_a_cycle_of_cursors_is_refused():
    client, script, _ = scripted(
        [ok([PLAIN_EVENT], "a", True), ok([PLAIN_EVENT], "b", True), ok([PLAIN_EVENT], "a", True)]
    )
    with pytest.raises(FeedStalledError, match="already read in this pass") as err:
        list(client.iter_event_pages(None, UNTIL))
    assert script.asked == [None, "a", "b"] and err.value.cursor == "b" and err.value.next_cursor == "a"


def test_empty_pages_that_say_has_more_are_tolerated_up_to_a_bound():
    answers = [ok([], f"e{i}", True) for i in range(3)] + [ok([PLAIN_EVENT], "done", False)]
    client, _, _ = scripted(answers, max_empty_pages=3)
    assert sum(len(p.events) for p in client.iter_event_pages(None, UNTIL)) == 1
    client, script, _ = scripted([ok([], f"e{i}", True) for i in range(50)], max_empty_pages=3)
    with pytest.raises(FeedStalledError, match="4 empty pages in a row"):
        list(client.iter_event_pages(None, UNTIL))
    assert len(script.asked) == 4


def test_nothing_new_yet_is_not_a_stall():
    client, script, _ = scripted([ok([], "c7", False)])
    pages = list(client.iter_event_pages("c7", UNTIL))
    assert len(pages) == 1 and pages[0].events == [] and script.asked == ["c7"]


# --- Retry-After -------------------------------------------------------------------------------------


def busy(status=429, retry_after: str | None = None):
    return status, ({"Retry-After": retry_after} if retry_after is not None else {}), b'{"error":"busy"}'


def test_retry_after_is_honoured_beyond_the_back_off_cap():
    client, script, slept = scripted([busy(429, "30"), busy(503, "90"), ok([PLAIN_EVENT], "c1", False)])
    assert client.backoff_max_s == 5.0 and client.retry_after_max_s == 120.0
    pages = list(client.iter_event_pages(None, UNTIL))
    assert len(pages) == 1 and slept == [30.0, 90.0] and len(script.asked) == 3
    assert client.stats["retries"] == 2 and client.stats["waited_s"] == 120.0


def test_retry_after_at_the_bound_is_waited_and_above_it_fails_at_once():
    client, _, slept = scripted([busy(429, "120"), ok([], "c1", False)])
    list(client.iter_event_pages(None, UNTIL))
    assert slept == [120.0]
    client, script, slept = scripted([busy(503, "121")])
    with pytest.raises(ReboundUnavailableError) as err:
        list(client.iter_event_pages(None, UNTIL))
    assert slept == [] and len(script.asked) == 1  # no waiting, no hammering
    assert err.value.retry_after == 121.0 and err.value.status == 503
    assert "retry after 121 s" in str(err.value) and "retry_after_max_s=120" in str(err.value)


def test_the_bound_and_the_budget_are_configurable():
    client, _, slept = scripted([busy(429, "11")], retry_after_max_s=10)
    with pytest.raises(ReboundUnavailableError, match="retry_after_max_s=10"):
        list(client.iter_event_pages(None, UNTIL))
    assert slept == []
    client, script, slept = scripted([busy(429, "60")], retry_budget_s=100)
    with pytest.raises(ReboundUnavailableError, match="retry_budget_s=100") as err:
        list(client.iter_event_pages(None, UNTIL))
    assert slept == [60.0] and len(script.asked) == 2 and err.value.status == 429


def test_without_retry_after_the_back_off_is_bounded_and_attempts_run_out():
    client, script, slept = scripted([busy(500)], max_attempts=6, backoff_max_s=0.5)
    with pytest.raises(ReboundUnavailableError) as err:
        list(client.iter_event_pages(None, UNTIL))
    assert err.value.status == 500 and len(script.asked) == 6 and len(slept) == 5
    assert all(0.1 <= s <= 0.5 for s in slept) and slept[-1] == 0.5


def test_retry_after_forms():
    now = datetime(2026, 10, 5, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 2.5 ", now) == 2.5
    assert parse_retry_after("-3", now) == 0.0
    assert parse_retry_after("Mon, 05 Oct 2026 12:01:30 GMT", now) == 90.0
    assert parse_retry_after("Mon, 05 Oct 2026 11:00:00 GMT", now) == 0.0
    for junk in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(junk, now) is None


# --- hostile bytes through the simulated ReBound ------------------------------------------------------


@pytest.fixture
def hostile_scenario(scenarios_dir, tmp_path) -> Scenario:
    """small-month plus an invalid event holding a lone surrogate escape, loaded from a file."""
    raw = json.loads((scenarios_dir / "small-month.json").read_text())
    raw["rebound"]["invalid_events"].append(
        {
            "event_id": "bad-surrogate",
            "type": "RECEIVED",
            "return_id": "RB-x",
            "note": "lone \ud800 here",
            "delivered_at": "2026-10-03T06:00:00Z",
        }
    )
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(raw))  # ensure_ascii: the file carries the escape \ud800
    assert b"\\ud800" in path.read_bytes()
    return load_scenario(path)


def expected(scenario: Scenario, until: datetime) -> list[dict]:
    from returnledger_dev.sandbox.feed import feed_deliveries

    return [obj for t, obj in feed_deliveries(scenario) if t < until]


def test_the_loader_reads_a_lone_surrogate_and_the_simulator_serves_it(hostile_scenario, serve_rebound):
    assert hostile_scenario.rebound.invalid_events[-1]["note"] == "lone \ud800 here"
    url, _ = serve_rebound(hostile_scenario)
    until = datetime(2026, 10, 6, tzinfo=UTC)
    want = expected(hostile_scenario, until)
    with ReboundClient(url, **CLIENT, page_size=40) as client:
        raw_events = [e for p in client.iter_event_pages(None, until, raw=True) for e in p.events]
        assert client.stats["pages_split"] == 1  # only the page holding the surrogate left the fast path
        dict_events = [e for p in client.iter_event_pages(None, until) for e in p.events]
    assert all(isinstance(e, msgspec.Raw) for e in raw_events)
    assert [json.loads(bytes(e)) for e in raw_events] == want == dict_events
    bad = next(bytes(e) for e in raw_events if b"bad-surrogate" in bytes(e))
    assert b'"lone \\ud800 here"' in bad  # served as the file writes it, the escape untouched


def test_bytes_that_are_not_utf8_reach_the_caller_untouched(hostile_scenario, serve_rebound):
    """Deliveries of raw bytes (no JSON scenario file can hold them) next to the surrogate event:
    every event's bytes come back exactly as the simulator sent them, on every page."""
    t = datetime(2026, 10, 3, 6, tzinfo=UTC)
    extra = [(t, NOT_UTF8_EVENT), (t + timedelta(days=9), NOT_UTF8_EVENT.replace(b"bad-utf8", b"bad-utf8-2"))]
    url, _app = serve_rebound(hostile_scenario, raw_deliveries=extra)
    until = datetime(2026, 10, 20, tzinfo=UTC)
    with ReboundClient(url, **CLIENT, page_size=25) as client:
        got = [bytes(e) for p in client.iter_event_pages(None, until, raw=True) for e in p.events]
        assert (
            client.stats["pages_split"] == 1
        )  # the page with both; invalid UTF-8 alone stays on the fast path
    token = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials", **CLIENT}).json()
    served = httpx.get(
        f"{url}/v1/events",
        params={"until": "2026-10-20T00:00:00Z", "limit": 1000},
        headers={"Authorization": f"Bearer {token['access_token']}"},
    ).content
    assert got == split_event_page(served)[0]  # byte for byte what was on the wire
    assert got.count(NOT_UTF8_EVENT) == 1 and NOT_UTF8_EVENT.replace(b"bad-utf8", b"bad-utf8-2") in got
    readable = [json.loads(b) for b in got if b"bad-utf8" not in b]
    assert readable == expected(hostile_scenario, until)
