"""The Stanford PTB tokenizer as pycocoevalcap runs it, in pure Python (no Java).

:func:`ptb_tokenize` re-implements the Stanford PTBTokenizer (stanford-corenlp 3.4.1,
run with ``-preserveLines -lowerCase``) followed by pycocoevalcap's punctuation filter,
so the pure-Python caption backend (``caption.py``) tokenizes exactly as the Java one.
:func:`one_line` is the caption clean-up both backends apply first: one caption, one
line of the tokenizer's input.

Standard library only.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

__all__ = ["PTB_PUNCTUATIONS", "one_line", "ptb_tokenize", "ptb_tokenize_caption"]

K = TypeVar("K", bound=Hashable)

#: The tokens pycocoevalcap's PTBTokenizer wrapper drops after tokenizing. The list is
#: upper case but the tokenizer runs with ``-lowerCase``, so ``-lrb-``/``-rrb-`` (from
#: parentheses) and ``-lsb-``/``-rsb-`` survive, exactly as they do in pycocoevalcap.
PTB_PUNCTUATIONS: frozenset[str] = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# pycocoevalcap joins all captions with "\n" (after replacing "\n" inside captions with a
# space) and relies on the tokenizer writing exactly one output line per input line. The
# lexer also treats these characters as line breaks, so a caption containing one would
# shift every later caption onto the wrong image. Both backends therefore turn them into
# spaces first; on text without them this changes nothing.
_LINE_BREAKS = re.compile("[\r\u000b\u000c\u2028\u2029]")


def one_line(caption: str) -> str:
    """``caption`` with every line break the PTB tokenizer knows turned into a space.

    pycocoevalcap replaces only ``"\\n"``; the Java tokenizer (and its emulation here)
    also breaks lines at ``\\r``, vertical tab, form feed, U+2028 and U+2029. Both
    caption backends clean their input with this, so the tokenizer writes one line
    per caption.

    Args:
        caption: raw caption text.

    Returns:
        The caption on one line (unchanged when it holds no line break).
    """
    return _LINE_BREAKS.sub(" ", caption.replace("\n", " "))


# =====================================================================================
# PTB tokenizer
# =====================================================================================
#
# The Stanford tokenizer is a JFlex scanner (PTBLexer.flex). JFlex semantics, which the
# emulation below follows:
#   * at each position every rule is tried; the longest match wins, ties go to the rule
#     listed first;
#   * for a rule ``r1/r2`` (trailing context) the length that competes is that of r1r2,
#     but only r1 becomes the token and scanning resumes right after r1;
#   * ``%caseless``: literal letters match either case, character classes do not.
# Macros are written below in Python ``re`` syntax. Letters outside ``[...]`` are literal
# caseless letters (``_caseless`` rewrites ``a`` to ``[aA]``); ``{NAME}`` refers to another
# macro; ``{:letter:}``, ``{:digit:}`` and ``{:upper:}`` stand for the contents of Java's
# Character.isLetter / isDigit / isUpperCase classes (Basic Multilingual Plane, as JFlex).

_MACROS: dict[str, str] = {
    "SGML": (
        r"""<(?:[!?][A-Za-z\-][^>\r\n]*"""
        r"""|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|"[^"]*")"""
        r"""|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?"""
        r"""|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"""
    ),
    "SPMDASH": r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]",
    "SPAMP": r"&amp;",
    "SPPUNC": r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);",
    "SPLET": r"&[aeiouAEIOU](?:acute|grave|uml);",
    "SPACE": r"[ \t\u00a0\u2000-\u200a\u3000]",
    "NEWLINE": r"\r?\n|\r|[\u2028\u2029\u000b\u000c\u0085]",
    "SPACENL": r"{SPACE}|{NEWLINE}",
    "SPACENLS": r"(?:{SPACENL})+",
    "SENTEND": r"{SPACENL}(?:{SGML}|{SPACENL}|[{:upper:}])",
    "DIGIT": r"[{:digit:}\u07c0-\u07c9]",
    "DATE": r"{DIGIT}{1,2}[\-/]{DIGIT}{1,2}[\-/]{DIGIT}{2,4}",
    "NUM": r"{DIGIT}*(?:[.:,\u00ad\u066b\u066c]{DIGIT}+)+|{DIGIT}+",
    "NUMBER": r"[\-+]?{NUM}",
    "SUBSUPNUM": r"[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)",
    "FRAC": r"(?:{DIGIT}{1,4}[\- \u00a0])?{DIGIT}{1,4}(?:\\?/|\u2044){DIGIT}{1,4}",
    "FRAC2": r"[\u00bc\u00bd\u00be\u2153-\u215e]",
    "DOLSIGN": r"[A-Z]*\$|#",
    "DOLSIGN2": r"[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]",
    "LETTER": (
        r"[{:letter:}\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d"
        r"\u0384\u0385\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f"
        r"\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670"
        r"\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u074f\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa"
        r"\u0900-\u0903\u093c\u093e-\u094e\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8"
        r"\u09cb-\u09cd\u09d7\u09e2\u09e3\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f\u0a81-\u0a83\u0abc-\u0acf\u0b82"
        r"\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48"
        r"\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd]|{SPLET}"
    ),
    "WORD": r"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*",
    "FILENAME_EXT": (
        r"bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl"
        r"|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip"
    ),
    "FILENAME": r"(?:{LETTER}|{DIGIT})+(?:[.](?:{LETTER}|{DIGIT})+)*[.]{FILENAME_EXT}",
    "APOS": r"['\u0092\u2019]|&apos;",
    "APOSETCETERA": r"{APOS}|[`\u0091\u2018\u201b]",
    "HYPHEN": r"[\-_\u058a\u2010\u2011]",
    "THING": (
        r"(?:[dDoOlL]{APOSETCETERA}[{:letter:}{:digit:}])?[{:letter:}{:digit:}]+"
        r"(?:{HYPHEN}(?:[dDoOlL]{APOSETCETERA}[{:letter:}{:digit:}])?[{:letter:}{:digit:}]+)*"
    ),
    "THINGA": r"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+",
    "THING3": r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}",
    # ACRO2 first: Python takes the first alternative that works, JFlex the longest.
    "HTHING": r"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{ACRO2}\.|[A-Za-z0-9\u00ad]+))+",
    "REDAUX": r"{APOS}(?:[msdMSD]|re|ve|ll)",
    "SWORD": r"[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*",
    "SREDAUX": r"n{APOSETCETERA}t",
    "APOWORD2": r"y{APOS}",
    "FULLURL": r"""https?://[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},\-]""",
    "URLPATH": r"""(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},\-])?""",
    # ",-_" in the second class is a character range (as in the original), not three characters.
    "LIKELYURL1": r"""www\.(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}{URLPATH}""",
    "LIKELYURL2": r"""(?:[^ \t\n\f\r"`'<>|.!?(){},-_$]+\.)+(?:com|net|org|edu){URLPATH}""",
    "EMAIL": (
        r"""(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{}]*@(?:[^ \t\n\f\r"<>|(){}.\u00a0]+\.)*"""
        r"""[^ \t\n\f\r"<>|(){}.\u00a0]+(?:&gt;|>)?"""
    ),
    "ABMONTH": r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec",
    "ABDAYS": r"Mon|Tue|Tues|Wed|Thu|Thurs|Fri",
    "ABSTATE": (
        r"Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich"
        r"|Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo"
    ),
    "ABCOMP": r"Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys",
    "ABNUM": r"tel|est|ext|sq",
    "ABPTIT": r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq",
    "ABBREV1": r"(?:{ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|etc|al|seq|Bldg)\.",
    "ACRO": r"[A-Za-z](?:\.[A-Za-z])*|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R)",
    "ACRO2": r"[A-Za-z](?:\.[A-Za-z])+|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R)",
    "ABTITLE": (
        r"Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt"
        r"|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp"
        r"|Mlle|Mme|Msgr|Sfc"
    ),
    "ABCOMP2": r"Invt|Elec|Natl|M[ft]g|Dept",
    "ABBREV4": r"{ABTITLE}|vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph|{ACRO}|{ABCOMP2}",
    "ABBREV2": r"{ABBREV4}\.",
    "ACRONYM": r"{ACRO}\.",
    "ABBREV3": r"(?:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\.",
    "PHONE1": (
        r"(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}[\- \u00a0])"
        r"[0-9]{3,4}[\- \u00a0]?[0-9]{3,5}"
    ),
    "PHONE2": r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}",
    "INSENTP": r"[,;:\u3001]",
    "QUOTECHARS": (
        r"[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb]"
    ),
    "DBLQUOT": r'"|&quot;',
    "TBSPEC": (
        r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&amp;|&)P-500|S(?:&amp;|&)Ls|Cap{APOS}n|c{APOS}est"
    ),
    "TBSPEC2": r"{APOS}[0-9][0-9]",
    "SMILEY": r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]",
    "ACRONYM_NEXT": (
        r"[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere"
        r"|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\.|[M]s\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur"
        r"|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e"
        r"|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou|{SGML}"
    ),
    "MISCSYMBOL": (
        r"[+%&~\^|\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387"
        r"\u05be\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a"
        r"\u066d\u0703-\u070d\u07f6\u07f7\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023"
        r"\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff"
        r"\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]"
    ),
}

# A token action gets the matched text (r1 only) and returns (token or None, characters
# consumed). Consuming fewer characters than matched is JFlex's yypushback.
_Action = Callable[[str], tuple["str | None", int]]
_NEWLINE_TOKEN = "\n"  # internal marker for the lexer's *NL* token (never a real token)


def _tok(text: str) -> tuple[str | None, int]:
    return text, len(text)


def _skip(text: str) -> tuple[str | None, int]:
    return None, len(text)


def _push_back(n: int) -> _Action:
    """Token is the match minus its last ``n`` characters, which are scanned again."""

    def action(text: str) -> tuple[str | None, int]:
        return text[:-n], len(text) - n

    return action


def _const(token: str) -> _Action:
    def action(text: str) -> tuple[str | None, int]:
        return token, len(text)

    return action


def _remove_soft_hyphens(text: str) -> tuple[str | None, int]:
    # U+00AD only marks where a line may break, so the lexer drops it from words.
    out = text.replace("\u00ad", "")
    return (out or "-"), len(text)


_AMP = re.compile("&amp;", re.IGNORECASE)


def _normalize_amp(text: str) -> tuple[str | None, int]:
    return _AMP.sub("&", text), len(text)


def _nbsp(text: str) -> tuple[str | None, int]:
    # normalizeSpace: tokens that may contain spaces (fractions, SGML) get U+00A0 instead.
    return text.replace(" ", "\u00a0"), len(text)


def _parens(text: str) -> tuple[str | None, int]:
    return text.replace("(", "-LRB-").replace(")", "-RRB-"), len(text)


def _phone(text: str) -> tuple[str | None, int]:
    return text.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-"), len(text)


_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _fraction(text: str) -> tuple[str | None, int]:
    return "".join(_FRACTIONS.get(ch, ch) for ch in text), len(text)


def _currency(text: str) -> tuple[str | None, int]:
    out = text.replace("\u00a2", "cents").replace("\u00a3", "#")
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", out), len(text)


def _hyphens(text: str) -> tuple[str | None, int]:
    # Three or four hyphens are a PTB dash "--"; one, two or five+ stay as they are.
    return ("--" if 3 <= len(text) <= 4 else text), len(text)


_SINGLE_QUOTE = re.compile("&apos;|'")
_DOUBLE_QUOTE = re.compile('"|&quot;')


def _quotes(probably_left: bool) -> _Action:
    """latexQuotes: ' and " become ` `` (opening) or ' '' (closing); curly quotes likewise."""

    def action(text: str) -> tuple[str | None, int]:
        if probably_left:
            out = _DOUBLE_QUOTE.sub("``", _SINGLE_QUOTE.sub("`", text))
        else:
            out = _DOUBLE_QUOTE.sub("''", _SINGLE_QUOTE.sub("'", text))
        out = re.sub("[\u0091\u2018\u201b\u2039]", "`", out)
        out = re.sub("[\u0092\u2019\u203a]", "'", out)
        out = re.sub("[\u0093\u201c\u00ab]", "``", out)
        out = re.sub("[\u0094\u201d\u00bb]", "''", out)
        return out, len(text)

    return action


def _acronym(text: str) -> tuple[str | None, int]:
    # An acronym before a capitalised function word ends the sentence: "I." gives "I" then
    # "."; a longer one ("U.S.") is kept whole and its period is emitted again.
    if len(text) == 2:
        return text[:1], 1
    return text, len(text) - 1


def _abbrev_sentence_end(text: str) -> tuple[str | None, int]:
    # "etc." before a capital (or at end of input) keeps its period and adds another.
    return text, len(text) - 1


# (name, first characters, [(r1, r2 or None), ...] tried as alternatives, action), in
# PTBLexer.flex order (the order breaks ties). "first characters" is a character class
# of every character the rule can start with; it only narrows which rules are tried.
_L = "{:letter:}"
_LFIRST = rf"[{_L}\u00ad\u0237-\u024f\u02c2-\u0ecd&]"  # superset of LETTER's first characters
_APOS_FIRST = "['\u0092\u2019&]"
_PERIODS = "[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"
_RULE_SPECS: list[tuple[str, str, list[tuple[str, str | None]], _Action]] = [
    ("cplusplus", "[cC]", [(r"c\+\+", None)], _tok),
    ("csharp", "[cCfF]", [(r"(?:c|f)#", None)], _tok),
    ("cannot", "[cC]", [(r"cannot", None)], _push_back(3)),
    ("twas", "'", [(r"'twas", None)], _push_back(3)),
    ("tis", "'", [(r"'tis", None)], _push_back(2)),
    ("gonna", "[gGlLwW]", [(r"gonna|gotta|lemme|gimme|wanna", None)], _push_back(2)),
    ("sgml", "<", [(r"{SGML}", None)], _nbsp),
    ("spmdash", "[&\u0096\u0097\u2013\u2014\u2015]", [(r"{SPMDASH}", None)], _const("--")),
    ("spamp", "&", [(r"{SPAMP}", None)], _normalize_amp),
    ("sppunc", "&", [(r"{SPPUNC}", None)], _tok),
    ("word_redaux", _LFIRST, [(r"{WORD}", r"{REDAUX}")], _remove_soft_hyphens),
    ("sword_sredaux", "[A-Za-z\u00ad]", [(r"{SWORD}", r"{SREDAUX}")], _remove_soft_hyphens),
    ("word", _LFIRST, [(r"{WORD}", None)], _remove_soft_hyphens),
    (
        "apoword",
        rf"[{_L}'\u0092\u2019&]",
        [
            (r"{APOS}n(?:{APOS})?", None),
            (r"[lLdDjJ]{APOS}", None),
            (r"Dunkin{APOS}", None),
            (r"somethin{APOS}", None),
            (r"ol{APOS}", None),
            (r"{APOS}em", None),
            (rf"[A-HJ-XZn]{{APOSETCETERA}}[{_L}]{{2}}[{_L}]*", None),
            (r"{APOS}[2-9]0s", None),
            (r"{APOS}till?", None),
            (rf"[{_L}][{_L}]*[aeiouyAEIOUY]{{APOSETCETERA}}[aeiouA-Z][{_L}]*", None),
            (r"{APOS}cause", None),
            (r"cont'd\.?", None),
            (r"'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l", None),
            (r"O{APOSETCETERA}o", None),
        ],
        _tok,
    ),
    ("apoword2", "[yY]", [(r"{APOWORD2}", rf"[{_L}]")], _tok),
    ("fullurl", "[hH]", [(r"{FULLURL}", None)], _tok),
    ("likelyurl", r"""[^ \t\n\f\r"`'<>|.!?(){},-_$]|[wW]""", [(r"{LIKELYURL1}", None), (r"{LIKELYURL2}", None)], _tok),
    ("email", "[&<a-zA-Z0-9]", [(r"{EMAIL}", None)], _tok),
    ("twitter", "[@#]", [(r"@[a-zA-Z_][a-zA-Z_0-9]*", None), (r"#(?:{LETTER})+", None)], _tok),
    ("redaux_ctx", _APOS_FIRST, [(r"{REDAUX}", r"[^A-Za-z]")], _quotes(False)),
    ("sredaux_ctx", "[nN]", [(r"{SREDAUX}", r"[^A-Za-z]")], _quotes(False)),
    ("date", "[{:digit:}\u07c0-\u07c9]", [(r"{DATE}", None)], _tok),
    ("number", "[{:digit:}\u07c0-\u07c9+\\-.:,\u00ad\u066b\u066c]", [(r"{NUMBER}", None)], _remove_soft_hyphens),
    ("subsupnum", "[\u207a\u207b\u208a\u208b\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u2080-\u2089]",
     [(r"{SUBSUPNUM}", None)], _tok),
    ("frac", "[{:digit:}\u07c0-\u07c9]", [(r"{FRAC}", None)], _nbsp),
    ("frac2", "[\u00bc\u00bd\u00be\u2153-\u215e]", [(r"{FRAC2}", None)], _fraction),
    ("tbspec", "[\\-cCpPaAsS]", [(r"{TBSPEC}", None)], _normalize_amp),
    ("thing3", "[A-Za-z0-9]", [(r"{THING3}", None)], _tok),
    ("dolsign", "[A-Z$#]", [(r"{DOLSIGN}", None)], _tok),
    ("dolsign2", "{DOLSIGN2}", [(r"{DOLSIGN2}", None)], _currency),
    ("acronym_end", "[A-Za-z]", [(r"{ACRONYM}", r"{SPACENLS}(?:{ACRONYM_NEXT}){SPACENL}")], _acronym),
    ("abbrev3", "[A-Za-z]", [(r"{ABBREV3}", r"(?:{SPACENL})?[{:digit:}]")], _tok),
    ("pty", "[pPcC]", [(r"(?:pt[eyEY]|co)\.", r"{SPACE}(?:ltd|lim)")], _tok),
    ("abbrev1_sentend", "[A-Za-z]", [(r"{ABBREV1}", r"{SENTEND}")], _abbrev_sentence_end),
    ("abbrev1_inner", "[A-Za-z]", [(r"{ABBREV1}", r"[\s\S][\s\S]")], _tok),
    ("abbrev1_eof", "[A-Za-z]", [(r"{ABBREV1}", None)], _abbrev_sentence_end),
    ("abbrev2", "[A-Za-z]", [(r"{ABBREV2}", None)], _tok),
    ("abbrev4", "[A-Za-z]", [(r"{ABBREV4}", r"{SPACE}")], _tok),
    ("acro", "[A-Za-z]", [(r"{ACRO}", r"{SPACENL}")], _tok),
    ("tbspec2", _APOS_FIRST, [(r"{TBSPEC2}", r"{SPACENL}")], _tok),
    ("filename", _LFIRST + "|[{:digit:}\u07c0-\u07c9]", [(r"{FILENAME}", r"{SPACENL}|[.?!,]")], _tok),
    ("word_dot", _LFIRST, [(r"{WORD}\.", r"{INSENTP}")], _remove_soft_hyphens),
    ("phone", "[(+0-9]", [(r"{PHONE1}", None), (r"{PHONE2}", None)], _phone),
    ("dblquot_left", '["&]', [(r"{DBLQUOT}", r"[A-Za-z0-9$]")], _quotes(True)),
    ("dblquot", '["&]', [(r"{DBLQUOT}", None)], _quotes(False)),
    ("del", "\x7f", [("\x7f", None)], _skip),
    ("lessthan", "[<&]", [(r"<|&lt;", None)], _const("<")),
    ("greaterthan", "[>&]", [(r">|&gt;", None)], _const(">")),
    ("smiley", "[<>:;=]", [(r"{SMILEY}", r"[^A-Za-z0-9]")], _parens),
    (
        "asiansmiley",
        r"[\^xX=~<>\-'(]",
        [
            (r"[\^x=~<>]\.\[\^x=~<>\]", None),
            (r"[\-\^x=~<>']_[\-\^x=~<>']", None),
            (r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)", None),
            (r"\([\^x=~<>']-[\^x=~<>'`]\)", None),
        ],
        _parens,
    ),
    ("lcb", r"\{", [(r"\{", None)], _const("-LCB-")),
    ("rcb", r"\}", [(r"\}", None)], _const("-RCB-")),
    ("lsb", r"\[", [(r"\[", None)], _const("-LSB-")),
    ("rsb", r"\]", [(r"\]", None)], _const("-RSB-")),
    ("lrb", r"\(", [(r"\(", None)], _const("-LRB-")),
    ("rrb", r"\)", [(r"\)", None)], _const("-RRB-")),
    ("hyphens", r"\-", [(r"-+", None)], _hyphens),
    ("ldots", "[.\u0085\u2026]",
     [(r"\.{3,5}", None), (r"(?:\.[ \u00a0]){2,4}\.", None), ("[\u0085\u2026]", None)], _const("...")),
    ("fnmarks", "[@#_]", [(r"@+|#+|_+", None)], _tok),
    ("asts", r"[*\\]", [(r"\*+|(?:\\\*){1,3}", None)], _tok),
    ("insentp", "[,;:\u3001]", [(r"{INSENTP}", None)], _tok),
    ("qmarks", "[?!]", [(r"[?!]+", None)], _tok),
    ("period", _PERIODS, [(_PERIODS, None)], _tok),
    ("equals", "=", [("=", None)], _tok),
    ("slash", "/", [("/", None)], _tok),
    ("hthing_dot", "[A-Za-z0-9]", [(r"{HTHING}\.", r"{INSENTP}")], _remove_soft_hyphens),
    ("hthing", "[A-Za-z0-9]", [(r"{HTHING}", None)], _remove_soft_hyphens),
    ("thing_dot", "[{:letter:}{:digit:}]", [(r"{THING}\.", r"{INSENTP}")], _tok),
    ("thing", "[{:letter:}{:digit:}]", [(r"{THING}", None)], _tok),
    ("thinga_dot", "[A-Z]", [(r"{THINGA}\.", r"{INSENTP}")], _normalize_amp),
    ("thinga", "[A-Z]", [(r"{THINGA}", None)], _normalize_amp),
    ("quote_left", "'", [("'", r"[A-Za-z][^ \t\n\r\u00a0]")], _quotes(True)),
    ("redaux", _APOS_FIRST, [(r"{REDAUX}", None)], _quotes(False)),
    ("sredaux", "[nN]", [(r"{SREDAUX}", None)], _quotes(False)),
    ("quotes", "['\u0092\u2019&]|{QUOTECHARS}",
     [(r"{APOS}", None), (r"''", None), (r"{QUOTECHARS}{1,2}", None)], _quotes(False)),
    ("fakeduckfeet", "[<>]", [(r"<<|>>", None)], _tok),
    ("miscsymbol", "{MISCSYMBOL}", [(r"{MISCSYMBOL}", None)], _tok),
    ("spaces", "[\x00 \t\u00a0\u2000-\u200a\u3000\u200b\u200e\u200f\ufeff]",
     [("\x00|(?:{SPACE})+|[\u200b\u200e\u200f\ufeff]", None)], _skip),
    ("newline", "[\r\n\u2028\u2029\u000b\u000c\u0085]", [(r"{NEWLINE}", None)], _const(_NEWLINE_TOKEN)),
    ("nbsp_entity", "&", [(r"&nbsp;", None)], _skip),
    # Anything else is "untokenizable": the default (firstDelete) drops it.
    ("untokenizable", ".", [(".", None)], _skip),
]

_MACRO_REF = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")
_CLASS_REF = re.compile(r"\{:(letter|digit|upper):\}")


def _class_body(predicate: Callable[[str], bool]) -> str:
    """Ranges of BMP characters satisfying ``predicate``, as ``re`` character class contents."""
    parts: list[str] = []
    start = None
    for code in range(0x10001):
        inside = code < 0x10000 and predicate(chr(code))
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            end = code - 1
            parts.append(f"\\u{start:04x}" if start == end else f"\\u{start:04x}-\\u{end:04x}")
            start = None
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def _java_classes() -> dict[str, str]:
    # Java's Character.isLetter is exactly the L* categories, isDigit is Nd, and
    # isUpperCase is Lu plus Other_Uppercase (which str.isupper covers).
    return {
        "letter": _class_body(lambda ch: unicodedata.category(ch) in ("Lu", "Ll", "Lt", "Lm", "Lo")),
        "digit": _class_body(lambda ch: unicodedata.category(ch) == "Nd"),
        "upper": _class_body(lambda ch: unicodedata.category(ch) == "Lu" or ch.isupper()),
    }


def _expand(pattern: str) -> str:
    """Substitute macros (each as a group) and Java character classes, recursively."""
    previous = None
    while previous != pattern:
        previous = pattern
        pattern = _MACRO_REF.sub(lambda m: "(?:" + _MACROS[m.group(1)] + ")", pattern)
    classes = _java_classes()
    return _CLASS_REF.sub(lambda m: classes[m.group(1)], pattern)


def _caseless(pattern: str) -> str:
    """Make ASCII letters outside character classes match either case (JFlex %caseless)."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1]
            width = {"u": 6, "x": 4}.get(nxt, 2)
            out.append(pattern[i : i + width])
            i += width
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            # A "]" right after "[" or "[^" would be literal; the patterns above never do that.
            if pattern[i + 1] == "^":
                out.append("[^")
                i += 2
                continue
        elif ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}]")
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class _Rule:
    """One PTBLexer rule: alternatives whose longest match competes, and its action."""

    __slots__ = ("name", "first", "patterns", "action")

    def __init__(self, name: str, first: str, alternatives: list[tuple[str, str | None]], action: _Action) -> None:
        self.name = name
        self.first = re.compile(_expand(first), re.DOTALL)
        compiled = []
        for r1, r2 in alternatives:
            source = "(" + _caseless(_expand(r1)) + ")"
            if r2 is not None:
                source += "(?:" + _caseless(_expand(r2)) + ")"
            compiled.append(re.compile(source))
        self.patterns = tuple(compiled)
        self.action = action


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _to_utf16_units(text: str) -> str:
    """Split characters outside the BMP into surrogate pairs, as Java strings hold them."""
    if not _ASTRAL.search(text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x10000:
            out.append(ch)
        else:
            code -= 0x10000
            out.append(chr(0xD800 + (code >> 10)) + chr(0xDC00 + (code & 0x3FF)))
    return "".join(out)


def _from_utf16_units(token: str) -> str:
    """Re-join surrogate pairs left in a token (a lone one becomes "?", as Java's UTF-8 writer does)."""
    if not _SURROGATE.search(token):
        return token
    return token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").replace("\ufffd", "?")


class _PTBLexer:
    """Python emulation of stanford-corenlp 3.4.1's PTBLexer with PTBTokenizer's defaults.

    The defaults are what ``PTBTokenizer -preserveLines`` uses: ptb3 escaping on
    (brackets to -LRB- etc., quotes to `` and '', "..." and "--"), no americanization,
    assimilations split ("cannot" -> "can not"), untokenizable characters deleted, and
    newlines returned as tokens.
    """

    # Runs of ASCII letters followed by white space are by far the most common token; no
    # rule can match longer than the word there or produce anything but the word, except
    # the assimilation rules (which split the word), so they skip the rule-by-rule search.
    _SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])

    def __init__(self) -> None:
        self.rules = [_Rule(*spec) for spec in _RULE_SPECS]
        self._fast = re.compile(r"[ \t]+|([A-Za-z]+)(?=[ \t\n]|\Z)")
        self._candidates: dict[str, tuple[_Rule, ...]] = {}

    def candidates(self, ch: str) -> tuple[_Rule, ...]:
        rules = self._candidates.get(ch)
        if rules is None:
            rules = tuple(rule for rule in self.rules if rule.first.match(ch))
            self._candidates[ch] = rules
        return rules

    def tokens(self, text: str) -> list[str]:
        """Tokens of ``text`` (lexer output, before lower-casing); ``"\\n"`` marks a newline token."""
        # JFlex scans UTF-16 code units: a character outside the BMP is two surrogates,
        # which no rule accepts, so each is deleted as untokenizable.
        text = _to_utf16_units(text)
        out: list[str] = []
        pos = 0
        end = len(text)
        fast = self._fast
        split_words = self._SPLIT_WORDS
        while pos < end:
            m = fast.match(text, pos)
            if m is not None:
                word = m.group(1)
                if word is None:  # a run of spaces/tabs
                    pos = m.end()
                    continue
                if word.lower() not in split_words:
                    out.append(word)
                    pos = m.end()
                    continue
            best_len = 0
            best_rule: _Rule | None = None
            best_text = ""
            for rule in self.candidates(text[pos]):
                for pattern in rule.patterns:
                    m = pattern.match(text, pos)
                    if m is not None and m.end() - pos > best_len:
                        best_len, best_rule, best_text = m.end() - pos, rule, m.group(1)
            if best_rule is None:  # unreachable: "untokenizable" matches any character but "\n"
                pos += 1
                continue
            token, consumed = best_rule.action(best_text)
            if token is not None:
                out.append(_from_utf16_units(token))
            pos += consumed
        return out


@functools.lru_cache(maxsize=1)
def _lexer() -> _PTBLexer:
    # Built on first use: compiling the rules with Unicode classes takes a moment.
    return _PTBLexer()


def _tokenize_lines(lines: Sequence[str]) -> list[str]:
    """PTBTokenizer -preserveLines -lowerCase on ``lines`` joined by newlines, then the filter."""
    text = "\n".join(one_line(line) for line in lines)
    # Tokenizing the joined text (not line by line) matters: some rules look past the end
    # of a line (e.g. "etc." before a capitalised next line is split "etc. .").
    out_lines: list[list[str]] = [[]]
    for token in _lexer().tokens(text):
        if token == _NEWLINE_TOKEN:
            out_lines.append([])
        else:
            # Java's toLowerCase(Locale.ENGLISH) and str.lower agree on these characters.
            out_lines[-1].append(token.lower())
    # pycocoevalcap: " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
    result = []
    for words in out_lines:
        line = " ".join(words).rstrip()
        result.append(" ".join(w for w in line.split(" ") if w not in PTB_PUNCTUATIONS))
    if len(result) != len(lines):  # pragma: no cover - guarded by _LINE_BREAKS
        raise RuntimeError(f"PTB tokenizer produced {len(result)} lines for {len(lines)} captions")
    return result


def ptb_tokenize(captions_for_image: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """Tokenize captions the way pycocoevalcap's ``PTBTokenizer().tokenize`` does, without Java.

    The captions of all images are tokenized as one document, one caption per line, in
    mapping order, as pycocoevalcap does (a few rules look across line ends).

    Args:
        captions_for_image: image id -> list of caption strings. (pycocoevalcap takes
            ``{"caption": str}`` dicts; plain strings are accepted here.)

    Returns:
        image id -> list of tokenized captions (lower case, tokens joined by single
        spaces, punctuation tokens removed), in input order.
    """
    keys: list[K] = []
    lines: list[str] = []
    for key, captions in captions_for_image.items():
        for caption in captions:
            keys.append(key)
            lines.append(caption)
    tokenized = _tokenize_lines(lines)
    out: dict[K, list[str]] = {key: [] for key in captions_for_image}
    for key, line in zip(keys, tokenized):
        out[key].append(line)
    return out


def ptb_tokenize_caption(caption: str) -> str:
    """Tokenize one caption on its own (as the last line of a document).

    Args:
        caption: raw caption text.

    Returns:
        The tokenized caption, as :func:`ptb_tokenize` would give it for a one-caption input.
    """
    return _tokenize_lines([caption])[0]
