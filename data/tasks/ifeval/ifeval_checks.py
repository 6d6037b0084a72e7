"""IFEval's verifiable instructions as plain Python (after Zhou et al., 2023, and their reference code): one
check per instruction id, taking the response and the instruction's arguments (the dataset's `kwargs`
entry, unused keys None) and returning whether it is followed and what was required and found."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Args = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    followed: bool
    detail: str  # what was required, and what the response has


def _compare(count: int, relation: str, n: int) -> bool:
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise ValueError(f"relation {relation!r} is neither 'less than' nor 'at least'")


def _counted(what: str, count: int, relation: str, n: int) -> Verdict:
    return Verdict(_compare(count, relation, n), f"{relation} {n} {what} (found {count})")


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def sentences(text: str) -> list[str]:
    """Sentences: runs ending in . ! or ? followed by white space or the end (abbreviations count as ends)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if re.search(r"\w", s)]


def _keywords_exist(response: str, args: Args) -> Verdict:
    missing = [k for k in args["keywords"] if not re.search(re.escape(k), response, re.IGNORECASE)]
    return Verdict(not missing, f"include the keywords {args['keywords']} (missing: {missing or 'none'})")


def _keyword_frequency(response: str, args: Args) -> Verdict:
    count = len(re.findall(re.escape(args["keyword"]), response, re.IGNORECASE))
    return _counted(f"times the word {args['keyword']!r}", count, args["relation"], args["frequency"])


def _forbidden_words(response: str, args: Args) -> Verdict:
    used = [w for w in args["forbidden_words"] if re.search(rf"\b{re.escape(w)}\b", response, re.IGNORECASE)]
    return Verdict(not used, f"none of the words {args['forbidden_words']} (used: {used or 'none'})")


def _letter_frequency(response: str, args: Args) -> Verdict:
    letter = args["letter"].lower()
    count = response.lower().count(letter)
    return _counted(f"times the letter {letter!r}", count, args["let_relation"], args["let_frequency"])


# Scripts of the languages IFEval asks for that are not written in Latin letters.
_SCRIPTS = {
    "ar": "\u0600-\u06ff",
    "fa": "\u0600-\u06ff",
    "ur": "\u0600-\u06ff",
    "ru": "\u0400-\u04ff",
    "bg": "\u0400-\u04ff",
    "hi": "\u0900-\u097f",
    "mr": "\u0900-\u097f",
    "ne": "\u0900-\u097f",
    "bn": "\u0980-\u09ff",
    "pa": "\u0a00-\u0a7f",
    "gu": "\u0a80-\u0aff",
    "ta": "\u0b80-\u0bff",
    "te": "\u0c00-\u0c7f",
    "kn": "\u0c80-\u0cff",
    "th": "\u0e00-\u0e7f",
    "ko": "\uac00-\ud7af",
    "ja": "\u3040-\u30ff",
    "zh": "\u4e00-\u9fff",
    "he": "\u0590-\u05ff",
    "el": "\u0370-\u03ff",
}
# Frequent short words of the Latin-script languages: the one whose words the response uses most.
_STOPWORDS = {
    "en": "the and is of to in that it for with this are",
    "de": "der die das und ist nicht ein eine zu mit ich sie",
    "fr": "le la les et est une des du que pour dans pas",
    "es": "el la los las y es una que del por para con",
    "it": "il lo la gli e è una che di per non sono",
    "pt": "o os as e é uma que do da para com não",
    "fi": "ja on ei se että hän mutta kun ovat tai myös",
    "sw": "na ya wa kwa ni za katika la cha kuwa hii",
    "vi": "và của là không có những được trong một cho",
}


def _language(response: str, args: Args) -> Verdict:
    code = args["language"]
    letters = re.findall(r"[^\W\d_]", response)
    if code in _SCRIPTS:
        native = sum(bool(re.fullmatch(f"[{_SCRIPTS[code]}]", c)) for c in letters)
        share = native / len(letters) if letters else 0.0
        return Verdict(
            share >= 0.5, f"the response in language {code!r} ({share:.0%} of its letters in its script)"
        )
    if code not in _STOPWORDS:
        return Verdict(False, f"the response in language {code!r}, which these checks cannot recognize")
    tokens = [w.lower() for w in words(response)]
    hits = {lang: sum(t in set(s.split()) for t in tokens) for lang, s in _STOPWORDS.items()}
    best = max(hits, key=lambda lang: hits[lang])
    return Verdict(
        hits[code] > 0 and hits[code] == hits[best], f"the response in language {code!r} (reads as {best!r})"
    )


def _number_sentences(response: str, args: Args) -> Verdict:
    return _counted("sentences", len(sentences(response)), args["relation"], args["num_sentences"])


def _number_paragraphs(response: str, args: Args) -> Verdict:
    parts = re.split(r"\s?\*\*\*\s?", response)
    blank_inside = any(not p.strip() for p in parts[1:-1])
    count = sum(bool(p.strip()) for p in parts)
    n = args["num_paragraphs"]
    return Verdict(
        count == n and not blank_inside, f"exactly {n} paragraphs separated by *** (found {count})"
    )


def _number_words(response: str, args: Args) -> Verdict:
    return _counted("words", len(words(response)), args["relation"], args["num_words"])


def _nth_paragraph_first_word(response: str, args: Args) -> Verdict:
    paragraphs = [p for p in re.split(r"\n\s*\n", response) if p.strip()]
    n, nth, first = args["num_paragraphs"], args["nth_paragraph"], args["first_word"].lower()
    opening = ""
    if 1 <= nth <= len(paragraphs):
        leading = words(paragraphs[nth - 1])
        opening = leading[0].lower() if leading else ""
    followed = len(paragraphs) == n and opening == first
    detail = f"{n} paragraphs, paragraph {nth} starting with {first!r} (found {len(paragraphs)}, {opening!r})"
    return Verdict(followed, detail)


def _placeholders(response: str, args: Args) -> Verdict:
    count = len(re.findall(r"\[.*?\]", response))
    return Verdict(
        count >= args["num_placeholders"],
        f"at least {args['num_placeholders']} [placeholders] (found {count})",
    )


def _postscript(response: str, args: Args) -> Verdict:
    marker = args["postscript_marker"]
    pattern = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}.get(
        marker, rf"\s*{re.escape(marker.lower())}.*$"
    )
    found = bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))
    return Verdict(found, f"a postscript starting with {marker!r} ({'present' if found else 'absent'})")


def _bullets(response: str, args: Args) -> Verdict:
    count = len(re.findall(r"^\s*\*[^\*].*$", response, re.MULTILINE)) + len(
        re.findall(r"^\s*-.*$", response, re.MULTILINE)
    )
    return Verdict(
        count == args["num_bullets"], f"exactly {args['num_bullets']} bullet points (found {count})"
    )


_CHOICES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained(response: str, args: Args) -> Verdict:
    followed = any(c in response for c in _CHOICES)
    return Verdict(followed, f"one of {list(_CHOICES)} ({'given' if followed else 'none given'})")


def _highlights(response: str, args: Args) -> Verdict:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    double = [
        h
        for h in re.findall(r"\*\*[^\n\*]*\*\*", response)
        if h.removeprefix("**").removesuffix("**").strip()
    ]
    count = len(single) + len(double)
    return Verdict(
        count >= args["num_highlights"],
        f"at least {args['num_highlights']} *highlighted* sections (found {count})",
    )


def _sections(response: str, args: Args) -> Verdict:
    splitter, n = args["section_spliter"], args["num_sections"]
    count = len(re.split(rf"\s?{re.escape(splitter)}\s?\d+\s?", response)) - 1
    return Verdict(count >= n, f"at least {n} sections marked '{splitter} X' (found {count})")


def _json(response: str, args: Args) -> Verdict:
    text = response.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
    text = text.removeprefix("```").removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return Verdict(False, "the whole response in JSON (it does not parse)")
    return Verdict(True, "the whole response in JSON (it parses)")


def _title(response: str, args: Args) -> Verdict:
    titles = [t for t in re.findall(r"<<[^\n]+>>", response) if t.strip("<>").strip()]
    return Verdict(bool(titles), f"a title in double angular brackets, <<like this>> (found {len(titles)})")


def _two_responses(response: str, args: Args) -> Verdict:
    parts = [p.strip() for p in response.split("******")]
    followed = len(parts) == 2 and all(parts) and parts[0] != parts[1]
    return Verdict(
        followed, f"two different responses separated by ****** (found {len([p for p in parts if p])})"
    )


def _repeat_prompt(response: str, args: Args) -> Verdict:
    followed = response.strip().lower().startswith(args["prompt_to_repeat"].strip().lower())
    return Verdict(followed, "the request repeated word for word first, then the answer")


def _end_phrase(response: str, args: Args) -> Verdict:
    phrase = args["end_phrase"].strip()
    followed = response.strip().strip('"').lower().endswith(phrase.lower())
    return Verdict(followed, f"end with the exact phrase {phrase!r}")


def _capital_words(response: str, args: Args) -> Verdict:
    count = sum(w.isupper() for w in words(response))
    return _counted("words in ALL CAPITALS", count, args["capital_relation"], args["capital_frequency"])


def _all_capitals(response: str, args: Args) -> Verdict:
    return Verdict(response.isupper(), "the whole response in capital letters")


def _all_lowercase(response: str, args: Args) -> Verdict:
    return Verdict(response.islower(), "the whole response in lowercase letters")


def _no_comma(response: str, args: Args) -> Verdict:
    count = response.count(",")
    return Verdict(count == 0, f"no commas (found {count})")


def _quotation(response: str, args: Args) -> Verdict:
    text = response.strip()
    followed = len(text) > 1 and text[0] == '"' and text[-1] == '"'
    return Verdict(followed, "the whole response wrapped in double quotation marks")


CHECKS: dict[str, Callable[[str, Args], Verdict]] = {
    "keywords:existence": _keywords_exist,
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _language,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _number_paragraphs,
    "length_constraints:number_words": _number_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:constrained_response": _constrained,
    "detectable_format:number_highlighted_sections": _highlights,
    "detectable_format:multiple_sections": _sections,
    "detectable_format:json_format": _json,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end_phrase,
    "change_case:capital_word_frequency": _capital_words,
    "change_case:english_capital": _all_capitals,
    "change_case:english_lowercase": _all_lowercase,
    "punctuation:no_comma": _no_comma,
    "startend:quotation": _quotation,
}


def verdict(instruction_id: str, response: str, args: Args | None) -> Verdict:
    """One instruction's verdict on a response; an id these checks do not know is a ValueError naming it."""
    if instruction_id not in CHECKS:
        raise ValueError(f"unknown instruction id {instruction_id!r} (known: {', '.join(sorted(CHECKS))})")
    return CHECKS[instruction_id](response, {k: v for k, v in (args or {}).items() if v is not None})
