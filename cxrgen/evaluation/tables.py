"""Tables of a summary: the terminal table, ``summary.md``, ``summary.csv`` rows, and the number
formats every output shares (the results page uses the same functions).

All of them read the ``summary.json`` dict only (:func:`cxrgen.evaluation.summaries.summary_dict`),
whose metric order is the registry's: first each system's ``metrics``, then the metrics of every
block (``clinical``), so a newly registered metric shows up everywhere without a change here.

Formats: a value with 4 decimals (``0.1235``), with its interval ``0.1235 [0.1000, 0.1500]`` and, for a
label metric, its support ``(ref+ 12, gen+ 9)``; a difference ``+0.0123 (0.042)`` with its p-value in 3
decimals (``<0.001`` below that), ``†`` when it rests on fewer than ``MIN_DISCORDANT`` discordant studies; an
em dash for none or an undefined value.

Under a published protocol the terminal and ``summary.md`` name it (and its reference) above the table, and a
second table lists the published-style values (each system's ``published``: the value as the published code
reports it, e.g. LLaVA-Rad's median of 500 bootstrap values and its BLEU on the 0-100 scale), with how each was
computed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from cxrgen.evaluation.scoring import MIN_DISCORDANT
from cxrgen.metrics import clinical

BLOCK_TITLES = {"clinical": "clinical (CheXpert labels)"}


def block_title(summary: Mapping, block: str) -> str:
    """The title row of a block: :data:`BLOCK_TITLES`, else the block's own ``title``, else its name."""
    if block in BLOCK_TITLES:
        return BLOCK_TITLES[block]
    for s in _if_mapping(summary.get("systems")).values():
        title = _if_mapping(_if_mapping(s).get(block)).get("title")
        if title:
            return str(title)
    return block


def fmt_value(v: float | None, digits: int = 4) -> str:
    """A value with 4 decimals, an em dash for none."""
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_entry(entry: Mapping | None) -> str:
    """``{"value", "ci"}`` as ``0.1235 [0.1000, 0.1500]`` (no brackets without an interval, an em
    dash for no entry or an undefined value), then the support of a label metric, ``(ref+ 12, gen+ 9)``."""
    if entry is None or entry.get("value") is None:
        return "—" + (_support(entry) if entry else "")
    ci = entry.get("ci")
    return fmt_value(entry.get("value")) + (f" [{fmt_value(ci[0])}, {fmt_value(ci[1])}]" if ci else "") + \
        _support(entry)


def _support(entry: Mapping) -> str:
    if "ref_positive" not in entry:
        return ""
    return f" (ref+ {entry['ref_positive']}, gen+ {entry['hyp_positive']})"


def fmt_p(p: float | None) -> str:
    """A p-value with 3 decimals, ``<0.001`` below that."""
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


UNRELIABLE = "†"


def fmt_diff(comparison: Mapping | None) -> str:
    """A comparison as ``+0.0123 (0.042)``: the difference and its p-value, marked ``†`` when it rests on
    too few discordant studies to be relied on."""
    if comparison is None or comparison.get("diff") is None:
        return "—"
    mark = UNRELIABLE if comparison.get("reliable") is False else ""
    return f"{comparison['diff']:+.4f} ({fmt_p(comparison.get('p_value'))}){mark}"


def _if_mapping(x) -> Mapping:
    return x if isinstance(x, Mapping) else {}


def metric_keys(summary: Mapping, order: Sequence[str] | None = None) -> list[tuple[str, str | None]]:
    """``(key, block)`` of every metric of the summary in order: the keys under each system's
    ``metrics`` (block None), then the keys under each block's ``metrics`` (block name)."""
    systems = _if_mapping(summary.get("systems"))
    order = list(order or systems)
    out: list[tuple[str, str | None]] = []
    seen = set()
    for n in order:
        for k in _if_mapping(_if_mapping(systems.get(n)).get("metrics")):
            if k not in seen:
                seen.add(k)
                out.append((k, None))
    for n in order:
        s = _if_mapping(systems.get(n))
        for block, value in s.items():
            if block == "metrics" or not isinstance(value, Mapping) or not isinstance(value.get("metrics"), Mapping):
                continue
            for k in value["metrics"]:
                if k not in seen:
                    seen.add(k)
                    out.append((k, block))
    return out


def entry(system_summary: Mapping, key: str) -> Mapping | None:
    """The ``{"value", "ci"}`` of ``key`` in one system's summary, wherever it is."""
    s = _if_mapping(system_summary)
    if key in _if_mapping(s.get("metrics")):
        return s["metrics"][key]
    for value in s.values():
        if isinstance(value, Mapping) and isinstance(value.get("metrics"), Mapping) and key in value["metrics"]:
            return value["metrics"][key]
    return None


def table_head(summary: Mapping) -> tuple[list[str], list[str], str]:
    """``(header, system order, baseline)`` of the metric table."""
    names = list(_if_mapping(summary.get("systems")))
    baseline = summary.get("baseline") or (names[0] if names else "")
    header = ["metric"]
    for n in names:
        header.append(n + (" (baseline)" if n == baseline and len(names) > 1 else ""))
        if n != baseline:
            header.append(f"Δ {n} (p)")
    return header, names, baseline


def table_rows(summary: Mapping) -> tuple[list[str], list[tuple[str | None, list[str]]]]:
    """The metric table: header, and ``(block, cells)`` rows: metric, then per system its value
    and interval and, for every non-baseline system, the difference and p-value."""
    header, names, baseline = table_head(summary)
    comp = {(c["system"], c["metric"]): c for c in summary.get("comparisons") or []}
    rows = []
    for k, block in metric_keys(summary, names):
        row = [k]
        for n in names:
            row.append(fmt_entry(entry(summary["systems"][n], k)))
            if n != baseline:
                row.append(fmt_diff(comp.get((n, k))))
        rows.append((block, row))
    return header, rows


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return lines


def observation_rows(system_summary: Mapping) -> tuple[list[str], list[list[str]]]:
    """The per-observation table of one system's clinical block."""
    header = ["observation", "precision", "recall", "F1", "ref +", "gen +", "judged"]
    rows = []
    for col, e in system_summary["clinical"]["per_observation"].items():
        rows.append([col, fmt_entry(e["precision"]), fmt_entry(e["recall"]), fmt_entry(e["f1"]),
                     str(e["ref_positive"]), str(e["hyp_positive"]), str(e["n_judged"])])
    return header, rows


def protocol_lines(summary: Mapping) -> list[str]:
    """The protocol an evaluation follows and its reference, one line (none without a protocol)."""
    p = _if_mapping(summary.get("protocol"))
    if not p:
        return []
    return [f"protocol: {p.get('name')} ({p.get('title')}; {p.get('source')}); reference: {p.get('reference')}"]


def published_rows(summary: Mapping) -> tuple[list[str], list[list[str]], list[str]]:
    """The published-style values: header, one row per key (its value and interval per system, on the published
    scale), and one line per way of computing them naming its keys (all empty without such values)."""
    systems = _if_mapping(summary.get("systems"))
    names = [n for n, s in systems.items() if _if_mapping(s).get("published")]
    if not names:
        return [], [], []
    keys = list(dict.fromkeys(k for n in names for k in systems[n]["published"]))
    rows, hows = [], {}
    for k in keys:
        row = [k]
        for n in names:
            e = systems[n]["published"].get(k)
            row.append(fmt_entry(e))
            if e and k not in hows.setdefault(e.get("how"), []):
                hows[e.get("how")].append(k)
        rows.append(row)
    notes = [f"{', '.join(ks)}: {how}" for how, ks in hows.items()]
    return ["published-style value"] + names, rows, notes


def count_lines(summary: Mapping) -> list[str]:
    """One line of counts per system, then the ids dropped by the alignment."""
    out = []
    for n, s in _if_mapping(summary.get("systems")).items():
        parts = [f"{s['n']} scored", f"{s['n_empty']} empty generated reports (scored 0)",
                 f"{s['n_error']} status-error rows excluded", f"{s['n_empty_reference']} empty references excluded"]
        if "n_not_shared" in s:
            parts.append(f"{s['n_not_shared']} not shared with every system")
        out.append(f"{n}: {s['n_rows']} rows; " + ", ".join(parts))
        out += [f"  {line}" for line in (origin_line(s.get("origin")), length_line(s.get("lengths"))) if line]
    for n, d in _if_mapping(_if_mapping(summary.get("alignment")).get("dropped")).items():
        if d["n"]:
            why = ", ".join(f"{k}: {v}" for k, v in d["reasons"].items())
            out.append(f"  dropped from {n}: {d['n']} ({why})")
    return out


def length_line(lengths: Mapping | None) -> str | None:
    """``lengths: mean 75 tokens (median 60, 95th percentile 180, max 295); 12% stopped at the token limit; 0% empty``."""
    if not lengths or lengths.get("mean") is None:
        return None
    line = (f"lengths: mean {lengths['mean']:.0f} {lengths['unit']} (median {lengths['median']:.0f}, 95th percentile "
            f"{lengths['p95']:.0f}, max {lengths['max']})")
    if lengths.get("stopped_at_limit") is not None:
        line += f"; {100 * lengths['stopped_at_limit']:.0f}% stopped at the token limit"
    return line + f"; {100 * (lengths.get('empty') or 0):.0f}% empty"


def origin_line(origin: Mapping | None) -> str | None:
    """What a system's run was made with, in one line (:mod:`cxrgen.evaluation.origins`)."""
    if not origin:
        return None
    m, d, g = origin.get("model") or {}, origin.get("data") or {}, origin.get("decoding") or {}
    version = (f"revision {m['revision']}" if m.get("revision") else f"digest {m['digest']}" if m.get("digest")
               else "unversioned")
    model = f"{m.get('name')} ({m.get('backend')}, {version}, {m.get('dtype')}"
    model += "".join(f", {k} {m[k]}" for k in ("quantization",) if m.get(k) not in (None, "none"))
    model += (f", adapter {m['adapter']}" if m.get("adapter") else "") + ")"
    decoding = ("greedy" if not g.get("temperature") else f"temperature {g['temperature']}, top-p {g.get('top_p')}, "
                f"seed {g.get('seed')}") + f", max_new_tokens {g.get('max_new_tokens')}, batch {g.get('batch_size')}"
    if g.get("batch_invariant"):
        decoding += ", batch-invariant"
    data = f"{d.get('format')} {d.get('split')}, {d.get('reference')}, {d.get('views')} views, {d.get('selected')} studies"
    project = origin.get("project") or {}
    commit = (project.get("commit") or "")[:12] or f"version {project.get('version')}"
    return f"model {model}; {decoding}; data {data}; cxrgen {commit}"


def warning_lines(summary: Mapping) -> list[str]:
    return [f"WARNING: {w}" for w in summary.get("warnings") or []]


def note_lines(summary: Mapping) -> list[str]:
    """Methods (intervals, p-values), metrics not computed and why, the clinical settings."""
    settings = _if_mapping(summary.get("settings"))
    systems = _if_mapping(summary.get("systems"))
    out = []
    if summary.get("interval_method"):
        line = f"intervals: {summary['interval_method']}"
        if "n_boot" in settings:
            line += f", {settings['n_boot']} resamples, seed {settings.get('seed')}"
        out.append(line)
    if len(systems) > 1 and summary.get("test_method"):
        line = f"p-values: {summary['test_method']}"
        if settings.get("ar_trials"):
            line += f", {settings['ar_trials']} trials, seed {settings.get('seed')}"
        out.append(line)
        if any(c.get("reliable") is False for c in summary.get("comparisons") or []):
            out.append(f"{UNRELIABLE}: the difference rests on fewer than {MIN_DISCORDANT} discordant studies "
                       "(studies whose outcome for the metric differs between the two systems): unreliable, "
                       "whatever its p-value")
    if any("ref_positive" in (e or {}) for s in systems.values() for k, _ in metric_keys(summary)
           for e in [entry(s, k)]):
        out.append("(ref+ R, gen+ G): the reference and generated positives of the observations a label metric "
                   "counts; — : undefined (no positives to divide by)")
    unavailable: dict = {}
    for s in systems.values():
        unavailable.update(_if_mapping(s).get("unavailable") or {})
    out += [f"{k}: not computed — {why}" for k, why in unavailable.items()]
    for s in systems.values():
        cl = _if_mapping(s).get("clinical")
        if cl:
            out.append(
                f"clinical: labeler {cl.get('labeler')}, uncertain counted as {cl.get('uncertain')}; sets: "
                + "; ".join(f"{k} = {', '.join(v)}" for k, v in clinical.OBSERVATION_SETS.items() if k != "chexpert14")
                + "; chexpert14 = all 14"
            )
            break
    return out


def _as_summary(report_or_summary) -> Mapping:
    return report_or_summary.summary_dict() if hasattr(report_or_summary, "summary_dict") else report_or_summary


def format_table(report_or_summary) -> str:
    """Aligned plain-text tables for the terminal: warnings, counts, the metric table (blocks
    such as the clinical metrics under a title row), the per-observation table of each system,
    and notes on methods."""
    summary = _as_summary(report_or_summary)
    header, rows = table_rows(summary)
    lines = warning_lines(summary) + protocol_lines(summary) + [f"signature: {summary.get('signature')}"]
    lines += count_lines(summary) + [""]
    body: list[list[str]] = []
    current = None
    for block, cells in rows:
        if block != current and block is not None:
            body.append([block_title(summary, block)] + [""] * (len(header) - 1))
        current = block
        body.append(cells)
    lines += _aligned(header, body)
    pub_header, pub_rows, pub_notes = published_rows(summary)
    if pub_rows:
        lines += ["", "as the published code reports them (not comparable with the intervals above):"]
        lines += _aligned(pub_header, pub_rows) + [f"  {line}" for line in pub_notes]
    for name, s in _if_mapping(summary.get("systems")).items():
        if s.get("clinical"):
            lines += ["", f"per-observation labels, {name}:"]
            lines += _aligned(*observation_rows(s))
    lines.append("")
    lines += note_lines(summary)
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(report_or_summary) -> str:
    """``summary.md``: warnings, signature, counts, the metric table, notes, per-observation tables."""
    summary = _as_summary(report_or_summary)
    header, rows = table_rows(summary)
    md = ["# Evaluation summary", ""]
    if summary.get("warnings"):
        md += [f"> **{line}**" for line in warning_lines(summary)] + [""]
    md += [f"{line[0].upper()}{line[1:]}" for line in protocol_lines(summary)] + ([""] if protocol_lines(summary) else [])
    md += [f"Signature: `{summary.get('signature')}`", ""]
    md += [f"- {line.strip()}" for line in count_lines(summary)]
    md += [""] + _md_table(header, [cells for _, cells in rows])
    md += [""] + [f"- {line}" for line in note_lines(summary)]
    pub_header, pub_rows, pub_notes = published_rows(summary)
    if pub_rows:
        md += ["", "## As the published code reports them", ""] + _md_table(pub_header, pub_rows)
        md += [""] + [f"- {line}" for line in pub_notes]
    for n, s in _if_mapping(summary.get("systems")).items():
        if s.get("clinical"):
            md += ["", f"## Per-observation labels: {n}", ""] + _md_table(*observation_rows(s))
    return "\n".join(md) + "\n"


def csv_rows(report_or_summary) -> list[dict]:
    """``summary.csv``: one row per system and metric, with its comparison to the baseline."""
    summary = _as_summary(report_or_summary)
    comp = {(c["system"], c["metric"]): c for c in summary.get("comparisons") or []}
    baseline = summary.get("baseline")
    out = []
    names = list(_if_mapping(summary.get("systems")))
    for n in names:
        s = summary["systems"][n]
        for k, _ in metric_keys(summary, names):
            e = entry(s, k)
            if e is None:
                continue
            c = comp.get((n, k), {})
            ci = e.get("ci") or [None, None]
            dci = c.get("ci") or [None, None]
            out.append({
                "system": n, "metric": k, "n": s["n"], "value": e["value"], "ci_low": ci[0], "ci_high": ci[1],
                "baseline": baseline if n != baseline else "", "diff": c.get("diff"),
                "diff_ci_low": dci[0], "diff_ci_high": dci[1], "p_value": c.get("p_value"),
                "test": c.get("test"), "discordant": c.get("discordant"), "reliable": c.get("reliable"),
                "ref_positive": e.get("ref_positive"), "hyp_positive": e.get("hyp_positive"),
                "signature": summary.get("signature"),
            })
    return out
