"""CXR-LLaVA-v2: loading, prompt, preprocessing and batched generation.

The reference outputs in tests/data/upstream_reference/ were produced by the published CXR-LLaVA-v2 code
(transformers 4.36.2, its bfloat16 casts set to float32, greedy ``write_radiologic_report``, one image per call) on
tiny random checkpoints that the published code itself built and saved; see the README in that folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cxrgen.models.base import NotInCacheError
from cxrgen.models.cxr_llava import (
    REPORT_SYSTEM_PROMPT, REPORT_USER_PROMPT, CheckpointError, CxrLlava, CxrLlavaConfig, render_prompt,
)
from cxrgen.models import ModelError
from cxrgen.models.cxr_llava.checkpoint import resolve
from cxrgen.models.cxr_llava.decoding import DecodeStats, Request, Shapes
from cxrgen.models.cxr_llava.preprocess import preprocess_image
from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint
from cxrgen.threads import configure_threads
from helpers import stream_tokens

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "upstream_reference"
IMAGES = ROOT / "demo" / "images"


def _expected(variant: str) -> list[dict]:
    return json.loads((REFERENCE / variant / "expected.json").read_text())["results"]


@pytest.fixture(scope="module", params=["tiny", "tiny_legacy"])
def reference(request):
    model = CxrLlava.from_pretrained(REFERENCE / request.param, device="cpu", dtype="float32")
    return model, _expected(request.param)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0, shards=3)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> CxrLlava:
    return CxrLlava.from_pretrained(tiny_dir, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _threads():
    """The pipeline's CPU thread setting (cxrgen.threads), as runs use it; restored afterwards."""
    before = torch.get_num_threads()
    configure_threads(torch.device("cpu"))
    yield
    torch.set_num_threads(before)


def _images(names):
    return [Image.open(IMAGES / n) for n in names]


# -- the published numbers ------------------------------------------------------------------------------------------

def test_reference_fixture_covers_eos_unk_and_limit():
    """The comparison below is only meaningful if the reference has early stops, <unk> ids and full-length runs."""
    for variant in ("tiny", "tiny_legacy"):
        rows = _expected(variant)
        assert sum(r["stopped_at_eos"] for r in rows) >= 2
        assert sum(not r["stopped_at_eos"] for r in rows) >= 2
        assert sum(0 in r["generated_ids"] for r in rows) >= 2
        assert len({r["text"] for r in rows}) == len(rows)


def test_prompt_ids_match_published_code(reference):
    model, rows = reference
    ids = model.prompt_ids()
    for row in rows:
        up = row["input_ids"]
        cut = up.index(-200)
        assert up.count(-200) == 1
        assert (tuple(up[:cut]), tuple(up[cut + 1:])) == (ids.before, ids.after)
    assert ids.before[:2] == (1, 1)  # the doubled BOS the published code feeds the model


@pytest.mark.parametrize("batch_size", [1, 4, 8])
def test_greedy_reports_match_published_code_token_for_token(reference, batch_size):
    model, rows = reference
    images = _images([r["image"] for r in rows])
    max_new = rows[0]["max_new_tokens"]
    reports = []
    for start in range(0, len(images), batch_size):
        reports += model.generate_reports(images[start:start + batch_size], max_new_tokens=max_new)
    for row, report in zip(rows, reports):
        expected_ids = row["generated_ids"][:-1] if row["stopped_at_eos"] else row["generated_ids"]
        assert report.token_ids == expected_ids, row["image"]
        assert report.text == row["text"], row["image"]
        assert report.stopped_at_eos == row["stopped_at_eos"]
        assert report.n_new_tokens == len(expected_ids)


def _requests(model, names, seeds=None, limits=None):
    pixels = [model.preprocess(im) for im in _images(names)]
    return [Request(i, px, model.prompt_ids(), None if seeds is None else seeds[i],
                    None if limits is None else limits[i]) for i, px in enumerate(pixels)]


def _streamed(model, requests, **kwargs) -> tuple[dict, list]:
    """Run stream_reports; the reports by key and the keys in the order they came back."""
    by_key, order = {}, []
    for done in model.stream_reports(requests, **kwargs):
        for key, report in done:
            assert key not in by_key, f"{key} handed back twice"
            by_key[key] = report
            order.append(key)
    return by_key, order


@pytest.mark.parametrize("slots,every", [(4, None), (3, 8)])
def test_continuous_batching_with_more_studies_than_slots_matches_published_code(reference, slots, every):
    """10 studies through 4 (or 3) slots: finished rows are refilled mid-run, and still every report is the
    published code's, token for token; looking for </s> every 8 steps (as on GPUs) changes nothing."""
    model, rows = reference
    names = [rows[i % len(rows)]["image"] for i in range(10)]
    stats = DecodeStats()
    got, order = _streamed(model, _requests(model, names), slots=slots, max_new_tokens=rows[0]["max_new_tokens"],
                           eos_check_every=every, stats=stats)
    assert sorted(order) == list(range(10))
    assert stats.prefills > 1 and stats.prefill_rows == 10  # slots were refilled while others were decoding
    for i in range(10):
        row = rows[i % len(rows)]
        expected_ids = row["generated_ids"][:-1] if row["stopped_at_eos"] else row["generated_ids"]
        assert got[i].token_ids == expected_ids, (i, row["image"])
        assert got[i].text == row["text"] and got[i].stopped_at_eos == row["stopped_at_eos"]


def test_continuous_batching_hands_back_reports_in_completion_order(reference):
    model, rows = reference
    lengths = {r["image"]: len(r["generated_ids"]) for r in rows}
    names = sorted(lengths, key=lengths.get, reverse=True)  # longest first
    _, order = _streamed(model, _requests(model, names), slots=len(names), max_new_tokens=64)
    assert order != list(range(len(names)))  # the shortest came back first, not in input order
    finished_length = [lengths[names[k]] for k in order]
    assert finished_length == sorted(finished_length)


def test_fixed_shape_decoder_equals_growing_cache_decoder(reference, tiny):
    """The fixed-capacity, masked-attention step gives the growing-cache loop's tokens; greedy and sampled."""
    model, rows = reference
    images = _images([r["image"] for r in rows])
    for kwargs in (dict(), dict(temperature=0.8, top_p=0.9, seed=list(range(8)))):
        fixed = model.generate_reports(images, max_new_tokens=64, **kwargs)
        growing = model.generate_reports(images, max_new_tokens=64, fixed_shape=False, **kwargs)
        assert [(r.token_ids, r.stopped_at_eos) for r in fixed] == [(r.token_ids, r.stopped_at_eos) for r in growing]
    assert len({tuple(r.token_ids) for r in fixed}) == len(images)


def test_sampled_reports_do_not_depend_on_batch_or_slot(tiny):
    names = ["CXR7_IM-2263-1001.png", "CXR3_IM-1384-1001.png", "00000001_000.png", "00000013_019.png"] * 2
    seeds = [100 + i for i in range(len(names))]
    kwargs = dict(max_new_tokens=30, temperature=1.0, top_p=0.9)
    alone = [tiny.generate_reports(_images([n]), seed=s, **kwargs)[0].token_ids for n, s in zip(names, seeds)]
    for slots in (1, 3):
        got, _ = _streamed(tiny, _requests(tiny, names, seeds), slots=slots, **kwargs)
        assert [got[i].token_ids for i in range(len(names))] == alone
    assert alone[0] != alone[4]  # same image, other seed: another report


def test_a_study_can_have_a_lower_token_limit_of_its_own(reference):
    model, rows = reference
    names = [r["image"] for r in rows]
    full, _ = _streamed(model, _requests(model, names), slots=3, max_new_tokens=64)
    limits = [None, 5, 1, 0, 70, None, 12, 3]
    short, _ = _streamed(model, _requests(model, names, limits=limits), slots=3, max_new_tokens=64)
    for i, limit in enumerate(limits):
        cap = 64 if limit is None else min(limit, 64)
        assert short[i].token_ids == full[i].token_ids[:cap], i
        assert short[i].stopped_at_eos == (full[i].stopped_at_eos and full[i].n_new_tokens < cap)


def test_fixed_shapes_keep_the_published_tokens(reference):
    """Shapes(fixed=True): still the published code's tokens (10 studies, 4 slots); every step runs over all 4 slots
    to the end and every prefill pass takes one study."""
    model, rows = reference
    names = [rows[i % len(rows)]["image"] for i in range(10)]
    stats = DecodeStats()
    got, _ = _streamed(model, _requests(model, names), slots=4, max_new_tokens=rows[0]["max_new_tokens"],
                       shapes=Shapes(fixed=True), stats=stats)
    for i in range(10):
        row = rows[i % len(rows)]
        assert got[i].token_ids == (row["generated_ids"][:-1] if row["stopped_at_eos"] else row["generated_ids"])
    assert stats.row_steps == 4 * stats.steps and stats.prefills == stats.prefill_rows == 10


def test_batch_invariant_reports_do_not_depend_on_the_batch_in_bfloat16(tiny_dir):
    """In bfloat16 a study's greedy report can change with the studies that share its prefill (on this CPU, 18 of
    24 reports of this checkpoint differ between batch 1 and 4 by default). With Shapes(fixed=True), what
    generation.batch_invariant turns on, batch 1, 4 and 8 and a run stopped after 7 reports and resumed with the
    rest give the same tokens."""
    model = CxrLlava.from_pretrained(tiny_dir, device="cpu", dtype="bfloat16")
    size = model.config.vision.image_size
    pixels = torch.randn(24, 1, size, size, generator=torch.Generator().manual_seed(0))
    requests = [Request(i, pixels[i], model.prompt_ids()) for i in range(24)]
    fixed = Shapes(fixed=True)

    def tokens(slots, todo=requests, stop_after=None):
        return stream_tokens(model, todo, stop_after, slots=slots, max_new_tokens=40, shapes=fixed)

    alone = tokens(1)
    assert tokens(4) == alone and tokens(8) == alone
    first = tokens(4, stop_after=7)
    assert 7 <= len(first) < 24
    assert {**first, **tokens(4, [r for r in requests if r.key not in first])} == alone


def test_compiled_decode_step_gives_the_same_tokens():
    """torch.compile (inductor) of the fixed-shape step on the CPU: the same tokens as the eager step. One slot and
    several studies, so the compiled step sees one shape and is compiled once."""
    model, rows = CxrLlava.from_pretrained(REFERENCE / "tiny", device="cpu", dtype="float32"), _expected("tiny")
    try:
        import torch._inductor  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.compile's inductor backend cannot be imported here: {e}")
    names = [rows[i]["image"] for i in (0, 1, 2)]
    eager, _ = _streamed(model, _requests(model, names), slots=1, max_new_tokens=24)
    torch._dynamo.reset()
    try:
        compiled, _ = _streamed(model, _requests(model, names), slots=1, max_new_tokens=24,
                                step=lambda module: torch.compile(module, dynamic=False))
    except Exception as e:  # no C++ compiler, or inductor cannot build for this CPU
        if "inductor" in type(e).__module__ or "Compil" in type(e).__name__ or "compile" in str(e).lower():
            pytest.skip(f"inductor cannot compile on this machine: {type(e).__name__}: {str(e)[:200]}")
        raise
    finally:
        torch._dynamo.reset()
    assert [compiled[i].token_ids for i in range(3)] == [eager[i].token_ids for i in range(3)]


def test_masked_keys_get_weight_exactly_zero():
    """What the fixed-capacity attention relies on: with a boolean mask, SDPA gives masked keys weight exactly 0, so
    whatever the masked cache positions hold (finite) does not change a single bit of the output; against the
    shorter key range only the summation order differs (last-bit differences, no more)."""
    torch.manual_seed(0)
    n, capacity = 37, 200
    q = torch.randn(3, 4, 1, 16)
    k, v = torch.randn(3, 4, capacity, 16), torch.randn(3, 4, capacity, 16)
    mask = (torch.arange(capacity) < n)[None, None, None].expand(3, 1, 1, capacity)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, n:] = 1e4 * torch.randn_like(k2[:, :, n:])
    v2[:, :, n:] = 1e6
    assert torch.equal(torch.nn.functional.scaled_dot_product_attention(q, k2, v2, attn_mask=mask), out)
    short = torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n])
    torch.testing.assert_close(out, short, rtol=1e-6, atol=1e-6)
    # the decode step passes the same mask as -inf added to the scores: bit for bit the same as the boolean mask
    additive = torch.zeros(3, 1, 1, capacity).masked_fill(~mask, float("-inf"))
    assert torch.equal(torch.nn.functional.scaled_dot_product_attention(q, k2, v2, attn_mask=additive), out)


def test_cuda_graphs_on_without_cuda_is_a_one_line_model_error(tiny):
    with pytest.raises(ModelError, match=r"generation\.cuda_graphs: on needs a CUDA device.*cpu") as err:
        tiny.generate_reports(_images(["CXR7_IM-2263-1001.png"]), max_new_tokens=4, cuda_graphs="on")
    assert "\n" not in str(err.value)
    off = tiny.generate_reports(_images(["CXR7_IM-2263-1001.png"]), max_new_tokens=4, cuda_graphs="off")
    auto = tiny.generate_reports(_images(["CXR7_IM-2263-1001.png"]), max_new_tokens=4, cuda_graphs="auto")
    assert off[0].token_ids == auto[0].token_ids


def test_preprocessing_matches_published_code_bit_for_bit():
    model = CxrLlava.from_pretrained(REFERENCE / "tiny", device="cpu")
    expected = np.load(REFERENCE / "tiny" / "pixel_values.npy")
    rows = _expected("tiny")
    for row, pixels in zip(rows, expected):
        assert np.array_equal(model.preprocess(Image.open(IMAGES / row["image"])), pixels), row["image"]


# -- prompt and preprocessing by hand ------------------------------------------------------------------------------

def test_render_prompt_is_llama2_chat_with_image_placeholder():
    text = render_prompt("SYS", "  question?\n")
    assert text == "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\n<image>\n  question? [/INST]"
    default = render_prompt(REPORT_SYSTEM_PROMPT, REPORT_USER_PROMPT)
    assert default.endswith("pleural effusion, and pneumothorax. [/INST]")


def test_prompt_encoding_doubled_bos_and_single_image_slot(tiny):
    tok = tiny.tokenizer
    ids = tiny.prompt_ids("You are a radiologist.", "Describe the image.")
    assert ids.before[:2] == (tok.bos_id, tok.bos_id)
    assert tok.bos_id not in ids.after  # the second piece's BOS is dropped
    assert tok.decode(list(ids.before)).startswith("[INST] <<SYS>>")
    assert tok.decode(list(ids.after)).strip() == "Describe the image. [/INST]"
    with pytest.raises(ValueError, match="exactly one"):
        tok.encode_prompt("no image here")


def test_preprocess_hand_computed():
    mean, std = 0.5, 0.25
    square = Image.fromarray(np.array([[0, 255], [51, 102]], dtype=np.uint8))
    out = preprocess_image(square, 2, mean, std)
    expected = (np.array([[0, 1], [0.2, 0.4]], dtype=np.float32) - np.float32(mean)) / np.float32(std)
    assert out.shape == (1, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-6)
    # A non-square image: the short edge is resized to the target, then the centre is cropped.
    tall = Image.fromarray(np.repeat(np.arange(6, dtype=np.uint8)[:, None] * 40, 3, axis=1))  # 3 wide, 6 high
    out = preprocess_image(tall, 3, 0.0, 1.0)
    assert out.shape == (1, 3, 3)
    np.testing.assert_allclose(out[0] * 255, np.asarray(tall)[1:4], atol=1e-4)  # rows 1..3 of 6, no resize
    # RGB with equal channels reads as its grey channel.
    rgb = Image.merge("RGB", [square] * 3)
    assert np.array_equal(preprocess_image(rgb, 2, mean, std), preprocess_image(square, 2, mean, std))


# -- generation behaviour ------------------------------------------------------------------------------------------

def test_batch_with_different_prompt_lengths_equals_single_calls(tiny):
    images = _images(["CXR7_IM-2263-1001.png", "CXR3_IM-1384-1001.png", "00000001_000.png"])
    prompts = [tiny.prompt_ids(), tiny.prompt_ids(user="Is there an effusion?"),
               tiny.prompt_ids(system="Be brief.", user="Findings?")]
    assert len({len(p.before) + len(p.after) for p in prompts}) == 3  # left padding is exercised
    batch = tiny.generate_reports(images, prompt=prompts, max_new_tokens=40)
    single = [tiny.generate_reports([im], prompt=p, max_new_tokens=40)[0] for im, p in zip(images, prompts)]
    assert [r.token_ids for r in batch] == [r.token_ids for r in single]
    assert [r.text for r in batch] == [r.text for r in single]
    assert len({tuple(r.token_ids) for r in batch}) == 3


def test_eos_checked_every_few_steps_gives_the_same_reports(reference):
    """The GPU setting (look for </s> every 8 steps, compact the batch late) changes nothing in the output."""
    model, rows = reference
    images = _images([r["image"] for r in rows])
    every_step = model.generate_reports(images, max_new_tokens=rows[0]["max_new_tokens"])
    model.eos_check_every = 8
    try:
        late = model.generate_reports(images, max_new_tokens=rows[0]["max_new_tokens"])
    finally:
        model.eos_check_every = None
    assert [(r.token_ids, r.stopped_at_eos, r.text) for r in late] == \
        [(r.token_ids, r.stopped_at_eos, r.text) for r in every_step]
    assert any(r.stopped_at_eos for r in late) and any(not r.stopped_at_eos for r in late)


def test_stops_at_eos_and_respects_the_limit(reference):
    model, rows = reference
    row = next(r for r in rows if r["stopped_at_eos"])
    report = model.generate_reports(_images([row["image"]]), max_new_tokens=200)[0]
    assert report.stopped_at_eos and 2 not in report.token_ids
    assert report.n_new_tokens == len(row["generated_ids"]) - 1 < 200
    short = model.generate_reports(_images([row["image"]]), max_new_tokens=3)[0]
    assert short.n_new_tokens == 3 and not short.stopped_at_eos
    assert short.token_ids == report.token_ids[:3]


def test_unk_tokens_are_generated_but_not_confused_with_padding(reference):
    model, rows = reference
    row = next(r for r in rows if 0 in r["generated_ids"])
    report = model.generate_reports(_images([row["image"]]), max_new_tokens=row["max_new_tokens"])[0]
    assert 0 in report.token_ids and report.n_new_tokens == len(row["generated_ids"]) - row["stopped_at_eos"]


def test_sampling_is_seeded_per_image_and_independent_of_the_batch(tiny):
    images = _images(["CXR7_IM-2263-1001.png", "CXR3_IM-1384-1001.png", "00000001_000.png"])
    kwargs = dict(max_new_tokens=30, temperature=1.0, top_p=0.9)
    batch = tiny.generate_reports(images, seed=[11, 12, 13], **kwargs)
    alone = [tiny.generate_reports([im], seed=[s], **kwargs)[0] for im, s in zip(images, (11, 12, 13))]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    again = tiny.generate_reports(images[:1], seed=11, **kwargs)[0]
    other = tiny.generate_reports(images[:1], seed=99, **kwargs)[0]
    greedy = tiny.generate_reports(images[:1], max_new_tokens=30)[0]
    assert again.token_ids == alone[0].token_ids
    assert other.token_ids != again.token_ids and greedy.token_ids != again.token_ids
    tiny.eos_check_every = 8
    try:
        late = tiny.generate_reports(images, seed=[11, 12, 13], **kwargs)
    finally:
        tiny.eos_check_every = None
    assert [r.token_ids for r in late] == [r.token_ids for r in batch]


def test_lean_decoder_matches_transformers_llama_generate(tiny):
    """The language model's own modules (llama.py) and the decoders' attention and cache give the tokens of
    transformers' LlamaForCausalLM.generate with the same weights, which also loads them under the same names."""
    from transformers import LlamaConfig, LlamaForCausalLM

    reference = LlamaForCausalLM(LlamaConfig(**tiny.config.llama)).eval()
    missing, unexpected = reference.load_state_dict(tiny.language_model.state_dict(), strict=False)
    assert not unexpected and all("rotary" in name for name in missing)
    images = _images(["CXR7_IM-2263-1001.png", "00000001_000.png"])
    pixels = torch.from_numpy(np.stack([tiny.preprocess(im) for im in images]))
    ours = tiny.generate_reports(pixels, max_new_tokens=24)
    assert ours[0].token_ids != ours[1].token_ids
    for row, report in enumerate(ours):
        embeds, _ = tiny._prompt_embeddings(tiny.encode_images(pixels[row:row + 1]), [tiny.prompt_ids()])
        with torch.no_grad():
            out = reference.generate(inputs_embeds=embeds, max_new_tokens=24, do_sample=False,
                                     eos_token_id=2, pad_token_id=0)
        theirs = out[0].tolist()
        if theirs and theirs[-1] == 2:
            theirs = theirs[:-1]
        assert report.token_ids == theirs


def test_bfloat16_weights_and_generation(tiny_dir):
    model = CxrLlava.from_pretrained(tiny_dir, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    images = _images(["CXR7_IM-2263-1001.png", "00000001_000.png"])
    reports = model.generate_reports(images, max_new_tokens=5)
    for report in reports:
        assert report.n_new_tokens == len(report.token_ids) <= 5
        assert report.stopped_at_eos or report.n_new_tokens == 5  # ended at </s> or at the limit, nothing else
        assert all(0 <= t < model.config.vocab_size and t != model.tokenizer.eos_id for t in report.token_ids)
    # the fixed-shape decoder and the growing-cache reference agree in bfloat16 too
    reference = model.generate_reports(images, max_new_tokens=5, fixed_shape=False)
    assert [r.token_ids for r in reports] == [r.token_ids for r in reference]


# -- checkpoint layout and strict loading ----------------------------------------------------------------------------

def test_tiny_builder_writes_the_published_layout(tiny_dir):
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())["weight_map"]
    for key in ("llama.embed_tokens.weight", "llama.layers.1.self_attn.q_proj.weight", "lm_head.weight",
                "vision_tower.transformer.resblocks.0.attn.in_proj_weight", "vision_tower.proj",
                "vision_tower.conv1.weight", "mm_projector.bias"):
        assert key in index
    assert not any(k.startswith(("language_model", "model.")) for k in index)
    assert sorted(set(index.values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    reference_keys = set(json.loads((REFERENCE / "tiny" / "model.safetensors.index.json").read_text())["weight_map"])
    assert set(index) == reference_keys  # the same tensor names as the published code saves


def _unsharded_copy(tiny_dir: Path, folder: Path) -> dict[str, torch.Tensor]:
    """Copy the checkpoint without its safetensors shards and index; return their tensors."""
    shutil.copytree(tiny_dir, folder)
    tensors = {}
    for shard in folder.glob("model-*.safetensors"):
        tensors.update(load_file(shard))
        shard.unlink()
    (folder / "model.safetensors.index.json").unlink()
    return tensors


def test_single_file_checkpoint_equals_sharded(tiny_dir, tiny, tmp_path):
    single = tmp_path / "single"
    save_file(_unsharded_copy(tiny_dir, single), str(single / "model.safetensors"))
    model = CxrLlava.from_pretrained(single, device="cpu")
    images = _images(["CXR303_IM-1404-1001.png", "00000013_019.png"])
    a = model.generate_reports(images, max_new_tokens=20)
    b = tiny.generate_reports(images, max_new_tokens=20)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]


def test_pytorch_bin_fallback_equals_safetensors(tiny_dir, tiny, tmp_path):
    folder = tmp_path / "bin"
    torch.save(_unsharded_copy(tiny_dir, folder), folder / "pytorch_model.bin")
    model = CxrLlava.from_pretrained(folder, device="cpu")
    image = _images(["CXR1900_IM-0584-1001.png"])
    assert model.generate_reports(image, max_new_tokens=16)[0].token_ids == \
        tiny.generate_reports(image, max_new_tokens=16)[0].token_ids


def _edit_shard(folder: Path, edit) -> None:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"]["lm_head.weight"]
    tensors = load_file(shard)
    edit(tensors, index)
    save_file(tensors, str(shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape"])
def test_strict_loading_names_the_tensor(tiny_dir, tmp_path, case):
    bad = tmp_path / case
    shutil.copytree(tiny_dir, bad)

    def edit(tensors, index):
        if case == "missing":
            del tensors["lm_head.weight"]
            del index["weight_map"]["lm_head.weight"]
        elif case == "unexpected":
            tensors["llama.extra_adapter.weight"] = torch.zeros(2)
            index["weight_map"]["llama.extra_adapter.weight"] = index["weight_map"]["lm_head.weight"]
        else:
            tensors["lm_head.weight"] = tensors["lm_head.weight"][:, :-1].contiguous()

    _edit_shard(bad, edit)
    expected = {"missing": r"missing tensors: lm_head\.weight", "unexpected": r"unexpected tensors: llama\.extra_adapter",
                "shape": r"shape mismatches: lm_head\.weight"}[case]
    with pytest.raises(CheckpointError, match=expected):
        CxrLlava.from_pretrained(bad, device="cpu")


def test_ignored_tensor_may_be_absent(tiny_dir, tmp_path):
    folder = tmp_path / "noproj"
    shutil.copytree(tiny_dir, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"].pop("vision_tower.proj")
    tensors = load_file(shard)
    del tensors["vision_tower.proj"]
    save_file(tensors, str(shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    CxrLlava.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize("case,message", [
    ("no_config", r"config\.json: missing from the checkpoint"),
    ("no_tokenizer", r"tokenizer\.model: missing from the checkpoint"),
    ("config_key", r"missing key 'llama\.hidden_size'"),
    ("vision_key", r"missing key 'clip_vision_cfg\.patch_size'"),
    ("no_shard", r"lists shard files that are missing"),
    ("vocab", r"llama\.vocab_size"),
])
def test_bad_checkpoint_fails_before_reading_weights(tiny_dir, tmp_path, case, message):
    folder = tmp_path / case
    shutil.copytree(tiny_dir, folder)
    for shard in folder.glob("model-*.safetensors"):  # unreadable weights: the error must come first
        if case != "no_shard":
            shard.write_bytes(b"not safetensors")
    config = json.loads((folder / "config.json").read_text())
    if case == "no_config":
        (folder / "config.json").unlink()
    elif case == "no_tokenizer":
        (folder / "tokenizer.model").unlink()
    elif case == "config_key":
        del config["llama"]["hidden_size"]
    elif case == "vision_key":
        del config["clip_vision_cfg"]["patch_size"]
    elif case == "no_shard":
        next(folder.glob("model-*.safetensors")).unlink()
    elif case == "vocab":
        config["llama"]["vocab_size"] += 1
    if folder.joinpath("config.json").exists():
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        CxrLlava.from_pretrained(folder, device="cpu")


def test_unsupported_vision_option_is_refused():
    raw = json.loads((REFERENCE / "tiny" / "config.json").read_text())
    raw["clip_vision_cfg"]["attentional_pool"] = True
    with pytest.raises(CheckpointError, match="attentional_pool"):
        CxrLlavaConfig.from_dict(raw)


# -- Hugging Face cache, offline -----------------------------------------------------------------------------------

def test_hub_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch, tiny_dir):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    with pytest.raises(NotInCacheError, match=r"ECOFRI/CXR-LLAVA-v2: not in the local Hugging Face cache") as e:
        resolve("ECOFRI/CXR-LLAVA-v2")
    import generate_cxr  # the command line adds the command that fetches it
    assert generate_cxr.fetch_hint(e.value) == (": python generate_cxr.py --download-model --set "
                                               "model.name_or_path=ECOFRI/CXR-LLAVA-v2")
    assert generate_cxr.fetch_hint(e.value, "configs/medgemma-4b-it.yaml") == (  # the user's --config is kept
        ": python generate_cxr.py --config configs/medgemma-4b-it.yaml --download-model --set "
        "model.name_or_path=ECOFRI/CXR-LLAVA-v2")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--ECOFRI--CXR-LLAVA-v2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    folder, resolved = resolve("ECOFRI/CXR-LLAVA-v2")
    assert resolved == commit and folder == repo / "snapshots" / commit
    model = CxrLlava.from_pretrained("ECOFRI/CXR-LLAVA-v2", device="cpu")
    assert model.revision == commit


def test_not_a_checkpoint_path():
    with pytest.raises(ModelError, match="model.name_or_path ./does/not/exist: no such checkpoint folder"):
        resolve("./does/not/exist")
