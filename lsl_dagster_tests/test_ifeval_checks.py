"""IFEval's checks (data/tasks/ifeval/ifeval_checks.py) on hand-worked responses: each instruction followed
and broken, with what the feedback says was required and found."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from lsl_dagster_tests.conftest import PROJECT

_SPEC = importlib.util.spec_from_file_location(
    "ifeval_checks_under_test", PROJECT / "data" / "tasks" / "ifeval" / "ifeval_checks.py"
)
assert _SPEC is not None and _SPEC.loader is not None
checks = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = checks  # dataclasses look their module up there
_SPEC.loader.exec_module(checks)

CASES = [
    # (instruction id, arguments, response, followed, words of the detail)
    ("keywords:existence", {"keywords": ["fog", "Beam"]}, "The fog hid the beam.", True, "missing: none"),
    ("keywords:existence", {"keywords": ["fog", "beam"]}, "The fog was thick.", False, "missing: ['beam']"),
    (
        "keywords:frequency",
        {"keyword": "sea", "frequency": 2, "relation": "at least"},
        "Sea, sea!",
        True,
        "found 2",
    ),
    (
        "keywords:frequency",
        {"keyword": "sea", "frequency": 2, "relation": "at least"},
        "The sea.",
        False,
        "found 1",
    ),
    (
        "keywords:frequency",
        {"keyword": "sea", "frequency": 2, "relation": "less than"},
        "The sea.",
        True,
        "found 1",
    ),
    ("keywords:forbidden_words", {"forbidden_words": ["red"]}, "A reddish sky.", True, "used: none"),
    ("keywords:forbidden_words", {"forbidden_words": ["red"]}, "A Red sky.", False, "used: ['red']"),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
        "Zig zag zoo",
        True,
        "found 3",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 3, "let_relation": "less than"},
        "Zig zag zoo",
        False,
        "found 3",
    ),
    ("language:response_language", {"language": "ru"}, "Привет, как дела?", True, "100%"),
    ("language:response_language", {"language": "ru"}, "Hello there, friend.", False, "0%"),
    ("language:response_language", {"language": "hi"}, "नमस्ते दोस्त", True, "in its script"),
    ("language:response_language", {"language": "de"}, "Das ist nicht gut und ich bin müde.", True, "'de'"),
    ("language:response_language", {"language": "de"}, "This is the end of it.", False, "reads as 'en'"),
    ("language:response_language", {"language": "xx"}, "Anything.", False, "cannot recognize"),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        "One. Two!",
        True,
        "found 2",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "One. Two! Three? ",
        True,
        "found 3",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "One sentence only.",
        False,
        "found 1",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", True, "found 2"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n\nSecond.", False, "found 1"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "A\n***\n***\nB", False, "found 2"),
    (
        "length_constraints:number_words",
        {"num_words": 3, "relation": "at least"},
        "one two three",
        True,
        "found 3",
    ),
    (
        "length_constraints:number_words",
        {"num_words": 3, "relation": "less than"},
        "one two three",
        False,
        "found 3",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First part.\n\nThen, the rest.",
        True,
        "(found 2, 'then')",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First part.\n\nAfter that, the rest.",
        False,
        "(found 2, 'after')",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 3, "first_word": "then"},
        "One.\n\nThen two.",
        False,
        "(found 2, '')",
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], at [address].",
        True,
        "found 2",
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name].", False, "found 1"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\nP.S. See you.", True, "present"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye. See you.", False, "absent"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\nP.P.S extra", True, "present"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True, "found 2"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- one\n* two\n- three", False, "found 3"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, "**bold** line\n* one", True, "found 1"),
    ("detectable_format:constrained_response", {}, "Thinking... My answer is no.", True, "given"),
    ("detectable_format:constrained_response", {}, "My answer is nope.", False, "none given"),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*one* and **two**",
        True,
        "found 2",
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*one* and ** **",
        False,
        "found 1",
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nA\nSection 2\nB",
        True,
        "found 2",
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nA and B",
        False,
        "found 1",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True, "it parses"),
    ("detectable_format:json_format", {}, '{"a": 1', False, "does not parse"),
    ("detectable_format:title", {}, "<<Tides>>\nThe sea rises.", True, "found 1"),
    ("detectable_format:title", {}, "<< >> Tides", False, "found 0"),
    ("combination:two_responses", {}, "First take.\n******\nSecond take.", True, "found 2"),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False, "found 2"),
    ("combination:two_responses", {}, "Only one.", False, "found 1"),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Name a bird."},
        "name a bird. A robin.",
        True,
        "word for word",
    ),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name a bird."}, "A robin.", False, "word for word"),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        'Done. Any other questions?"',
        True,
        "exact",
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Any other questions? Bye.",
        False,
        "exact",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "VERY GOOD idea",
        True,
        "found 2",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "VERY GOOD idea",
        False,
        "found 2",
    ),
    ("change_case:english_capital", {}, "ALL CAPS, 100%.", True, "capital letters"),
    ("change_case:english_capital", {}, "ALL CAPS but one", False, "capital letters"),
    ("change_case:english_lowercase", {}, "all lower, 42.", True, "lowercase"),
    ("change_case:english_lowercase", {}, "all lower but I", False, "lowercase"),
    ("punctuation:no_comma", {}, "No commas here.", True, "found 0"),
    ("punctuation:no_comma", {}, "One, two.", False, "found 1"),
    ("startend:quotation", {}, ' "Quoted whole." ', True, "quotation marks"),
    ("startend:quotation", {}, '"Quoted" then not', False, "quotation marks"),
]


@pytest.mark.parametrize(("instruction", "arguments", "response", "followed", "detail"), CASES)
def test_each_check_on_a_hand_worked_response(instruction, arguments, response, followed, detail):
    verdict = checks.verdict(instruction, response, arguments)
    assert verdict.followed is followed
    assert detail in verdict.detail


def test_every_instruction_of_ifeval_has_a_check_and_a_case_each_way():
    assert len(checks.CHECKS) == 25
    for outcome in (True, False):
        assert {c[0] for c in CASES if c[3] is outcome} == set(checks.CHECKS), outcome


def test_the_datasets_null_arguments_are_ignored_and_an_unknown_id_is_named():
    # The Hub's kwargs carry every argument name, unused ones null.
    verdict = checks.verdict("punctuation:no_comma", "Fine.", {"num_words": None, "keywords": None})
    assert verdict.followed
    with pytest.raises(ValueError, match=r"unknown instruction id 'detectable_format:haiku'"):
        checks.verdict("detectable_format:haiku", "x", {})
    with pytest.raises(ValueError, match=r"relation 'about' is neither"):
        checks.verdict("length_constraints:number_words", "x", {"num_words": 1, "relation": "about"})
