"""Captions from measured attributes, the tokenizer, the text encoder's padding, and cross-attention."""

import pytest
import torch

from diffusion_lib import UNet, UNetConfig, as_eps_model, guided_eps_fn, make_schedule
from diffusion_lib.text import (ATTRIBUTE_WORDS, HELD_OUT, CrossAttention, TextEncoder, attribute_agreement,
                                attribute_codes, attribute_thresholds, caption, measure_attributes, parse_caption,
                                tokenize, training_captions)
from diffusion_lib.unet import empty_caption_ids


def _stroke(width=2, slant=0.0, top=4, bottom=23):
    """A vertical stroke (1, 1, 28, 28) in [-1, 1]: `width` pixels wide, leaning `slant` pixels per row."""
    image = -torch.ones(1, 1, 28, 28)
    for row in range(top, bottom + 1):
        centre = 14 + slant * (14 - row)
        left = int(round(centre - width / 2))
        image[0, 0, row, left:left + width] = 1
    return image


def test_attributes_measure_thickness_slant_and_width():
    thin, thick = measure_attributes(torch.cat([_stroke(2), _stroke(5)]))["thickness"]
    assert thin == pytest.approx(2) and thick == pytest.approx(5)
    upright, right, left = measure_attributes(torch.cat([_stroke(slant=0), _stroke(slant=0.4), _stroke(slant=-0.4)]))["slant"]
    assert abs(upright) < 0.02 and right == pytest.approx(0.4, abs=0.05) and left == pytest.approx(-0.4, abs=0.05)
    assert measure_attributes(torch.cat([_stroke(width=3), _stroke(width=2, slant=0.4)]))["width"].tolist() == [3, 10]


def _strokes_of_every_kind():
    """Strokes of widths 1..5 and slants -0.3..0.3, labelled with digits 0..9 in turn."""
    images = torch.cat([_stroke(w, s) for w in range(1, 6) for s in (-0.3, -0.1, 0.0, 0.1, 0.3) for _ in range(2)])
    return images, torch.arange(len(images)) % 10


def test_thresholds_are_per_digit_and_codes_name_the_clear_cases():
    images, labels = _strokes_of_every_kind()
    attributes = measure_attributes(images)
    thresholds = attribute_thresholds(attributes, labels)
    assert set(thresholds) == set(ATTRIBUTE_WORDS) and all(len(rows) == 10 for rows in thresholds.values())
    assert all(low <= median <= high for rows in thresholds.values() for low, median, high in rows)
    codes = attribute_codes(attributes, labels, thresholds)
    for i in range(len(images)):
        low, _, high = thresholds["thickness"][int(labels[i])]
        value = attributes["thickness"][i]
        assert codes[i, 0] == (0 if value < low else 1 if value > high else -1)


def test_captions_words_phrasings_and_parsing():
    words = {"thickness": "thick", "slant": "slanted", "width": "narrow"}
    assert caption(7, words) == "a thick slanted narrow seven"
    assert caption(3, words, phrasing=1, attributes=("thickness",)) == "three written thick"
    assert caption(8, {}, phrasing=2) == "a digit eight" and caption(8, {"slant": "upright"}) == "an upright eight"
    assert parse_caption("seven written thick and narrow") == (7, {"thickness": "thick", "width": "narrow"})
    assert parse_caption("a thin digit") == (None, {"thickness": "thin"})
    with pytest.raises(ValueError, match="0..9"):
        caption(12, words)


def test_training_captions_say_the_measured_words_and_never_a_held_out_pair():
    labels = torch.arange(2000) % 10
    codes = torch.randint(-1, 2, (2000, 3), generator=torch.Generator().manual_seed(0))
    captions = training_captions(labels, codes, torch.Generator().manual_seed(1))
    tokenize(captions)  # every caption fits the vocabulary and length
    said_pairs = 0
    for label, row, text in zip(labels.tolist(), codes.tolist(), captions):
        digit, asked = parse_caption(text)
        assert digit == label
        for j, name in enumerate(ATTRIBUTE_WORDS):
            if name in asked:
                assert row[j] >= 0 and asked[name] == ATTRIBUTE_WORDS[name][row[j]]
        pair = (asked.get("thickness"), asked.get("slant"))
        assert pair != HELD_OUT[label]
        said_pairs += None not in pair
    assert said_pairs > 200  # other pairs are said, so the held-out check above could have failed
    assert len({text.split()[0] for text in captions}) >= 3  # several phrasings


def test_attribute_agreement_counts_the_asked_side_of_the_median():
    images, labels = _strokes_of_every_kind()
    thresholds = attribute_thresholds(measure_attributes(images), labels)
    thin, thick = _stroke(1), _stroke(5)
    images, labels = torch.cat([thin, thick, thick]), torch.tensor([0, 0, 0])
    asked = [{"thickness": "thin"}, {"thickness": "thick"}, {"thickness": "thin", "slant": "upright"}]
    agreement = attribute_agreement(images, labels, asked, thresholds)
    assert agreement["thickness"] == pytest.approx(2 / 3) and set(agreement) == {"thickness", "slant"}


def test_tokenize_pads_masks_and_names_unknown_words():
    ids, keep = tokenize(["a thick seven", ""], max_tokens=5)
    assert ids.shape == keep.shape == (2, 5) and keep.tolist() == [[True] * 4 + [False], [True] + [False] * 4]
    assert (ids[:, 0] == 1).all() and (ids[keep] > 0).all() and (ids[~keep] == 0).all()  # <start>, words, padding
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['purple'\]"):
        tokenize(["a purple seven"])
    with pytest.raises(ValueError, match="at most 2 fit"):
        tokenize(["a thick seven"], max_tokens=3)
    with pytest.raises(ValueError, match="unknown word"):
        tokenize(["<pad> seven"])


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = TextEncoder(dim=32, layers=2, heads=4).eval()
    short_ids, short_keep = tokenize(["a thick seven"], max_tokens=4)
    long_ids, long_keep = tokenize(["a thick seven"], max_tokens=8)
    short, long = encoder(short_ids, short_keep), encoder(long_ids, long_keep)
    assert short.shape == (1, 4, 32) and long.shape == (1, 8, 32)
    assert torch.allclose(short, long[:, :4], atol=1e-5)  # more padding changes nothing for the real tokens
    other_ids, other_keep = tokenize(["a thin seven"], max_tokens=8)
    assert not torch.allclose(encoder(other_ids, other_keep)[:, 3], long[:, 3], atol=1e-3)  # words matter
    assert torch.isfinite(encoder(*tokenize([""]))).all()  # the null caption: <start> alone
    with pytest.raises(ValueError, match="must both be"):
        encoder(long_ids, long_keep[:, :4])
    with pytest.raises(ValueError, match="<start>"):
        encoder(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.bool))


def test_cross_attention_shapes_mask_and_null_caption():
    torch.manual_seed(1)
    attention = CrossAttention(ch=16, token_dim=32, groups=4, heads=2)
    h, tokens = torch.randn(3, 16, 7, 7), torch.randn(3, 8, 32)
    keep = torch.tensor([[True] * 3 + [False] * 5, [True] * 8, [True] + [False] * 7])
    out = attention(h, tokens, keep)
    assert out.shape == h.shape
    weights, _ = attention.weights(h, tokens, keep)
    assert weights.shape == (3, 2, 49, 8)  # (B, heads, image positions, tokens)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 2, 49)) and (weights[0, ..., 3:] == 0).all()
    assert torch.allclose(weights[2, ..., 0], torch.ones(2, 49))  # one token: all attention on it
    changed = tokens.clone()
    changed[0, 3:] = torch.randn(5, 32)  # only padding of the first caption changes
    assert torch.allclose(attention(h, changed, keep)[0], out[0], atol=1e-6)
    changed[0, 1] = torch.randn(32)  # a real token changes the output
    assert not torch.allclose(attention(h, changed, keep)[0], out[0], atol=1e-4)
    with pytest.raises(ValueError, match="must match the batch"):
        attention(h, tokens[:2], keep[:2])
    with pytest.raises(ValueError, match="at least one real token"):
        attention(h, tokens, torch.zeros(3, 8, dtype=torch.bool))


@pytest.fixture(scope="module")
def text_unet():
    torch.manual_seed(0)
    config = UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,), text_dim=16,
                        cross_attention_levels=(0, 1))
    return UNet(config).eval()


def test_text_unet_reads_captions_and_ignores_padding(text_unet):
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 700])
    ids, _ = tokenize(["a thick seven", "an upright one"])
    with torch.no_grad():
        out = text_unet(x, t, ids)
        assert out.shape == x.shape
        assert torch.allclose(text_unet(x, t, tokenize(["a thick seven", "an upright one"], 6)[0]), out, atol=1e-5)
        assert not torch.allclose(text_unet(x, t, tokenize(["a thin seven", "an upright one"])[0])[0], out[0], atol=1e-4)
        null = tokenize(["", ""])[0]
        assert torch.allclose(text_unet(x, t), text_unet(x, t, null), atol=1e-5)  # no caption = the empty caption
        assert torch.allclose(text_unet(x, t), text_unet(x, t, empty_caption_ids(2)), atol=1e-5)
    with pytest.raises(ValueError, match="token ids"):
        text_unet(x, t, torch.tensor([3, 7]))
    with pytest.raises(ValueError, match="text.tokenize"):
        text_unet(x, t, ids[:, 1:])  # no <start>
    with pytest.raises(ValueError, match="not both"):
        UNetConfig(num_classes=10, text_dim=16)


def test_text_guidance_uses_the_empty_caption_as_null(text_unet):
    model = as_eps_model(text_unet, make_schedule("cosine", 1000), "v")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 700])
    ids = tokenize(["a thick seven", "one"])[0]
    null = tokenize([""])[0]
    with torch.no_grad():
        eps_cond, eps_uncond = model(x, t, ids), model(x, t, null.expand(2, -1))
        assert torch.allclose(guided_eps_fn(model, ids, 0.0, null)(x, t), eps_uncond, atol=1e-5)
        guided = guided_eps_fn(model, ids, 2.5, null)(x, t)
        assert torch.allclose(guided, eps_uncond + 2.5 * (eps_cond - eps_uncond), atol=1e-5)


def test_text_checkpoint_round_trip(text_unet, tmp_path):
    from diffusion_lib import load_model, save_model

    save_model(tmp_path / "text.safetensors", text_unet, {"data": "mnist"})
    loaded, info = load_model(tmp_path / "text.safetensors")
    x, t, ids = torch.randn(2, 1, 8, 8), torch.tensor([5, 500]), tokenize(["a wide two", ""])[0]
    with torch.no_grad():
        assert loaded.config == text_unet.config and torch.equal(loaded(x, t, ids), text_unet(x, t, ids))
