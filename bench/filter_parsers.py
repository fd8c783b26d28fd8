#!/usr/bin/env python3
"""Time idhub's SCIM filter parser against scim2-models' on the differential test's corpus, and print the figures.

1. Mean microseconds per filter for each parser over the corpus of ``tests/scim/test_filter_differential.py``
   (accepted and rejected filters alike), and over its filters of at most 200 characters (what clients send),
   with the ratio. scim2-models' ``_parse_filter`` keeps an LRU cache of 1,024 filters; the figures use its
   uncached ``_build_filter``, since list requests mostly carry filters not seen before (a new userName each
   time). The cached figure is printed too.
2. Time and outcome of each parser on a 4,096-character filter (idhub's MAX_FILTER_LENGTH), one character more,
   a 17-level nested filter (one over idhub's MAX_DEPTH) and a 100,000-character filter.

This is not a test: it prints figures. Usage: ``python bench/filter_parsers.py [--rounds 50]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scim2_models.exceptions import InvalidFilterException
from scim2_models.path.grammar import _build_filter, _parse_filter

from idhub.scim.errors import InvalidFilter
from idhub.scim.filter import MAX_DEPTH, MAX_FILTER_LENGTH, parse_filter
from tests.scim.test_filter_differential import CORPUS  # the one corpus, shared with the test

SHORT = 200
Parser = Callable[[str], Any]
PARSERS: dict[str, tuple[Parser, type[Exception]]] = {
    "idhub": (parse_filter, InvalidFilter),
    "scim2-models": (_build_filter, InvalidFilterException),
}


def _attempt(parse: Parser, error: type[Exception], text: str) -> str:
    """Parse ``text`` and return ``accepted``, or ``rejected: <detail>`` for the parser's own invalidFilter error."""
    try:
        parse(text)
    except error as exc:
        return f"rejected: {str(exc)[:70]}"
    return "accepted"


def per_filter_us(parse: Parser, error: type[Exception], texts: list[str], rounds: int) -> float:
    """Return the mean microseconds per filter over ``rounds`` passes on ``texts`` (best of five runs)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            for text in texts:
                with contextlib.suppress(error):
                    parse(text)
        best = min(best, time.perf_counter() - start)
    return best / (rounds * len(texts)) * 1e6


def single_us(parse: Parser, error: type[Exception], text: str) -> float:
    """Return the median microseconds of one parse of ``text`` over several runs."""
    samples = []
    for _ in range(7):
        start = time.perf_counter()
        with contextlib.suppress(error):
            parse(text)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def _or_chain(length: int) -> str:
    """Return ``userName eq "user00001@example.com" or ...`` padded to exactly ``length`` characters."""
    terms: list[str] = []
    i = 0
    while True:
        term = f'userName eq "user{i:05d}@example.com"'
        if len(" or ".join([*terms, term])) > length - 20:
            break
        terms.append(term)
        i += 1
    text = " or ".join(terms) + ' or userName eq "'
    return text + "x" * (length - len(text) - 1) + '"'


def main() -> int:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="passes over the corpus per run (default 50)")
    args = parser.parse_args()

    texts = [case.text for case in CORPUS]
    short = [text for text in texts if len(text) <= SHORT]
    versions = f"python {platform.python_version()}, scim2-models {importlib.metadata.version('scim2-models')}"
    print(f"{versions}, {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"corpus: {len(texts)} filters ({len(short)} of at most {SHORT} characters), {args.rounds} rounds, best of 5")
    print()
    print(f"{'mean us per filter':<34}{'idhub':>10}{'scim2-models':>14}{'ratio':>8}")
    for label, subset in (("whole corpus", texts), (f"filters <= {SHORT} chars", short)):
        ours = per_filter_us(*PARSERS["idhub"], subset, args.rounds)
        theirs = per_filter_us(*PARSERS["scim2-models"], subset, args.rounds)
        print(f"{label:<34}{ours:>10.1f}{theirs:>14.1f}{theirs / ours:>7.1f}x")
    cached = per_filter_us(_parse_filter, InvalidFilterException, short, args.rounds)
    print(f"{'  scim2-models cached, warm':<34}{'':>10}{cached:>14.1f}")
    print()

    cases = [
        (f"{MAX_FILTER_LENGTH:,}-char or-chain (at length cap)", _or_chain(MAX_FILTER_LENGTH)),
        (f"{MAX_FILTER_LENGTH + 1:,}-char or-chain (cap + 1)", _or_chain(MAX_FILTER_LENGTH + 1)),
        (f"{MAX_DEPTH + 1}-level nested ( )", "(" * (MAX_DEPTH + 1) + "title pr" + ")" * (MAX_DEPTH + 1)),
        (f"{MAX_DEPTH + 1}-level nested not ( )", "not (" * (MAX_DEPTH + 1) + "title pr" + ")" * (MAX_DEPTH + 1)),
        ("100,000-char or-chain", _or_chain(100_000)),
    ]
    for label, text in cases:
        print(f"{label} ({len(text):,} characters):")
        for name, (parse, error) in PARSERS.items():
            outcome = _attempt(parse, error, text)
            print(f"  {name:<13}{single_us(parse, error, text):>12,.0f} us  {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
