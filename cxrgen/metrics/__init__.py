"""Report-generation metrics.

tokenize     the default tokenizer (cxr-v1), the pycocoevalcap-compatible cleaner, mteval-v13a
bleu         BLEU-1..4 sufficient statistics, corpus BLEU (ours, pycocoevalcap's, sacrebleu's), sentence BLEU
rouge        ROUGE-L (bit-parallel LCS), rouge-score and pycocoevalcap variants
cider        CIDEr-D
meteor       NLTK's METEOR when its WordNet data are installed
clinical     CheXpert-label precision / recall / F1 (micro, macro; 14, 5 and 6 observations)
labeler      rule-based CheXpert labeler
model_based  optional BERTScore, CheXbert and RadGraph through their packages
protocols    published evaluations as presets (llava_rad, rexrank: their own definitions)
bootstrap    percentile intervals and paired tests from per-sample statistics
suite        all of the above for one list of (hypothesis, reference) pairs
signature    the reproducibility signature
"""
