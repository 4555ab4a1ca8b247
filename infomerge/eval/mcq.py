"""The multiple-choice prompt and answer extraction of lmms-eval's VideoMME task.

Followed (not copied) from lmms-eval **0.7.3** (PyPI wheel ``lmms_eval-0.7.3``):

* prompt: ``lmms_eval/tasks/videomme/utils.py``, ``videomme_doc_to_text``, with the ``default``
  ``post_prompt`` of ``lmms_eval/tasks/videomme/videomme.yaml``;
* extraction: ``lmms_eval/tasks/_task_utils/mcq_extract.py``, ``extract_mcq_answer`` (which
  ``videomme_process_results`` calls with choices A-D through ``extract_characters_regex``);
* scoring: ``videomme_process_results``: correct when the extracted letter equals the answer,
  case-insensitively; an answer with no recognisable letter ("") is wrong.

The prompt is text; the runtime wraps it in the backbone's chat template after the video tokens
(``infomerge.runtime.embeddings``), as lmms-eval's LLaVA-OneVision model does.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

#: Instruction line before the question (lmms-eval 0.7.3 videomme_doc_to_text; it mentions
#: subtitles although the plain task has none: kept verbatim for comparable numbers).
OPTION_PROMPT = (
    "Select the best answer to the following multiple-choice question based on the video and the "
    "subtitles. Respond with only the letter (A, B, C, or D) of the correct option."
)
#: The ``default`` post_prompt of lmms-eval 0.7.3 ``videomme.yaml`` (it starts with a newline).
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."

#: Choice letters, at most 8 options (lmms-eval's default choice set is A-H).
LETTERS = tuple(string.ascii_uppercase[:8])

# Phrases that announce an answer, in the order lmms-eval 0.7.3 mcq_extract.py searches them.
ANSWER_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)

# How much a way of writing the letter is trusted (higher wins; ties: the later position wins).
_RANK = {
    "start": 10,
    "end": 9,
    "phrase": 7,
    "parenthesised": 6,
    "period": 5,
    "colon": 4,
    "closing_paren": 3,
    "space": 2,
    "anywhere": 0,
}
# Suffix patterns ("{letter}" replaced): kind -> pattern, searched from the right.
_PATTERNS = (
    ("parenthesised", "({})"),
    ("period", "{}."),
    ("colon", "{}:"),
    ("closing_paren", "{})"),
    ("space", "{} "),
)
# Characters stripped from both ends, one after the other in this order (not as a set).
_STRIP_ORDER = (",", ".", "!", "?", ";", ":", "'", '"')


def choice_letters(n_options: int) -> tuple[str, ...]:
    """The letters of ``n_options`` options: A, B, ...

    Raises:
        ValueError: fewer than 2 or more than 8 options.
    """
    if not 2 <= n_options <= len(LETTERS):
        raise ValueError(f"a question needs 2 to {len(LETTERS)} options, got {n_options}")
    return LETTERS[:n_options]


def format_options(options: Sequence[str]) -> list[str]:
    """Options as VideoMME writes them, ``"A. text"``; options already lettered are kept as they are.

    An option counts as lettered when it starts with its own letter followed by ``.`` (VideoMME's
    ``"A. ..."``).

    Raises:
        ValueError: from :func:`choice_letters`.
    """
    letters = choice_letters(len(options))
    out = []
    for letter, option in zip(letters, options):
        text = str(option).strip()
        out.append(text if text.startswith(f"{letter}.") else f"{letter}. {text}")
    return out


def build_prompt(question: str, options: Sequence[str], post_prompt: str = POST_PROMPT) -> str:
    """The text prompt of one question, as lmms-eval 0.7.3 builds it for VideoMME.

    ``OPTION_PROMPT``, the question, one option per line, then ``post_prompt``, joined by newlines
    (``videomme_doc_to_text`` in ``lmms_eval/tasks/videomme/utils.py``).

    Args:
        question: the question text.
        options: the options, lettered (``"A. ..."``) or not (letters are added).
        post_prompt: the answer instruction (default: the task's ``default`` post_prompt).

    Raises:
        ValueError: from :func:`choice_letters`.
    """
    lines = [OPTION_PROMPT, question.strip(), *format_options(options), post_prompt]
    return "\n".join(lines)


def _strip_in_order(text: str) -> str:
    for ch in _STRIP_ORDER:
        text = text.strip(ch)
    return text


def extract_choice(response: str, choices: Sequence[str] = LETTERS[:4]) -> str:
    """The option letter a free-form model answer gives, or ``""`` when it gives none.

    The rules of ``extract_mcq_answer`` in lmms-eval 0.7.3
    (``lmms_eval/tasks/_task_utils/mcq_extract.py``), reimplemented: the response is stripped of
    surrounding whitespace and then of ``, . ! ? ; : ' "`` (one character kind after the other) and
    padded with a space at each end. Every way a letter can be written is a candidate, ranked:

    ====================================================  =====
    the (stripped) text starts with the letter, not followed by a letter   10
    it ends with the letter, not preceded by a letter                       9
    after an answer phrase ("the answer is", "i choose", ...): first one    7
    ``(A)``                                                                  6
    ``A.``                                                                   5
    ``A:``                                                                   4
    ``A)``                                                                   3
    ``A`` followed by a space                                                2
    the letter anywhere (only when nothing above matched)                    0
    ====================================================  =====

    Pattern candidates are taken at their last occurrence. The highest rank wins; between equal
    ranks, the later position. Letters are matched case-sensitively (upper case).

    Args:
        response: the model's answer text.
        choices: the valid letters (VideoMME: A-D).

    Returns:
        One of ``choices``, or ``""``.
    """
    if not response or not response.strip():
        return ""
    text = " " + _strip_in_order(response.strip()) + " "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter)
    for kind, pattern in _PATTERNS:
        for letter in choices:
            at = text.rfind(pattern.format(letter))
            if at >= 0:
                found.append((_RANK[kind], at, letter))
    lowered = text.lower()
    for phrase in ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at < 0:
            continue
        for letter in choices:
            pos = text.find(letter, at + len(phrase))
            if pos >= 0:
                found.append((_RANK["phrase"], pos, letter))
    core = text.strip()
    for letter in choices:
        if core.startswith(letter) and (len(core) == 1 or not core[1].isalpha()):
            found.append((_RANK["start"], 0, letter))
        if core.endswith(letter) and (len(core) == 1 or not core[-2].isalpha()):
            found.append((_RANK["end"], len(text) - 1, letter))
    if not found:
        for letter in choices:
            at = text.rfind(letter)
            if at >= 0:
                found.append((_RANK["anywhere"], at, letter))
    if not found:
        return ""
    best = max(found, key=lambda c: (c[0], c[1]))
    return best[2]


def is_correct(predicted: str, answer: str) -> bool:
    """lmms-eval's VideoMME score: the extracted letter equals the answer, ignoring case."""
    return predicted.lower() == answer.lower()
