"""The evaluation signature: one short string that fixes how every number of a summary was computed.

Modelled on sacrebleu's signatures: ``key:value`` fields joined by ``|``. Two summaries are
comparable when their signatures are equal (``boot``, ``seed`` and ``ar`` only affect intervals
and p-values). The fields are assembled from the metrics that took part
(:mod:`cxrgen.metrics.registry`), each of which contributes its own component:

=========  ==================================================================================
nrefs      references per sample (always 1)
tok        tokenizer: ``cxr-v1`` (default), ``pycoco-strip`` (pycocoevalcap mode), ``ws-split``
           (RadEval mode: whitespace split of the raw text, BLEU's tokens)
case       ``lc``: everything is lower-cased; ``kept``: case kept (RadEval mode's BLEU)
deid       how de-identification placeholders are handled (``xxxx``: ``XXXX`` and ``___`` are one
           token ``xxxx``; ``none``: no special rule)
...        one component per text metric of the mode, in registry order, e.g. ``bleu``
           (``corpus`` or ``pycoco`` arithmetic, then ``sent:`` the per-sample variant),
           ``rouge`` (``lcs-f1``, ``lcs-b1.2`` or ``rouge-score-<version>+...``), ``cider``
           (``d-s6-df:refs``), ``meteor`` (``nltk-<version>`` or ``none``)
ci         interval method (``pct95``: 95% percentile bootstrap)
boot/seed  bootstrap resamples and seed
ar         approximate-randomization trials, when the p-values come from that test
...        the clinical component ``clin`` (``<labeler version>+unc:<policy>``, or ``none``), then
           one component per model-based metric (``<name>:<package and scorer>``)
version    cxrgen version
=========  ==================================================================================

Under a published protocol (``--protocol``, :mod:`cxrgen.metrics.protocols`) the mode's fields are replaced by
``proto:<name>|nrefs:1|ref:<reference>`` (each metric names its own tokenizer in its component), and
``pub:<schemes>`` follows the interval settings when the protocol has published-style values, e.g.
``proto:llava-rad|nrefs:1|ref:findings|bleu:sacrebleu-corpus+tok:13a+...|rouge:rouge-score-0.1.2+rL+nostem+f|
ci:pct95|boot:500|seed:0|pub:median-b500-rs3+sacrebleu-ci-b500-s12345+rouge-mid-b500-rs3|labels_rules:rb1-...``.
"""

from __future__ import annotations

from typing import Sequence

import cxrgen
from cxrgen.metrics.tokenize import MODE_FIELDS


def make_signature(
    components: Sequence[tuple[str, str]],
    *,
    compat: str | None,
    n_boot: int,
    seed: int,
    ar_trials: int | None = None,
    protocol=None,
) -> str:
    """The signature from the ``(group, component)`` pairs of the metrics, in registry order:
    the mode's fields (a :class:`~cxrgen.metrics.protocols.Protocol`'s own under ``protocol``), the text
    metrics' components, the interval settings, then the other components (fields in the module docstring)."""
    if protocol is not None:
        fields = protocol.signature_fields()
    elif compat not in MODE_FIELDS:
        raise ValueError(f"unknown compatibility mode {compat!r}")
    else:
        fields = list(MODE_FIELDS[compat])
    fields += [c for g, c in components if g == "text" and c]
    fields += ["ci:pct95", f"boot:{n_boot}", f"seed:{seed}"]
    if ar_trials is not None:
        fields.append(f"ar:{ar_trials}")
    if protocol is not None and protocol.published_field():
        fields.append(protocol.published_field())
    fields += [c for g, c in components if g != "text" and c]
    fields.append(f"version:{cxrgen.__version__}")
    return "|".join(fields)


def parse_signature(signature: str) -> dict[str, str]:
    """The fields of a signature as a dict (``key`` -> ``value``)."""
    out = {}
    for f in signature.split("|"):
        key, _, value = f.partition(":")
        out[key] = value
    return out
