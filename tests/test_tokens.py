import json

import pytest
import torch

from s2s.tokens import (
    ORPHEUS, TokenError, TokenLayout, codes_to_tokens, frame_positions, generation_prompt, human_prefix,
    human_suffix, speech_suffix, text_ids, tokens_to_codes, training_sequence,
)

TINY = TokenLayout(tokeniser_length=512, start_of_text=1, end_of_text=2, codebook_size=256)


class FakeTokenizer:
    """Maps each character to ord(c) % 100 + 10; records the kwargs it was called with."""

    class _Out:
        def __init__(self, ids):
            self.input_ids = ids

    def __init__(self):
        self.calls = []

    def __call__(self, text, **kw):
        self.calls.append((text, kw))
        return self._Out([ord(c) % 100 + 10 for c in text])


def _codes(n, cb, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cb, (m * n,), generator=g) for m in (1, 2, 4)]


def test_orpheus_special_ids_match_reference():
    L = ORPHEUS
    assert (L.start_of_text, L.end_of_text) == (128000, 128009)
    assert (L.start_of_speech, L.end_of_speech, L.start_of_human, L.end_of_human) == (128257, 128258, 128259, 128260)
    assert (L.start_of_ai, L.end_of_ai, L.pad, L.audio_offset) == (128261, 128262, 128263, 128266)
    assert L.audio_end == 156938 and L.min_vocab_size == 156938 <= 156940


def test_layout_dict_roundtrip_and_validation():
    d = json.loads(json.dumps(TINY.to_dict()))
    assert TokenLayout.from_dict(d) == TINY
    assert TINY.audio_offset == 522 and TINY.audio_end == 522 + 7 * 256
    with pytest.raises(TokenError, match="unknown keys"):
        TokenLayout.from_dict({**d, "bogus": 1})
    with pytest.raises(TokenError, match="codebook_size"):
        TokenLayout(codebook_size=0)
    with pytest.raises(TokenError, match="end_of_text"):
        TokenLayout(tokeniser_length=512, start_of_text=1, end_of_text=512)
    with pytest.raises(ValueError):  # TokenError is a ValueError
        TokenLayout(tokeniser_length=-1)


@pytest.mark.parametrize("layout", [ORPHEUS, TINY], ids=["orpheus", "tiny"])
def test_every_code_value_roundtrips_in_every_codebook(layout):
    cb = layout.codebook_size
    a = torch.arange(cb)
    # Each frame position gets a different permutation of 0..cb-1, so every code value appears at
    # every position and a position mixup cannot cancel out.
    sub1 = [a.roll(1), a.flip(0)]
    sub2 = [a.roll(2), a.roll(-3), a.flip(0).roll(5), (a * 3) % cb]
    codes = [a, torch.stack(sub1, 1).reshape(-1), torch.stack(sub2, 1).reshape(-1)]
    n = cb
    toks = codes_to_tokens(codes, layout)
    assert toks.dtype == torch.int64 and toks.shape == (7 * n,)
    # every frame position sees codes 0 and cb-1
    per_pos = (toks.view(-1, 7) - layout.audio_offset) - torch.arange(7) * cb
    assert int(per_pos.min()) == 0 and int(per_pos.max()) == cb - 1
    assert all(set(per_pos[:, k].tolist()) == set(range(cb)) for k in range(7))
    back, skipped = tokens_to_codes(toks, layout)
    assert skipped == 0
    for a, b in zip(codes, back):
        assert b.dtype == torch.int64 and torch.equal(a, b)
    lenient, skipped = tokens_to_codes(toks.tolist(), layout, strict=False)
    assert skipped == 0 and all(torch.equal(a, b) for a, b in zip(codes, lenient))


def test_hand_computed_frame():
    o, cb = 128266, 4096
    toks = codes_to_tokens([torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([3, 4, 5, 6])])
    assert toks.tolist() == [o + 0, o + cb + 1, o + 2 * cb + 3, o + 3 * cb + 4, o + 4 * cb + 2,
                             o + 5 * cb + 5, o + 6 * cb + 6]
    top = codes_to_tokens([torch.tensor([4095]), torch.tensor([4095] * 2), torch.tensor([4095] * 4)])
    assert int(top.max()) == 156937 and int(top[-1]) == 156937


def test_batched_matches_unbatched():
    B, n = 3, 5
    rows = [_codes(n, 4096, seed=s) for s in range(B)]
    batched = [torch.stack([r[j] for r in rows]) for j in range(3)]
    toks = codes_to_tokens(batched)
    assert toks.shape == (B, 7 * n) and toks.dtype == torch.int64
    for b in range(B):
        assert torch.equal(toks[b], codes_to_tokens(rows[b]))


def test_frame_positions():
    assert frame_positions(15).tolist() == [0, 1, 2, 3, 4, 5, 6] * 2 + [0]
    assert frame_positions(0).shape == (0,)


def test_codes_to_tokens_errors():
    ok = _codes(2, 4096)
    with pytest.raises(TokenError, match="3 codebooks"):
        codes_to_tokens(ok[:2])
    with pytest.raises(TokenError, match="c2 has code 4096"):
        codes_to_tokens([ok[0], ok[1], torch.tensor([0, 1, 2, 3, 4, 5, 6, 4096])])
    with pytest.raises(TokenError, match="c0 has code -1"):
        codes_to_tokens([torch.tensor([-1, 0]), ok[1], ok[2]])
    with pytest.raises(TokenError, match="inconsistent codebook shapes"):
        codes_to_tokens([ok[0], ok[1][:3], ok[2]])
    with pytest.raises(TokenError, match="inconsistent codebook shapes"):
        codes_to_tokens([ok[0], ok[1], ok[2][:7]])
    with pytest.raises(TokenError, match="integer"):
        codes_to_tokens([ok[0].float(), ok[1], ok[2]])
    with pytest.raises(TokenError, match="c1 has code 256"):
        codes_to_tokens([torch.tensor([0]), torch.tensor([0, 256]), torch.zeros(4, dtype=torch.long)], TINY)


def test_tokens_to_codes_strict_errors():
    toks = codes_to_tokens(_codes(2, 4096)).tolist()
    with pytest.raises(TokenError, match=r"partial frame.*index 14"):
        tokens_to_codes(toks + [toks[0]])
    for bad in (156938, 128265):
        with pytest.raises(TokenError, match=rf"token {bad} at index 9 is not an audio id"):
            tokens_to_codes(toks[:9] + [bad] + toks[10:])
    # an id from position 3's range placed at position 0 of frame 1
    wrong = toks[:7] + [toks[3]] + toks[8:]
    msg = r"index 7 belongs to frame position 3 .* position 0, expected \[128266, 132361\]"
    with pytest.raises(TokenError, match=msg):
        tokens_to_codes(wrong)
    with pytest.raises(TokenError, match="1-D"):
        tokens_to_codes(torch.tensor(toks).view(2, 7))


def test_tokens_to_codes_lenient():
    codes = _codes(3, 4096, seed=1)
    toks = codes_to_tokens(codes).tolist()
    keep = lambda got, frames: all(  # noqa: E731
        torch.equal(g, torch.cat([c.view(len(codes[0]), -1)[f] for f in frames]))
        for g, c in zip(got, codes))

    # one bad (non-audio) token in the middle frame: that frame is lost, the others survive
    got, skipped = tokens_to_codes(toks[:10] + [ORPHEUS.end_of_speech] + toks[11:], strict=False)
    assert skipped == 7 and keep(got, [0, 2])
    # a wrong-position id that happens to be a position-0 id: still only the middle frame is lost
    got, skipped = tokens_to_codes(toks[:10] + [toks[0]] + toks[11:], strict=False)
    assert skipped == 7 and keep(got, [0, 2])
    # a dropped token shifts the stream; resync at the next frame start
    got, skipped = tokens_to_codes(toks[:10] + toks[11:], strict=False)
    assert skipped == 6 and keep(got, [0, 2])
    # trailing partial frame (plus the end-of-speech token) is dropped and counted
    got, skipped = tokens_to_codes(toks + toks[:4] + [ORPHEUS.end_of_speech], strict=False)
    assert skipped == 5 and keep(got, [0, 1, 2])
    # nothing valid at all
    got, skipped = tokens_to_codes([1, 2, 3], strict=False)
    assert skipped == 3 and [g.shape for g in got] == [(0,), (0,), (0,)]


def test_prompts_layout():
    tok = FakeTokenizer()
    text_part = [ord(c) % 100 + 10 for c in "hi"]
    assert text_ids(tok, "hi") == [128000] + text_part
    assert tok.calls[-1] == ("hi", {"add_special_tokens": False})
    assert human_prefix(ORPHEUS) == [128259]
    assert human_suffix(ORPHEUS) == [128009, 128260, 128261, 128257]
    assert speech_suffix(ORPHEUS) == [128258, 128262]

    p = generation_prompt(tok, "hi", ORPHEUS, voice="tara")
    voiced = [ord(c) % 100 + 10 for c in "tara: hi"]
    assert p == [128259, 128000] + voiced + [128009, 128260, 128261, 128257]
    assert generation_prompt(tok, "hi") == [128259, 128000] + text_part + [128009, 128260, 128261, 128257]

    codes = _codes(2, 256, seed=3)
    seq = training_sequence(tok, "hi", codes, TINY)
    audio = codes_to_tokens(codes, TINY).tolist()
    prompt = [TINY.start_of_human, 1] + text_part + [2, TINY.end_of_human, TINY.start_of_ai, TINY.start_of_speech]
    assert seq == prompt + audio + [TINY.end_of_speech, TINY.end_of_ai]
    assert seq[-16:-2] == audio and all(TINY.audio_offset <= i < TINY.audio_end for i in seq[-16:-2])
    with pytest.raises(TokenError, match="unbatched"):
        training_sequence(tok, "hi", [c.unsqueeze(0) for c in codes], TINY)


def test_text_ids_rejects_ids_that_alias_audio():
    class Big(FakeTokenizer):
        def __call__(self, text, **kw):
            return self._Out([600])
    with pytest.raises(TokenError, match="tokeniser_length=512"):
        text_ids(Big(), "x", TINY)
