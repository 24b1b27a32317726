"""Captions from measured attributes, the tokenizer, the text encoder's padding, and cross-attention."""

import pytest
import torch

from diffusion_lib.text import CrossAttention, TextEncoder, attribute_words, caption, measure_attributes, tokenize


def _stroke(width=2, slant=0.0, top=4, bottom=23):
    """A vertical stroke (1, 1, 28, 28) in [-1, 1]: `width` pixels wide, leaning `slant` pixels per row."""
    image = -torch.ones(1, 1, 28, 28)
    for row in range(top, bottom + 1):
        centre = 14 + slant * (14 - row)
        left = int(round(centre - width / 2))
        image[0, 0, row, left:left + width] = 1
    return image


def test_attributes_measure_thickness_slant_and_size():
    thin, thick = measure_attributes(torch.cat([_stroke(2), _stroke(5)]))["thickness"]
    assert thin == pytest.approx(2) and thick == pytest.approx(5)
    upright, right, left = measure_attributes(torch.cat([_stroke(slant=0), _stroke(slant=0.4), _stroke(slant=-0.4)]))["slant"]
    assert abs(upright) < 0.02 and right == pytest.approx(0.4, abs=0.05) and left == pytest.approx(-0.4, abs=0.05)
    assert measure_attributes(torch.cat([_stroke(top=10, bottom=17), _stroke()]))["size"].tolist() == [8, 20]


def test_captions_and_words():
    words = attribute_words({"thickness": torch.tensor([1.5, 4.0]), "slant": torch.tensor([0.0, 0.5]),
                             "size": torch.tensor([20.0, 12.0])}, {"thickness": 2.5, "slant": 0.2, "size": 16})
    assert words == [{"thickness": "thin", "slant": "upright", "size": "large"},
                     {"thickness": "thick", "slant": "slanted", "size": "small"}]
    assert caption(7, words[1]) == "a thick slanted small seven"
    assert caption(3, words[0], phrasing=1, attributes=("thickness",)) == "three written thin"
    assert caption(3, words[0], phrasing=2, attributes=()) == "a digit three"
    with pytest.raises(ValueError, match="0..9"):
        caption(12, words[0])


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
