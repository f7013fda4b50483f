"""The evaluation signature: one short string that fixes how every number of a summary was computed.

Modelled on sacrebleu's signatures: ``key:value`` fields joined by ``|``. Two summaries are
comparable when their signatures are equal (the ``boot`` and ``seed`` fields only affect the
intervals). Fields:

=========  ==================================================================================
nrefs      references per sample (always 1)
tok        tokenizer: ``cxr-v1`` (default) or ``pycoco-strip`` (``--compat pycocoevalcap``)
case       ``lc``: everything is lower-cased
deid       how de-identification placeholders are handled (``xxxx``: ``XXXX`` and ``___`` are one
           token ``xxxx``; ``none``: no special rule, ``XXXX`` is lower-cased like any word)
bleu       ``corpus`` (no smoothing) or ``pycoco`` (pycocoevalcap's epsilons), then ``sent:`` the
           per-sample variant (``exp-eff``: exp smoothing, effective order; ``pycoco``)
rouge      ``lcs-f1`` (rouge-score's rougeL F-measure) or ``lcs-b1.2`` (pycocoevalcap)
cider      ``d-s6``: CIDEr-D, sigma 6, document frequencies from the evaluated references
           (``df:refs``, fixed in the bootstrap)
meteor     ``nltk-<version>`` or ``none``
ci         interval method (``pct95``: 95% percentile bootstrap)
boot/seed  bootstrap resamples and seed
clin       ``<labeler version>`` and ``unc:<policy>`` of the clinical metrics, or ``none``
version    cxrgen version
=========  ==================================================================================
"""

from __future__ import annotations

import cxrgen

_POLICY_SHORT = {"positive": "pos", "negative": "neg", "exclude": "excl"}


def make_signature(
    *,
    compat: str | None,
    n_boot: int,
    seed: int,
    meteor_version: str | None,
    labeler_version: str | None,
    uncertain: str | None,
    model_metrics: tuple[str, ...] = (),
) -> str:
    """The signature string for one evaluation configuration (fields in the module docstring)."""
    if compat is None:
        fields = [
            "nrefs:1",
            "tok:cxr-v1",
            "case:lc",
            "deid:xxxx",
            "bleu:corpus+sent:exp-eff",
            "rouge:lcs-f1",
            "cider:d-s6-df:refs",
        ]
    elif compat == "pycocoevalcap":
        fields = [
            "nrefs:1",
            "tok:pycoco-strip",
            "case:lc",
            "deid:none",
            "bleu:pycoco+sent:pycoco",
            "rouge:lcs-b1.2",
            "cider:d-s6-df:refs",
        ]
    else:
        raise ValueError(f"unknown compatibility mode {compat!r}")
    fields.append(f"meteor:nltk-{meteor_version}" if meteor_version else "meteor:none")
    fields += ["ci:pct95", f"boot:{n_boot}", f"seed:{seed}"]
    if labeler_version is not None and uncertain is not None:
        fields.append(f"clin:{labeler_version}+unc:{_POLICY_SHORT.get(uncertain, uncertain)}")
    else:
        fields.append("clin:none")
    if model_metrics:
        fields.append("model:" + ",".join(model_metrics))
    fields.append(f"version:{cxrgen.__version__}")
    return "|".join(fields)
