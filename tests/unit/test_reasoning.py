"""The reasoning splitter: any chunking of a reply splits as the whole reply does."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from mlx_server.domain.reasoning import ReasoningSplitter, Start, reply_start, split_whole

MARKERS = ("<think>", "</think>")
# text rich in marker pieces, whitespace and ordinary characters
PIECES = st.sampled_from(["<think>", "</think>", "<", "</", "<th", "think>", "</thi", "nk>", "\n",
                          " ", "a", "b", "answer", "plan", ">", "/"])
TEXT = st.lists(PIECES, max_size=30).map("".join)


def split_chunked(text: str, cuts: list[int], start: Start) -> tuple[str, str]:
    splitter = ReasoningSplitter(MARKERS, start)
    reasoning, answer = "", ""
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    for left, right in itertools.pairwise(bounds):
        r, a = splitter.feed(text[left:right])
        reasoning, answer = reasoning + r, answer + a
    r, a = splitter.finish()
    return reasoning + r, answer + a


@given(TEXT, st.lists(st.integers(min_value=0, max_value=400), max_size=12),
       st.sampled_from(list(Start)))
def test_any_chunking_splits_as_the_whole(text: str, cuts: list[int], start: Start) -> None:
    assert split_chunked(text, cuts, start) == split_whole(text, MARKERS, start)


@given(TEXT, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_single_characters_split_as_the_whole(text: str, cuts: list[int]) -> None:
    for start in Start:
        assert split_chunked(text, list(range(len(text))), start) == \
            split_whole(text, MARKERS, start)


@given(TEXT)
def test_a_closed_start_is_all_answer(text: str) -> None:
    assert split_whole(text, MARKERS, Start.CLOSED) == ("", text.lstrip())


def test_forced_open_reasoning_runs_to_the_close() -> None:
    assert split_whole("\nplan it\n</think>\n\nthe answer", MARKERS, Start.OPEN) == \
        ("plan it", "the answer")


def test_a_reply_may_open_its_own_block() -> None:
    assert split_whole("<think>\nplan\n</think>\n\nanswer", MARKERS, Start.MAYBE) == \
        ("plan", "answer")
    assert split_whole("  <think>plan</think>answer", MARKERS, Start.MAYBE) == ("plan", "answer")


def test_a_reply_without_a_block_is_all_answer() -> None:
    assert split_whole("just <think> an answer", MARKERS, Start.MAYBE) == \
        ("", "just <think> an answer")


def test_an_unclosed_block_is_all_reasoning() -> None:
    assert split_whole("plan, and more pl", MARKERS, Start.OPEN) == ("plan, and more pl", "")
    assert split_whole("<think>plan </thi", MARKERS, Start.MAYBE) == ("plan </thi", "")


def test_markers_split_across_chunks() -> None:
    assert split_chunked("<think>plan</think>answer", [3, 9, 13, 16], Start.MAYBE) == \
        ("plan", "answer")


def test_reply_start_reads_the_prompt_end() -> None:
    assert reply_start("<|im_start|>assistant\n<think>\n", MARKERS) is Start.OPEN
    assert reply_start("assistant\n<think>\n\n</think>\n\n", MARKERS) is Start.CLOSED
    assert reply_start("<|im_start|>assistant\n", MARKERS) is Start.MAYBE
    assert reply_start("<|im_start|>assistant\n<think>\n", None) is Start.CLOSED
