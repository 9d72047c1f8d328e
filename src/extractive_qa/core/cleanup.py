"""Answer clean-up (opt-in, ``answer_cleanup=true``): mend spans the way references are written.

A span model often stops one character short of a closing mark (``《哈利波特`` for ``《哈利波特》``) or
runs one past the answer (``台北，``). :func:`clean_span` moves a span's ends, so the answer is still
a slice of the context:

* a paired mark (``「」『』《》“”（）``) left open or closed alone is **balanced** when its partner sits
  right next to the span in the context, else the **dangling** mark at the span's edge is dropped;
* trailing punctuation that references never end with (``，、：；,;:`` -- counted on hw7, DRCD and
  CMRC2018 dev: 0 of 20,198 references; ``。`` ends 828 of them, so it stays) is trimmed.

Measured effect: see the README (it stays off by default unless a trained model's dev EM says
otherwise).
"""

from __future__ import annotations

PAIRS = {"「": "」", "『": "』", "《": "》", "“": "”", "（": "）", "(": ")"}
TRAILING = "，、：；,;:"


def _balance(context: str, start: int, end: int) -> tuple[int, int]:
    for opener, closer in PAIRS.items():
        text = context[start:end]
        opened, closed = text.count(opener), text.count(closer)
        if opened > closed:  # a mark left open: take its partner if it follows, else drop it at the edge
            if context[end : end + 1] == closer:
                end += 1
            elif text.endswith(opener):
                end -= 1
            elif text.startswith(opener):
                start += 1
        elif closed > opened:  # a mark closed alone: take its partner if it precedes, else drop it at the edge
            if start > 0 and context[start - 1] == opener:
                start -= 1
            elif text.startswith(closer):
                start += 1
            elif text.endswith(closer):
                end -= 1
    return start, end


def clean_span(context: str, start: int, end: int) -> tuple[int, int]:
    """The cleaned ``[start, end)`` of an answer span of ``context`` (never empty if it was not)."""
    if end <= start:
        return start, end
    new_start, new_end = _balance(context, start, end)
    while new_end - new_start > 1 and context[new_end - 1] in TRAILING:
        new_end -= 1
    return (new_start, new_end) if new_end > new_start else (start, end)
