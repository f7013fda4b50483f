"""Rule-based CheXpert-style findings labeler: radiology report text -> 14 observation labels.

The labeler reads free text (a generated or a reference report) and returns, for each of the 14 CheXpert
observations, ``POSITIVE`` (1), ``NEGATIVE`` (0), ``UNCERTAIN`` (-1) or ``None`` (not mentioned).  It needs no
model weights, no network and no Java; it is deterministic and labels thousands of reports per second.

All wording lives in ``chexpert_phrases.yaml`` next to this module (mention phrases per observation, negation
and uncertainty cues, scope terminators); that file's header explains the phrase syntax.  The procedure:

1. Normalise: lower-case; split into sentences at ".", ";", "!" and blank lines (not at a "." between digits,
   nor after "vs", "e.g.", "i.e.", "dr", "approx"); hyphens between letters become spaces; "r/o", "w/o",
   "s/p", "w/", "n't" are spelled out; de-identification tokens such as "XXXX" stay ordinary words that match
   no phrase.
2. Find every mention of every observation.  A mention inside an ``exclude`` phrase of its observation is
   dropped ("pericardial effusion" is not a pleural effusion).
3. Classify each mention inside its clause, i.e. its sentence cut at terminator words ("but", "however",
   "except", "which", "there is", ...), using the cue text in which ``pseudo_negation`` spans ("no change
   in") are blanked:

   * an ``uncertain_negation`` cue ("cannot be excluded", "cannot exclude") -> UNCERTAIN;
   * else a ``negation`` cue -> NEGATIVE;
   * else an ``uncertainty`` cue -> UNCERTAIN;
   * else POSITIVE.

   "pre" cues are looked for from the clause start to the end of the mention (so "heart is not enlarged"
   is negative); a "post" cue must start after the mention and before the first comma, the next mention
   that is not part of the same list, the clause end or ``post_cue_words`` words, whichever comes first.
   Mentions joined by "," / "and" / "or" / "/" (plus up to two modifier words) or by a bare space form one
   list, so in "pneumothorax or pleural effusion is not seen" the post cue reaches every item.
4. ``normal`` phrases ("heart size is normal", "the lungs are clear") give NEGATIVE for their observation
   regardless of cues.
5. Several findings of one observation in a report combine with the CheXpert precedence
   POSITIVE > UNCERTAIN > NEGATIVE; an observation never found is ``None``.  Laterality words ("left",
   "bilateral") are not cues, so "no right effusion; small left effusion" is POSITIVE.
6. No Finding (column ``no_finding``) is derived:

   * 0 when any observation other than Support Devices is POSITIVE or UNCERTAIN, or when an abnormality
     outside the 14 observations (the ``other_finding`` list: emphysema, granuloma, degenerative change,
     scoliosis, low lung volumes, ...) is POSITIVE or UNCERTAIN;
   * else 1 when the report labels at least one observation or ``other_finding`` (as NEGATIVE, or Support
     Devices in any state), or states whole-report normality ("no acute cardiopulmonary abnormality",
     "normal chest");
   * else ``None`` (the report says nothing the labeler recognises).

   Unlike the original CheXpert labeler, which only ever writes 1 or blank for No Finding, this gives 0
   for abnormal reports so that normal-vs-abnormal can be scored directly.

An empty, whitespace-only or ``None`` text gives ``None`` for every column, No Finding included.  The
whole text is labelled, so pass the findings and impression: an indication such as "r/o pneumonia" would
count as an uncertain pneumonia.

``LABELER_VERSION`` ("rb<procedure revision>-<8 hex digits>") changes whenever the procedure revision in this
module is bumped or the parsed content of the phrase file changes (comments and layout do not count).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
COLUMNS: tuple[str, ...] = tuple(name.lower().replace(" ", "_") for name in OBSERVATIONS)

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

PHRASES_FILE = "chexpert_phrases.yaml"

# Bump when the matching procedure in this module changes; edits of the phrase file change the digest part
# of LABELER_VERSION by themselves.
_PROCEDURE_REVISION = 1

_NO_FINDING = "no_finding"
_SUPPORT_DEVICES = "support_devices"
_OTHER = "other_finding"
# Observations with mention phrases, in output order, followed by the internal other-abnormality category.
_CATEGORIES: tuple[str, ...] = COLUMNS[1:] + (_OTHER,)
# Categories whose POSITIVE/UNCERTAIN label makes No Finding 0.
_ABNORMAL_CATEGORIES: frozenset[str] = frozenset(_CATEGORIES) - {_SUPPORT_DEVICES}

_RANK = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}

_TOP_LEVEL_KEYS = (
    "macros", "gaps", "observations", "negation", "uncertain_negation", "uncertainty", "pseudo_negation", "scope",
)
_PHRASE_KINDS = ("mention", "normal", "exclude")
_MACRO_RE = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Rules:
    """Compiled phrase and cue patterns (see ``load_rules``)."""

    mention: dict[str, re.Pattern[str]]
    normal: dict[str, re.Pattern[str]]
    exclude: dict[str, re.Pattern[str]]
    report_normal: re.Pattern[str] | None
    negation_pre: re.Pattern[str]
    negation_post: re.Pattern[str]
    uncertain_negation_pre: re.Pattern[str]
    uncertain_negation_post: re.Pattern[str]
    uncertainty_pre: re.Pattern[str]
    uncertainty_post: re.Pattern[str]
    pseudo_negation: re.Pattern[str]
    terminators: re.Pattern[str]
    post_cue_words: re.Pattern[str]
    digest: str


@dataclass(frozen=True)
class Mention:
    """One finding of an observation in a report, as ``explain_report`` returns it.

    ``observation`` is a column name or ``"other_finding"``; ``kind`` is ``"mention"`` (classified by cues) or
    ``"normal"`` (a statement of absence); ``text`` is the matched words and ``sentence`` the normalised
    sentence they are in.
    """

    observation: str
    label: int
    kind: str
    text: str
    sentence: str


class PhraseFileError(ValueError):
    """The phrase file is malformed; the message names the file and the key."""


# --------------------------------------------------------------------------------------------------------
# Loading and compiling the phrase file


def _default_phrase_text() -> tuple[str, str]:
    """Return (text, name) of the phrase file shipped with the package."""
    try:
        ref = resources.files("cxrgen.metrics").joinpath(PHRASES_FILE)
        return ref.read_text(encoding="utf-8"), str(ref)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        path = Path(__file__).with_name(PHRASES_FILE)
        return path.read_text(encoding="utf-8"), str(path)


def _string_list(value: Any, where: str, source: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise PhraseFileError(f"{source}: {where} must be a list of non-empty strings")
    return value


def _mapping(value: Any, where: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise PhraseFileError(f"{source}: {where} must be a mapping")
    return value


def _gap_regex(spec: Any, name: str, source: str) -> str:
    spec = _mapping(spec, f"gaps.{name}", source)
    max_words = spec.get("max_words")
    if not isinstance(max_words, int) or isinstance(max_words, bool) or not 0 <= max_words <= 20:
        raise PhraseFileError(f"{source}: gaps.{name}.max_words must be an integer from 0 to 20")
    allow_commas = spec.get("allow_commas", False)
    if not isinstance(allow_commas, bool):
        raise PhraseFileError(f"{source}: gaps.{name}.allow_commas must be true or false")
    stop_words = _string_list(spec.get("stop_words"), f"gaps.{name}.stop_words", source)
    word = r"[^ \n]+" if allow_commas else r"[^ \n,]+"
    if stop_words:
        stops = "|".join(re.escape(w) for w in stop_words)
        word = rf"(?!(?:{stops})(?![a-z0-9])){word}"
    # Used as "A{gap}B" in place of "A {gap} B": each skipped word brings its leading space; with commas
    # allowed, the word before the gap may end in one ("the heart, lungs and mediastinum are normal").
    comma = "," if allow_commas else ""
    return rf"{comma}{'?' if comma else ''}(?: {word}){{0,{max_words}}} "


def _expand(phrase: str, macros: dict[str, str], gaps: dict[str, str], where: str, source: str) -> str:
    for name, regex in gaps.items():
        phrase = phrase.replace(f" {{{name}}} ", regex)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in gaps:
            raise PhraseFileError(f"{source}: {where}: {{{name}}} must stand between two words, with spaces")
        if name not in macros:
            raise PhraseFileError(f"{source}: {where}: unknown macro {{{name}}} in {phrase!r}")
        return macros[name]

    return _MACRO_RE.sub(substitute, phrase)


def _compile_list(
    phrases: list[str], macros: dict[str, str], gaps: dict[str, str], where: str, source: str
) -> re.Pattern[str] | None:
    """One alternation of whole-word phrases, or None for an empty list."""
    parts = []
    for index, phrase in enumerate(phrases):
        item = f"{where}[{index}]"
        regex = _expand(phrase.strip(), macros, gaps, item, source)
        try:
            re.compile(regex)
        except re.error as err:
            raise PhraseFileError(f"{source}: {item}: invalid regular expression {phrase!r}: {err}") from None
        parts.append(f"(?:{regex})")
    if not parts:
        return None
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(parts) + r")(?![a-z0-9])")


_NEVER = re.compile(r"(?!)")


def load_rules(path: str | Path | None = None) -> Rules:
    """Read and compile a phrase file (default: the packaged ``chexpert_phrases.yaml``).

    Raises ``PhraseFileError`` naming the file and the key for a malformed file.
    """
    if path is None:
        text, source = _default_phrase_text()
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise PhraseFileError(f"{source}: cannot read phrase file: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PhraseFileError(f"{source}: not valid YAML: {err}") from None
    data = _mapping(data, "the top level", source)
    unknown = sorted(set(data) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise PhraseFileError(f"{source}: unknown top-level key(s) {unknown}; expected {list(_TOP_LEVEL_KEYS)}")

    macros_raw = _mapping(data.get("macros") or {}, "macros", source)
    macros: dict[str, str] = {}
    for name, value in macros_raw.items():
        if not isinstance(value, str) or not re.fullmatch(r"[a-z_]+", str(name)):
            raise PhraseFileError(f"{source}: macros.{name} must be a string under a lower_case name")
        macros[name] = value
    gaps = {name: _gap_regex(spec, name, source) for name, spec in _mapping(data.get("gaps"), "gaps", source).items()}
    clash = sorted(set(gaps) & set(macros))
    if clash:
        raise PhraseFileError(f"{source}: names {clash} are both macros and gaps")
    for name, value in macros.items():
        if _MACRO_RE.search(value):
            raise PhraseFileError(f"{source}: macros.{name} may not use other macros or gaps")

    def compile_list(value: Any, where: str) -> re.Pattern[str] | None:
        return _compile_list(_string_list(value, where, source), macros, gaps, where, source)

    observations = _mapping(data.get("observations"), "observations", source)
    expected = set(_CATEGORIES) | {_NO_FINDING}
    unknown = sorted(set(observations) - expected)
    if unknown:
        raise PhraseFileError(f"{source}: observations: unknown observation(s) {unknown}")
    mention: dict[str, re.Pattern[str]] = {}
    normal: dict[str, re.Pattern[str]] = {}
    exclude: dict[str, re.Pattern[str]] = {}
    for category in _CATEGORIES:
        if category not in observations:
            raise PhraseFileError(f"{source}: observations.{category} is missing")
        entry = _mapping(observations[category], f"observations.{category}", source)
        bad = sorted(set(entry) - set(_PHRASE_KINDS))
        if bad:
            raise PhraseFileError(f"{source}: observations.{category}: unknown key(s) {bad}")
        compiled = compile_list(entry.get("mention"), f"observations.{category}.mention")
        if compiled is None:
            raise PhraseFileError(f"{source}: observations.{category}.mention must list at least one phrase")
        mention[category] = compiled
        for kind, target in (("normal", normal), ("exclude", exclude)):
            pattern = compile_list(entry.get(kind), f"observations.{category}.{kind}")
            if pattern is not None:
                target[category] = pattern
    no_finding = _mapping(observations.get(_NO_FINDING) or {}, f"observations.{_NO_FINDING}", source)
    if set(no_finding) - {"normal"}:
        raise PhraseFileError(f"{source}: observations.{_NO_FINDING} takes only a 'normal' list")
    report_normal = compile_list(no_finding.get("normal"), f"observations.{_NO_FINDING}.normal")

    def cue(section: str, side: str) -> re.Pattern[str]:
        block = _mapping(data.get(section), section, source)
        return compile_list(block.get(side), f"{section}.{side}") or _NEVER

    scope = _mapping(data.get("scope"), "scope", source)
    terminators = compile_list(scope.get("terminators"), "scope.terminators") or _NEVER
    words = scope.get("post_cue_words")
    if not isinstance(words, int) or isinstance(words, bool) or not 1 <= words <= 30:
        raise PhraseFileError(f"{source}: scope.post_cue_words must be an integer from 1 to 30")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:8]
    return Rules(
        mention=mention,
        normal=normal,
        exclude=exclude,
        report_normal=report_normal,
        negation_pre=cue("negation", "pre"),
        negation_post=cue("negation", "post"),
        uncertain_negation_pre=cue("uncertain_negation", "pre"),
        uncertain_negation_post=cue("uncertain_negation", "post"),
        uncertainty_pre=cue("uncertainty", "pre"),
        uncertainty_post=cue("uncertainty", "post"),
        pseudo_negation=compile_list(data.get("pseudo_negation"), "pseudo_negation") or _NEVER,
        terminators=terminators,
        post_cue_words=re.compile(rf"[^ \n,]*(?: [^ \n,]+){{0,{words}}}"),
        digest=digest,
    )


# --------------------------------------------------------------------------------------------------------
# Normalisation

# (needle, pattern, replacement): the pattern is only run on texts that contain the needle.
_REWRITES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (needle, re.compile(pattern), replacement)
    for needle, pattern, replacement in (
        ("\r", r"\r\n?", "\n"),
        ("\n", r"\n[ \t]*\n", " . "),  # a blank line ends a sentence
        ("/", r"\br/o\b", "rule out"),
        ("/", r"\bw/o\b", "without"),
        ("/", r"\bs/p\b", "status post"),
        ("/", r"\bw/(?=[ a-z])", "with "),
        (".", r"\b(vs|approx|dr|mr|mrs|ms|st)\.", r"\1"),
        (".", r"\be\.g\.", "eg"),
        (".", r"\bi\.e\.", "ie"),
        ("'", r"\b(ca|can|won|wo)n't\b", r"\1 not"),
        ("'", r"n't\b", " not"),
        ("-", r"(?<=[a-z])-(?=[a-z])", " "),
        ("?", r"\?", " ? "),
    )
)
_SENTENCE_SPLIT = re.compile(r"(?<![0-9])\.|\.(?![0-9])|[;!]")
_WHITESPACE = re.compile(r"\s+")
# Between two list items: a comma and/or "and"/"or"/"nor" or a slash, then at most two modifier words; or
# nothing but a space ("mass lesion").
_LIST_SEPARATOR = re.compile(
    r" ?/ ?| "
    r"|(?:,? (?:and|or|nor|and/or|as well as) |, )"
    r"(?:(?!(?:with|without|that|which|who|in|on|at|of|to|is|are|was|were|has|have|be|been|no|not)\b)[a-z]+ ){0,2}"
)


def normalize(text: str) -> str:
    """Normalised report text: lower case, one sentence per line, single spaces (see the module docstring)."""
    text = text.lower()
    for needle, pattern, replacement in _REWRITES:
        if needle in text:
            text = pattern.sub(replacement, text)
    text = _WHITESPACE.sub(" ", text)
    sentences = (part.strip() for part in _SENTENCE_SPLIT.split(text))
    return "\n".join(s for s in sentences if s)


# --------------------------------------------------------------------------------------------------------
# Labelling

_RULES: Rules = load_rules()
# "rb<procedure revision>-<first 8 hex digits of the SHA-256 of the parsed phrase file>", e.g. "rb1-0123abcd";
# only letters, digits and "-", so that it can sit inside the evaluation signature.
LABELER_VERSION: str = f"rb{_PROCEDURE_REVISION}-{_RULES.digest}"


def _find(norm: str, rules: Rules) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    """Mentions (start, end, category) sorted by start, and normal-phrase matches (start, end, category)."""
    mentions: list[tuple[int, int, str]] = []
    normals: list[tuple[int, int, str]] = []
    for category in _CATEGORIES:
        found = [(m.start(), m.end(), category) for m in rules.mention[category].finditer(norm)]
        if found and category in rules.exclude:
            for veto in rules.exclude[category].finditer(norm):
                v_start, v_end = veto.span()
                found = [f for f in found if not (f[0] < v_end and v_start < f[1])]
        mentions.extend(found)
        if category in rules.normal:
            normals.extend((m.start(), m.end(), category) for m in rules.normal[category].finditer(norm))
    mentions.sort()
    return mentions, normals


def _post_cue(pattern: re.Pattern[str], cue_text: str, start: int, window_end: int, clause_end: int) -> bool:
    """Whether a post cue starts in [start, window_end); it may run on to the clause end, so that its
    look-aheads ("may" not followed by "represent") see the words after the window."""
    if window_end <= start:
        return False
    match = pattern.search(cue_text, start, clause_end)
    return match is not None and match.start() < window_end


def _classify_all(norm: str, rules: Rules) -> list[tuple[int, int, str, int, str]]:
    """Every labelled finding as (start, end, category, label, kind) in text order."""
    mentions, normals = _find(norm, rules)
    results = [(start, end, category, NEGATIVE, "normal") for start, end, category in normals]
    if not mentions:
        return results
    cue_text = rules.pseudo_negation.sub(lambda m: "#" * len(m.group()), norm)
    term_starts: list[int] = []
    term_ends: list[int] = []
    for m in rules.terminators.finditer(norm):
        term_starts.append(m.start())
        term_ends.append(m.end())
    # A post window stops at a normal phrase and at any mention that does not continue a list.
    stoppers = sorted([(s, e, True) for s, e, _ in mentions] + [(s, e, False) for s, e, _ in normals])
    stopper_starts = [s for s, _, _ in stoppers]
    length = len(norm)
    for start, end, category in mentions:
        sentence_start = norm.rfind("\n", 0, start) + 1
        sentence_end = norm.find("\n", end)
        if sentence_end < 0:
            sentence_end = length
        clause_start, clause_end = sentence_start, sentence_end
        i = bisect.bisect_right(term_ends, start) - 1
        if i >= 0 and term_ends[i] > clause_start:
            clause_start = term_ends[i]
        i = bisect.bisect_left(term_starts, end)
        if i < len(term_starts) and term_starts[i] < clause_end:
            clause_end = term_starts[i]

        # Follow a list ("x, y or z") to its last item; the post window starts after it.
        chain_end = end
        stop = clause_end
        j = bisect.bisect_left(stopper_starts, start)
        while j < len(stoppers):
            other_start, other_end, chainable = stoppers[j]
            j += 1
            if other_start >= clause_end:
                break
            if other_start < chain_end:
                if chainable:
                    chain_end = max(chain_end, min(other_end, clause_end))
                continue
            between = norm[chain_end:other_start]
            if (
                chainable
                and _LIST_SEPARATOR.fullmatch(between)
                and not rules.negation_pre.search(cue_text, chain_end, other_start)
                and not rules.uncertainty_pre.search(cue_text, chain_end, other_start)
            ):
                chain_end = max(chain_end, min(other_end, clause_end))
                continue
            stop = other_start
            break
        post_end = min(stop, rules.post_cue_words.match(norm, chain_end, clause_end).end())

        if rules.uncertain_negation_pre.search(cue_text, clause_start, end) or _post_cue(
            rules.uncertain_negation_post, cue_text, end, post_end, clause_end
        ):
            label = UNCERTAIN
        elif rules.negation_pre.search(cue_text, clause_start, end) or _post_cue(
            rules.negation_post, cue_text, end, post_end, clause_end
        ):
            label = NEGATIVE
        elif rules.uncertainty_pre.search(cue_text, clause_start, end) or _post_cue(
            rules.uncertainty_post, cue_text, end, post_end, clause_end
        ):
            label = UNCERTAIN
        else:
            label = POSITIVE
        results.append((start, end, category, label, "mention"))
    results.sort()
    return results


def _labels_from(norm: str, findings: list[tuple[int, int, str, int, str]], rules: Rules) -> dict[str, int | None]:
    best: dict[str, int] = {}
    for _, _, category, label, _ in findings:
        held = best.get(category)
        if held is None or _RANK[label] > _RANK[held]:
            best[category] = label
    labels: dict[str, int | None] = {column: best.get(column) for column in COLUMNS}
    if any(best.get(c) in (POSITIVE, UNCERTAIN) for c in _ABNORMAL_CATEGORIES):
        labels[_NO_FINDING] = NEGATIVE
    elif best or (rules.report_normal is not None and rules.report_normal.search(norm)):
        labels[_NO_FINDING] = POSITIVE
    else:
        labels[_NO_FINDING] = None
    return labels


def _empty() -> dict[str, int | None]:
    return {column: None for column in COLUMNS}


def label_report(text: str | None) -> dict[str, int | None]:
    """Label one report: a dict keyed by ``COLUMNS`` with values 1, 0, -1 or None (see the module docstring).

    Raises ``TypeError`` when ``text`` is neither a string nor None.
    """
    if text is None:
        return _empty()
    if not isinstance(text, str):
        raise TypeError(f"label_report expects a str or None, got {type(text).__name__}")
    norm = normalize(text)
    if not norm:
        return _empty()
    return _labels_from(norm, _classify_all(norm, _RULES), _RULES)


def label_reports(texts: Iterable[str | None]) -> list[dict[str, int | None]]:
    """Label many reports; item i of the result belongs to item i of ``texts``.

    Raises ``TypeError`` naming the index of an item that is neither a string nor None.
    """
    out = []
    for index, text in enumerate(texts):
        try:
            out.append(label_report(text))
        except TypeError as err:
            raise TypeError(f"report {index}: {err}") from None
    return out


def explain_report(text: str | None) -> list[Mention]:
    """Every finding behind ``label_report(text)``, in text order, for inspecting a label."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise TypeError(f"explain_report expects a str or None, got {type(text).__name__}")
    norm = normalize(text)
    result = []
    for start, end, category, label, kind in _classify_all(norm, _RULES):
        sentence_start = norm.rfind("\n", 0, start) + 1
        sentence_end = norm.find("\n", end)
        sentence = norm[sentence_start : sentence_end if sentence_end >= 0 else len(norm)]
        result.append(Mention(category, label, kind, norm[start:end], sentence))
    return result
