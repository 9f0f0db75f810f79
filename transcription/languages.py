"""The language codes Whisper knows, for validating a request in the web process.

faster_whisper has this list (`faster_whisper.tokenizer._LANGUAGE_CODES`), but importing it
loads the whole engine (CTranslate2, tokenizers, onnxruntime: ~30 MiB) into every web process,
which otherwise needs none of it until it first transcribes. tests/test_web_memory.py checks
that the two lists stay the same.
"""

from __future__ import annotations

LANGUAGE_CODES: frozenset[str] = frozenset(
    """
    af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw
    he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my
    ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt
    uk ur uz vi yi yo zh yue
    """.split()  # noqa: SIM905 (a hundred codes, one per line, would hide the list)
)
