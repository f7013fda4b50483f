"""Rule-based CheXpert-style labeler: hand-labelled sentences, real IU report text, the phrase file."""

import re
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import pytest
import yaml

from cxrgen.metrics import labeler
from cxrgen.metrics.labeler import (
    COLUMNS,
    LABELER_VERSION,
    NEGATIVE,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    PhraseFileError,
    explain_report,
    label_report,
    label_reports,
    load_rules,
    normalize,
)

IU_REPORTS = Path(__file__).parent / "data" / "iu_reports"


def check(text, **expected):
    """Assert the given columns of label_report(text); returns all labels."""
    labels = label_report(text)
    got = {column: labels[column] for column in expected}
    assert got == expected, f"{text!r}: {got} != {expected}"
    return labels


def iu_text(report_id):
    root = ET.parse(IU_REPORTS / f"{report_id}.xml").getroot()
    sections = {n.get("Label"): (n.text or "").strip() for n in root.iter("AbstractText")}
    return "\n\n".join(s for s in (sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")) if s)


# ---------------------------------------------------------------------------------------------- API


def test_columns_follow_the_chexpert_order_in_snake_case():
    assert len(OBSERVATIONS) == len(COLUMNS) == 14
    assert OBSERVATIONS[0] == "No Finding" and OBSERVATIONS[-1] == "Support Devices"
    assert COLUMNS == (
        "no_finding", "enlarged_cardiomediastinum", "cardiomegaly", "lung_opacity", "lung_lesion", "edema",
        "consolidation", "pneumonia", "atelectasis", "pneumothorax", "pleural_effusion", "pleural_other",
        "fracture", "support_devices",
    )
    assert (POSITIVE, NEGATIVE, UNCERTAIN) == (1, 0, -1)


def test_version_names_procedure_and_phrase_digest():
    assert re.fullmatch(r"rb\d+-[0-9a-f]{8}", LABELER_VERSION)
    assert LABELER_VERSION.endswith(load_rules().digest)


@pytest.mark.parametrize("text", [None, "", "   \n\t ", "\n\n"])
def test_empty_report_gives_all_none(text):
    labels = label_report(text)
    assert tuple(labels) == COLUMNS
    assert set(labels.values()) == {None}


def test_unrecognised_text_gives_all_none_even_no_finding():
    assert set(label_report("Comparison: XXXX, XXXX. PA and lateral views.").values()) == {None}


def test_bad_input_type_is_named():
    with pytest.raises(TypeError, match="got int"):
        label_report(5)
    with pytest.raises(TypeError, match="report 1"):
        label_reports(["No effusion.", b"bytes"])


def test_label_reports_keeps_order_and_matches_single_calls():
    texts = ["Mild cardiomegaly.", None, "No pneumothorax.", "Possible pneumonia."]
    assert label_reports(texts) == [label_report(t) for t in texts]
    assert label_reports(iter(texts))[2]["pneumothorax"] == NEGATIVE
    assert label_reports([]) == []


# ---------------------------------------------------------------------------------------------- negation


@pytest.mark.parametrize(
    "text, column",
    [
        ("No pleural effusion.", "pleural_effusion"),
        ("There is no evidence of pneumothorax.", "pneumothorax"),
        ("The lungs are clear without focal consolidation.", "consolidation"),
        ("The lungs are free of focal airspace disease.", "lung_opacity"),
        ("Negative for pneumothorax.", "pneumothorax"),
        ("Previously seen left pleural effusion has resolved.", "pleural_effusion"),
        ("Pneumothorax is not seen.", "pneumothorax"),
        ("The heart is not enlarged.", "cardiomegaly"),
        ("No displaced rib fractures are visualized.", "fracture"),
        ("The endotracheal tube has been removed.", "support_devices"),
        ("Interval resolution of the right lower lobe pneumonia.", "pneumonia"),
        ("There is no pulmonary edema.", "edema"),
        ("No suspicious pulmonary nodules or masses.", "lung_lesion"),
        ("Heart size is within normal limits.", "cardiomegaly"),
        ("The cardiomediastinal silhouette is normal.", "enlarged_cardiomediastinum"),
        ("Pulmonary vascularity is normal.", "edema"),
    ],
)
def test_negation(text, column):
    check(text, **{column: NEGATIVE})


def test_wording_that_only_looks_negated_stays_positive():
    check("No change in the small right pleural effusion.", pleural_effusion=POSITIVE)
    check("Stable cardiomegaly, not significantly changed.", cardiomegaly=POSITIVE)
    check("Small hiatal hernia is not as well demonstrated on this exam.", no_finding=NEGATIVE)
    check("First rib fracture not well demonstrated on this study.", fracture=POSITIVE)
    check("Redemonstration without significant interval change of mild atelectasis.", atelectasis=POSITIVE)


# ---------------------------------------------------------------------------------------------- uncertainty


@pytest.mark.parametrize(
    "text, column",
    [
        ("Possible small left pleural effusion.", "pleural_effusion"),
        ("Findings may represent early pneumonia.", "pneumonia"),
        ("Pneumonia cannot be excluded.", "pneumonia"),
        ("Cannot exclude a small apical pneumothorax.", "pneumothorax"),
        ("Atelectasis versus scarring at the left base.", "atelectasis"),
        ("Borderline cardiomegaly.", "cardiomegaly"),
        ("Borderline heart size.", "cardiomegaly"),
        ("Questionable right upper lobe nodule.", "lung_lesion"),
        ("Suspected left lower lobe consolidation.", "consolidation"),
        ("Pulmonary edema is suspected.", "edema"),
        ("Left lower lobe pneumonia?", "pneumonia"),
        ("Blunted costophrenic angles suggesting small bilateral pleural effusions.", "pleural_effusion"),
        ("Upper lobe airspace disease is not entirely excluded.", "lung_opacity"),
    ],
)
def test_uncertainty(text, column):
    check(text, **{column: UNCERTAIN})


def test_hedge_about_an_interpretation_leaves_the_seen_finding_positive():
    # The opacity is seen; whether it is atelectasis is the uncertain part.
    check("Right basilar opacity may represent atelectasis.", lung_opacity=POSITIVE, atelectasis=UNCERTAIN)
    check("Bibasilar opacities, likely atelectasis.", lung_opacity=POSITIVE, atelectasis=UNCERTAIN)
    # "could" is the last word the post window of "opacities" reaches; "represent" lies beyond it.
    check("Patchy opacities in the right lower lobe could represent aspiration or pneumonia.",
          lung_opacity=POSITIVE, pneumonia=UNCERTAIN)
    check("Small effusions could be present.", pleural_effusion=UNCERTAIN)


def test_negation_beats_a_later_uncertainty_cue_in_the_same_clause():
    # "to suggest" does not make the negated finding uncertain.
    check("There is no focal air space opacity to suggest a pneumonia.", lung_opacity=NEGATIVE, pneumonia=NEGATIVE)


# ---------------------------------------------------------------------------------------------- scope


def test_scope_ends_at_the_sentence():
    check("No pneumothorax. Large right pleural effusion.", pneumothorax=NEGATIVE, pleural_effusion=POSITIVE)
    check("Pneumonia cannot be excluded. Left pleural effusion.", pneumonia=UNCERTAIN, pleural_effusion=POSITIVE)
    check("Possible pneumonia; moderate cardiomegaly", pneumonia=UNCERTAIN, cardiomegaly=POSITIVE)
    # A blank line ends a sentence even without a full stop.
    check("No effusion\n\nCardiomegaly", pleural_effusion=NEGATIVE, cardiomegaly=POSITIVE)


def test_scope_ends_at_but_and_however():
    check("No pleural effusion, but there is mild cardiomegaly.", pleural_effusion=NEGATIVE, cardiomegaly=POSITIVE)
    check("No focal consolidation but patchy atelectasis at the left base.", consolidation=NEGATIVE,
          atelectasis=POSITIVE)
    check("No pneumothorax, however a small pleural effusion is present.", pneumothorax=NEGATIVE,
          pleural_effusion=POSITIVE)
    # The uncertainty cue of the second clause does not reach back to the first.
    check("Moderate cardiomegaly, but pneumonia is possible.", cardiomegaly=POSITIVE, pneumonia=UNCERTAIN)


def test_decimal_point_and_vs_do_not_split_sentences():
    assert normalize("A 3.5 cm nodule. Atelectasis vs. scar.") == "a 3.5 cm nodule\natelectasis vs scar"
    check("Atelectasis vs. scarring.", atelectasis=UNCERTAIN)


# ---------------------------------------------------------------------------------------------- several findings


def test_negated_list_covers_every_item():
    labels = check(
        "No focal consolidation, pleural effusion, or pneumothorax.",
        consolidation=NEGATIVE, pleural_effusion=NEGATIVE, pneumothorax=NEGATIVE,
    )
    assert labels["cardiomegaly"] is None and labels["atelectasis"] is None


def test_positive_list_in_one_sentence():
    check(
        "Mild cardiomegaly with small bilateral pleural effusions and bibasilar atelectasis.",
        cardiomegaly=POSITIVE, pleural_effusion=POSITIVE, atelectasis=POSITIVE, pneumothorax=None,
    )


def test_without_splits_positive_from_negative():
    check("Cardiomegaly without pleural effusion.", cardiomegaly=POSITIVE, pleural_effusion=NEGATIVE)
    check("Stable mild cardiomegaly without pulmonary edema.", cardiomegaly=POSITIVE, edema=NEGATIVE)


def test_post_negation_reaches_back_over_a_list_only():
    check("Pneumothorax or pleural effusion is not seen.", pneumothorax=NEGATIVE, pleural_effusion=NEGATIVE)
    # A post cue after another, unrelated statement does not reach the first finding.
    check("Cardiomegaly, mediastinum within normal limits.", cardiomegaly=POSITIVE,
          enlarged_cardiomediastinum=NEGATIVE)
    check(
        "Cardiomegaly and increased interstitial opacities which may represent mild pulmonary edema.",
        cardiomegaly=POSITIVE, lung_opacity=POSITIVE, edema=UNCERTAIN,
    )


def test_adjacent_or_slashed_mentions_share_a_post_cue():
    check("The previously seen right upper lobe mass lesion is not seen.", lung_lesion=NEGATIVE)
    check("Bibasilar airspace disease/atelectasis is not present.", lung_opacity=NEGATIVE, atelectasis=NEGATIVE)


def test_negation_closed_by_a_finding_verb_and_comma():
    check(
        "No focal alveolar consolidation, no definite pleural effusion seen, left hilar calcifications and dense "
        "nodule in the left lung suggest a previous granulomatous process.",
        consolidation=NEGATIVE, pleural_effusion=NEGATIVE, lung_lesion=POSITIVE,
    )


# ---------------------------------------------------------------------------------------------- laterality


@pytest.mark.parametrize(
    "text, column",
    [
        ("Small left pleural effusion.", "pleural_effusion"),
        ("Bilateral pleural effusions.", "pleural_effusion"),
        ("Right-sided pneumothorax.", "pneumothorax"),
        ("Bibasilar atelectasis.", "atelectasis"),
        ("Left lower lobe consolidation.", "consolidation"),
        ("Healed right 10th and left 9th posterolateral rib fractures.", "fracture"),
    ],
)
def test_lateral_qualifiers_do_not_change_a_positive(text, column):
    check(text, **{column: POSITIVE})


def test_negation_on_one_side_and_finding_on_the_other():
    check("No right pleural effusion. Small left pleural effusion.", pleural_effusion=POSITIVE)
    check("No pneumothorax on the left. Small right apical pneumothorax.", pneumothorax=POSITIVE)
    check("Left lower lobe atelectasis. The right lung is clear.", atelectasis=POSITIVE)


# ---------------------------------------------------------------------------------------------- precedence


def test_precedence_positive_over_uncertain_over_negative():
    check("Possible right pleural effusion. No left pleural effusion.", pleural_effusion=UNCERTAIN)
    check("Heart size is normal. Borderline cardiomegaly.", cardiomegaly=UNCERTAIN)
    check("Possible cardiomegaly. The heart is enlarged.", cardiomegaly=POSITIVE)
    check("No pneumothorax. Pneumothorax cannot be excluded. Tiny apical pneumothorax.", pneumothorax=POSITIVE)


# ---------------------------------------------------------------------------------------------- exclusions


def test_pericardial_effusion_is_not_pleural():
    check("Small pericardial effusion.", pleural_effusion=None)
    check("Small pericardial effusion and a right pleural effusion.", pleural_effusion=POSITIVE)


def test_bone_lesion_is_not_a_lung_lesion():
    check("No lytic or sclerotic bone lesions.", lung_lesion=None)


# ---------------------------------------------------------------------------------------------- No Finding


def test_no_finding_for_a_normal_report():
    labels = check(
        "Heart size normal. Lungs are clear. No pneumothorax or pleural effusion.",
        no_finding=POSITIVE, cardiomegaly=NEGATIVE, lung_opacity=NEGATIVE, pneumothorax=NEGATIVE,
        pleural_effusion=NEGATIVE,
    )
    assert labels["fracture"] is None and labels["support_devices"] is None


def test_no_finding_from_a_whole_report_statement_alone():
    labels = check("No acute cardiopulmonary abnormality.", no_finding=POSITIVE)
    assert [labels[c] for c in COLUMNS[1:]] == [None] * 13


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mild cardiomegaly.", NEGATIVE),
        ("Possible pneumonia.", NEGATIVE),  # uncertain findings count as findings
        ("Left chest port. Lungs are clear.", POSITIVE),  # support devices do not
        ("Pacemaker in place.", POSITIVE),
        ("Degenerative changes of the thoracic spine. Lungs are clear.", NEGATIVE),  # outside the 14, abnormal
        ("Hyperexpanded lungs consistent with emphysema. No pneumonia.", NEGATIVE),
        ("Stable calcified granuloma in the right upper lobe. No acute disease.", NEGATIVE),
        ("No emphysema. Heart size is normal.", POSITIVE),
        ("The lung volumes are low. The lungs are clear.", NEGATIVE),
        ("The lung volumes are low normal. The lungs are clear.", POSITIVE),
        ("Normal chest.", POSITIVE),
    ],
)
def test_no_finding_derivation(text, expected):
    check(text, no_finding=expected)


# ---------------------------------------------------------------------------------------------- XXXX


def test_deidentification_tokens_are_harmless():
    check("No XXXX of pleural effusion.", pleural_effusion=NEGATIVE)
    check("XXXX XXXX. Heart size normal.", cardiomegaly=NEGATIVE, no_finding=POSITIVE)
    check(
        "The heart, pulmonary XXXX and mediastinum are within normal limits.",
        cardiomegaly=NEGATIVE, enlarged_cardiomediastinum=NEGATIVE,
    )
    check("XXXX right pleural effusion.", pleural_effusion=POSITIVE)
    assert set(label_report("XXXX XXXX XXXX. XXXX-XXXX.").values()) == {None}


# ---------------------------------------------------------------------------------------------- real IU reports


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("Small medial left upper lobe pleural air collection.", {"pneumothorax": POSITIVE}),
        ("Two venous catheter tips overlie the mid SVC.", {"support_devices": POSITIVE}),
        (
            "The right lung demonstrates a large right pleural effusion with associated atelectatic collapse of the "
            "right middle lobe and partial collapse of the right lower lobe.",
            {"pleural_effusion": POSITIVE, "atelectasis": POSITIVE},
        ),
        (
            "The heart silhouette and mediastinal contours are not enlarged.",
            {"cardiomegaly": NEGATIVE, "enlarged_cardiomediastinum": NEGATIVE},
        ),
        (
            "There is no pleural line to suggest pneumothorax or costophrenic XXXX blunting to suggest large pleural "
            "effusion.",
            {"pneumothorax": NEGATIVE, "pleural_effusion": NEGATIVE},
        ),
        (
            "Lungs are mildly hypoinflated with blunted costophrenic XXXX suggesting small bilateral pleural "
            "effusions.",
            {"pleural_effusion": UNCERTAIN, "no_finding": NEGATIVE},
        ),
        ("Heart size upper limits of normal.", {"cardiomegaly": NEGATIVE}),
        ("Minimal fluid within the right horizontal fissure.", {"pleural_effusion": POSITIVE}),
    ],
)
def test_real_iu_sentences(sentence, expected):
    check(sentence, **expected)


def test_bundled_iu_report_576():
    # Findings: stable cardiomegaly, persistent right pleural effusion with adjacent atelectasis, low volumes,
    # no focal consolidation; impression: "No definite findings of pneumonia."
    text = iu_text(576)
    assert "Persistent right pleural effusion with adjacent atelectasis" in text
    labels = label_report(text)
    assert labels == {
        **{c: None for c in COLUMNS},
        "no_finding": NEGATIVE,
        "cardiomegaly": POSITIVE,
        "pleural_effusion": POSITIVE,
        "atelectasis": POSITIVE,
        "consolidation": NEGATIVE,
        "pneumonia": NEGATIVE,
    }


def test_bundled_iu_report_100_is_normal():
    text = iu_text(100)
    assert text == "Both lungs are clear and expanded. Heart and mediastinum normal.\n\nNo active disease."
    assert label_report(text) == {
        **{c: None for c in COLUMNS},
        "no_finding": POSITIVE,
        "lung_opacity": NEGATIVE,
        "cardiomegaly": NEGATIVE,
        "enlarged_cardiomediastinum": NEGATIVE,
    }


def test_explain_report_points_at_the_words():
    found = explain_report("Mild cardiomegaly. No pneumothorax.")
    assert [(m.observation, m.label, m.kind, m.text) for m in found] == [
        ("cardiomegaly", POSITIVE, "mention", "cardiomegaly"),
        ("pneumothorax", NEGATIVE, "mention", "pneumothorax"),
    ]
    assert found[1].sentence == "no pneumothorax"


# ---------------------------------------------------------------------------------------------- phrase file


def _packaged_data():
    return yaml.safe_load(resources.files("cxrgen.metrics").joinpath("chexpert_phrases.yaml").read_text("utf-8"))


def test_phrase_file_is_package_data_and_reformatting_keeps_the_digest(tmp_path):
    data = _packaged_data()
    assert "cardiomegaly" in data["observations"]
    copy = tmp_path / "phrases.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False, width=60), encoding="utf-8")  # no comments, new layout
    assert load_rules(copy).digest == load_rules().digest
    data["observations"]["cardiomegaly"]["mention"].append("cardiac hypertrophy")
    copy.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_rules(copy).digest != load_rules().digest


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["observations"]["cardiomegaly"]["mention"].append("heart (size"),
         r"observations\.cardiomegaly\.mention\[\d+\]: invalid regular expression"),
        (lambda d: d["observations"]["edema"]["mention"].append("{nosuchmacro} edema"),
         r"observations\.edema\.mention\[\d+\]: unknown macro \{nosuchmacro\}"),
        (lambda d: d["observations"].pop("fracture"), r"observations\.fracture is missing"),
        (lambda d: d["observations"].update(hernia={"mention": ["hernia"]}), r"unknown observation\(s\) \['hernia'\]"),
        (lambda d: d.update(negations={}), r"unknown top-level key\(s\) \['negations'\]"),
        (lambda d: d["negation"].update(pre="no"), r"negation\.pre must be a list of non-empty strings"),
        (lambda d: d["scope"].update(post_cue_words=0), r"scope\.post_cue_words must be an integer"),
    ],
)
def test_malformed_phrase_file_names_file_and_key(tmp_path, edit, message):
    data = _packaged_data()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(PhraseFileError, match=message) as info:
        load_rules(path)
    assert str(path) in str(info.value)


def test_missing_phrase_file_is_named(tmp_path):
    with pytest.raises(PhraseFileError, match="nope.yaml"):
        load_rules(tmp_path / "nope.yaml")


def test_labeler_module_holds_compiled_rules_for_every_category():
    rules = labeler._RULES
    assert set(rules.mention) == set(COLUMNS[1:]) | {"other_finding"}
    assert all(isinstance(p, re.Pattern) for p in rules.mention.values())
