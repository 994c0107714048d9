"""Full-text search over an archive's bulletins, in memory only (ADR 23).

The index maps each word (case-folded, accents kept) to the archive sequence numbers of
the bulletins whose title, body or attachment names hold it, in ascending order. It is
built from the decrypted rows when the archive is first searched and kept up to date as
bulletins arrive; it never touches the disk, so the archive file says nothing about which
words a bulletin holds (an index on disk, even of keyed hashes of the words, would show
how often each word occurs and which bulletins share one). Pure: no files, no SQLite.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable

__all__ = ["MAX_QUERY_CHARS", "MAX_QUERY_WORDS", "SearchIndex", "words"]

MAX_QUERY_CHARS = 500
MAX_QUERY_WORDS = 16
_WORD = re.compile(r"\w[\w'-]*\w|\w", re.UNICODE)
_MAX_WORD_CHARS = 64


def words(text: str) -> set[str]:
    """The distinct words of ``text`` as the index keeps them (case-folded; words longer
    than 64 characters are cut there)."""
    return {w[:_MAX_WORD_CHARS] for w in _WORD.findall(text.casefold())}


class SearchIndex:
    """Words to the sequence numbers of the bulletins that hold them."""

    def __init__(self) -> None:
        self._postings: dict[str, array[int]] = {}
        self._last = 0
        self.size = 0

    def add(self, seq: int, texts: Iterable[str]) -> None:
        """Index bulletin ``seq``. Sequence numbers must come in ascending order (the
        archive's), so each word's list stays sorted without sorting.

        Raises:
            ValueError: ``seq`` not above the last one indexed.
        """
        if seq <= self._last:
            raise ValueError(f"sequence {seq} indexed after {self._last}")
        self._last = seq
        seen: set[str] = set()
        for text in texts:
            seen |= words(text)
        postings = self._postings
        for word in seen:
            found = postings.get(word)
            if found is None:
                postings[word] = array("q", (seq,))
            else:
                found.append(seq)
        self.size += 1

    def search(self, query: str, *, limit: int) -> list[int]:
        """The sequence numbers of the bulletins holding every word of ``query``, newest
        (highest) first, at most ``limit``.

        Raises:
            ValueError: a query over ``MAX_QUERY_CHARS`` or ``MAX_QUERY_WORDS`` words, or
                one with no word in it.
        """
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"a search is at most {MAX_QUERY_CHARS} characters")
        wanted = words(query)
        if not wanted:
            raise ValueError("a search needs at least one word")
        if len(wanted) > MAX_QUERY_WORDS:
            raise ValueError(f"a search is at most {MAX_QUERY_WORDS} words")
        lists = sorted((self._postings.get(w, array("q")) for w in wanted), key=len)
        if not lists[0]:
            return []
        hits = set(lists[0])
        for other in lists[1:]:
            hits.intersection_update(other)
            if not hits:
                return []
        return sorted(hits, reverse=True)[:limit]
