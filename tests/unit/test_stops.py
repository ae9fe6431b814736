from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlx_server.domain.stops import StopMatcher, truncate_at_stop

alphabet = st.sampled_from("ab\n<>")
texts = st.text(alphabet, max_size=30)
stops = st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=4)


def run(pieces: list[str], stop: list[str]) -> tuple[str, bool]:
    matcher, out = StopMatcher(stop), []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


@given(st.lists(texts, max_size=8), stops)
def test_streaming_equals_truncating_the_whole_text(pieces: list[str], stop: list[str]) -> None:
    assert run(pieces, stop) == truncate_at_stop("".join(pieces), stop)


@given(st.lists(texts, max_size=8), stops)
def test_holds_back_only_a_possible_stop_start(pieces: list[str], stop: list[str]) -> None:
    matcher, emitted = StopMatcher(stop), ""
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        emitted += text
        if stopped:
            return
        held = matcher._held
        assert len(held) < max(map(len, stop), default=1)
        assert not held or any(s.startswith(held) for s in stop)


def test_stop_text_is_not_returned_and_split_tokens_match() -> None:
    assert run(["Hello", " wor", "ld!", " more"], ["world"]) == ("Hello ", True)
    assert run(["a<", "b"], ["<|end|>"]) == ("a<b", False)


def test_the_matcher_names_the_stop_that_matched() -> None:
    matcher = StopMatcher(["END", "STOP", "ST"])
    assert matcher.matched is None
    assert matcher.feed("one S") == ("one ", False) and matcher.matched is None
    # "ST" and "STOP" both start at the same place: the earliest match is cut, the longest named
    assert matcher.feed("TOP two END") == ("", True)
    assert matcher.matched == "STOP"
    earlier = StopMatcher(["two", "one"])
    assert earlier.feed("zero one two") == ("zero ", True) and earlier.matched == "one"


@given(st.lists(texts, max_size=8), stops)
def test_a_kept_stop_ends_the_text_it_ended(pieces: list[str], stop: list[str]) -> None:
    """no_stop_trim: the same text as a trimmed run, plus the stop sequence that matched."""
    trimmed, stopped = run(pieces, stop)
    matcher, out = StopMatcher(stop, kept=stop), ""
    for piece in pieces:
        text, done = matcher.feed(piece)
        out += text
        if done:
            break
    else:
        out += matcher.flush()
    assert out == trimmed + (matcher.matched or "" if stopped else "")


def test_only_the_kept_stops_are_returned() -> None:
    matcher = StopMatcher(["END", "<tool>"], kept=["END"])
    assert matcher.feed("a<tool>") == ("a", True)
    assert StopMatcher(["END", "<tool>"], kept=["END"]).feed("bEND!") == ("bEND", True)
