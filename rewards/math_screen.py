"""What the `math` verifier refuses before math-verify compares an answer: posttrain's own rules, stricter than
math-verify's, which reads an answer leniently: where its LaTeX parser fails on the whole answer (`\\neq 4`,
`5 ? 4`) it tries smaller matches down to the last number; it drops `\\phantom`, colours and a trailing
`\\text{...}`; it reads `4\\%` as 4 or 0.04, whichever matches. An RL policy learns to exploit each. Here an
answer must be one visible value equal to the gold answer:

- **whole**: math-verify must parse the whole answer (math_answer._parse, `whole=True`), else it scores 0;
- **hidden or struck-out text** (`\\phantom`, `\\color`, `\\textcolor`, `\\cancel`, kerns, ...) refuses the
  answer, and a `\\boxed{}` inside such a command or after a `\\color` switch is no answer (hidden_intervals);
- **negations** (`\\neq`, `\\not`, `\\neg`, `\\notin`, ...) and **relations** (`<`, `\\geq`, `\\approx`, `\\in`,
  `\\implies`, `\\lor`, ...) are refused unless the gold answer uses the same ones; `=` only as `NAME = value`
  (one `=`, a left side with no digit outside subscripts or arguments: `x = 4`, `f(3) = 4`, `a+b = 4`), or as
  many as the gold answer has;
- **percentages**: `4\\%` means 0.04 (literal_percent), unless the gold answer is a percentage too;
- **words** in `\\text{}`-like commands must be units (UNITS), words of the gold answer, or "percent" where the
  gold answer is a percentage: `4 \\text{ cm}` is kept, `4 \\text{ is incorrect}`, `4 \\text{ cm or } 5 \\text{ cm}`
  are refused;
- **several candidates**: two option labels (`(A) 4 \\quad (B) 5`), a `cases`/`array`/`aligned` environment, a
  line break `\\\\` or `&` outside a matrix (unless the gold answer has them) are refused. Several values (`4, 5`,
  `\\{4, 5\\}`, several different boxes) reach math-verify as a set, equal only to a gold answer of those values.
"""
from __future__ import annotations

import re

HIDING = ("phantom", "hphantom", "vphantom", "smash", "color", "textcolor", "colorbox", "fcolorbox", "pagecolor",
          "mathcolor", "cancel", "bcancel", "xcancel", "cancelto", "sout", "st", "xout", "llap", "rlap", "clap",
          "mathllap", "mathrlap", "mathclap", "kern", "mkern", "hskip", "mskip", "hspace", "mspace", "raisebox",
          "scalebox", "resizebox", "iffalse", "comment", "tag", "label", "hidden", "class", "style", "cssId")
NEGATIONS = ("neq", "ne", "not", "neg", "lnot", "notin", "nless", "ngtr", "nleq", "ngeq", "nleqslant", "ngeqslant",
             "nsubseteq", "nsupseteq", "nmid", "nparallel", "ncong", "nsim", "nequiv")
RELATIONS = ("le", "leq", "leqq", "leqslant", "ge", "geq", "geqq", "geqslant", "lt", "gt", "ll", "gg", "approx",
             "sim", "simeq", "cong", "equiv", "propto", "doteq", "in", "ni", "subset", "subseteq", "supset",
             "supseteq", "subsetneq", "supsetneq", "Rightarrow", "Leftarrow", "Leftrightarrow", "implies",
             "impliedby", "iff", "to", "rightarrow", "leftarrow", "mapsto", "lor", "land", "vee", "wedge", "prec",
             "succ", "preceq", "succeq", "parallel", "perp", "mid", "vdash", "models", "coloneqq", "eqqcolon")
UNITS = frozenset("""unit units square sq cubic cu per degree degrees deg radian radians rad mm cm dm m km meter meters
    metre metres centimeter centimeters kilometer kilometers millimeter millimeters inch inches in ft foot feet yd
    yard yards mile miles mph kph km/h acre acres hectare hectares g mg kg gram grams kilogram kilograms lb lbs
    pound pounds oz ounce ounces ton tons l ml liter liters litre litres gallon gallons cup cups s sec second
    seconds min minute minutes h hr hrs hour hours day days week weeks month months year years dollar dollars
    cent cents euro euros""".split())
MATRIX_ENVS = ("matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "smallmatrix")

SWITCHES = ("color", "pagecolor", "iffalse")  # hide what follows them in their group, not an argument
_HIDING = re.compile(r"\\(" + "|".join(HIDING) + r")(?![A-Za-z])")
_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|[{}]|[^\s\\{}]")
_ALIASES = {"\\ne": "\\neq", "\\le": "\\leq", "\\ge": "\\geq", "\\lt": "<", "\\gt": ">"}
_RELATION = re.compile(r"<|>|(?<!\\)=|\\(" + "|".join(NEGATIONS + RELATIONS) + r")(?![A-Za-z])")
_TEXT = re.compile(r"\\(?:text[a-z]*|math(?:rm|bf|it|sf|tt|normal)|mbox|hbox|emph|operatorname\*?)\s*\{")
_WORD = re.compile(r"[A-Za-z]+")
_PERCENT = re.compile(r"%|percent", re.IGNORECASE)
_PERCENT_SIGN = re.compile(r"\\?%")
_LABEL = re.compile(r"(?:^|(?<=[\s,;{}~]))(?:\(\s*[A-Ha-h]\s*\)|[A-Ha-h]\s*[).:])(?=\s*[-+\d\\$.(])")
_ENV = re.compile(r"\\begin\s*\{\s*([A-Za-z*]+)\s*\}")
_MATRIX = re.compile(r"\\begin\s*\{\s*(?:" + "|".join(MATRIX_ENVS) + r")\s*\}.*?\\end\s*\{[^{}]*\}", re.DOTALL)
_BREAK = re.compile(r"\\\\|&|\\newline(?![A-Za-z])|\\cr(?![A-Za-z])")
_GROUPED = re.compile(r"_\{[^{}]*\}|_\\?\w|\([^()]*\)|\[[^\[\]]*\]|\^\{?\\prime\}?|'")
_SPACING = re.compile(r"\\(?:left|right|[,;:! ])|\s")


def balanced_group(text: str, open_at: int) -> str | None:
    """The content of the brace group opening at `open_at`, or None if it never closes."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += (text[i] == "{") - (text[i] == "}")
        if depth == 0:
            return text[open_at + 1:i]
    return None


def hidden_intervals(text: str) -> list[tuple[int, int]]:
    """(start, end) of the text that hiding commands cover, in one pass: the brace groups (up to three) or the
    single token right after `\\phantom`-like commands, and the rest of the enclosing group after a switch
    (`\\color`). Empty, at the cost of one regex search, for a text without hiding commands."""
    if not _HIDING.search(text):
        return []
    intervals: list[tuple[int, int]] = []
    hidden = [False]  # per open brace group: does a hiding command cover it
    starts = [0]  # where each group's hiding began
    pending, pending_depth = 0, 0  # argument groups still to hide, at that depth
    for token in _TOKEN.finditer(text):
        t, at = token.group(0), token.start()
        if t == "{":
            hide = hidden[-1] or (pending > 0 and pending_depth == len(hidden))
            if pending and pending_depth == len(hidden):
                pending -= 1
            starts.append(starts[-1] if hidden[-1] else at)
            hidden.append(hide)
        elif t == "}":
            if len(hidden) > 1:
                was, start = hidden.pop(), starts.pop()
                if was and not hidden[-1]:
                    intervals.append((start, token.end()))
        elif t.startswith("\\") and t[1:] in HIDING:
            if t[1:] in SWITCHES and not hidden[-1]:
                hidden[-1], starts[-1] = True, at
            pending, pending_depth = 3, len(hidden)
        elif pending and pending_depth == len(hidden):
            if pending == 3 and not hidden[-1]:  # no group came: the argument is this one token
                intervals.append((at, token.end()))
            pending = 0
    if any(hidden):
        intervals.append((starts[hidden.index(True)], len(text)))
    return intervals


def _relations(latex: str) -> list[str]:
    return [_ALIASES.get(m.group(0), m.group(0)) for m in _RELATION.finditer(latex)]


def _is_name(lhs: str) -> bool:
    """A variable or quantity (`x`, `x_1`, `f(3)`, `a+b`, `AB`, `\\theta`): a letter, and no digit outside
    subscripts, arguments or primes."""
    bare = _SPACING.sub("", lhs)
    for _ in range(3):  # nested groups
        bare = _GROUPED.sub("", bare)
    return bool(re.search(r"[A-Za-z]", bare)) and not re.search(r"\d", bare)


def _text_words(latex: str) -> list[str]:
    words = []
    for match in _TEXT.finditer(latex):
        content = re.sub(r"\\[A-Za-z]+", " ", balanced_group(latex, match.end() - 1) or "")  # words, not commands
        words += [w.lower() for w in _WORD.findall(content)]
    return words


def literal_percent(gold: str, answer: str) -> str:
    """The answer with each percent sign read as what it means, /100, unless the gold answer is a percentage
    too (then math-verify compares them): math-verify reads `4\\%` as 4 or 0.04, whichever matches."""
    return answer if _PERCENT.search(gold) else _PERCENT_SIGN.sub(r"\\cdot\\frac{1}{100}", answer)


def refusal(gold: str, answer: str) -> str:
    """Why `answer` is refused against `gold` (both whitespace-normalised LaTeX), or "" when math-verify may
    decide. The gold answer is trusted: whatever it uses itself, the answer may use."""
    hiding = _HIDING.search(answer)
    if hiding:
        return f"hidden or struck-out text ({hiding.group(0)})"
    gold_relations, relations = _relations(gold), _relations(answer)
    extra = list(relations)
    for relation in gold_relations:
        if relation in extra:
            extra.remove(relation)
    if extra:
        negation = [r for r in extra if r.lstrip("\\") in NEGATIONS]
        if negation:
            return f"a negation ({negation[0]}) is not an answer"
        if gold_relations or extra != ["="] or not _is_name(answer.split("=", 1)[0]):
            return f"a relation ({' '.join(relations)}) where the gold answer is {'another' if gold_relations else 'a value'}"
    gold_words = set(_WORD.findall(gold.lower())) | ({"percent"} if _PERCENT.search(gold) else set())
    odd = [w for w in _text_words(answer) if w not in UNITS and w not in gold_words]
    if odd:
        return f"text that is no unit ({' '.join(odd[:4])})"
    if len(_LABEL.findall(answer)) >= 2:
        return "several lettered options"
    envs = [e for e in _ENV.findall(answer) if e not in MATRIX_ENVS and e not in _ENV.findall(gold)]
    if envs:
        return f"a {envs[0]} environment (several candidates)"
    if _BREAK.search(_MATRIX.sub("", answer)) and not _BREAK.search(_MATRIX.sub("", gold)):
        return "a line break or alignment (several candidates)"
    return ""
