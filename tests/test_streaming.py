"""Streaming SNAC decoding (s2s/streaming.py): chunks add up to the offline decode, whatever the chunking.

All on the tiny SNAC (same layer sizes as SNAC 24 kHz, fewer channels) with random codes: exactness is
a property of the decoder's shape, not of what the codes say."""
from __future__ import annotations

import random
import warnings

import pytest
import torch

from s2s.streaming import (FrameParser, StreamingDecoder, StreamingError, context_frames, decode_offline,
                           frame_samples, noise_blocks, receptive_radius, stream_audio)
from s2s.tokens import FRAME, codes_to_tokens, tokens_to_codes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from snac import SNAC

ATOL = 1e-5  # float rounding of convolutions over different lengths (seen: 7e-7)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_ids(core, n_frames: int, seed: int = 0) -> torch.Tensor:
    """Well-formed speech ids [7 n] of random codes."""
    gen = torch.Generator().manual_seed(seed)
    cb = core.layout.codebook_size
    return codes_to_tokens([torch.randint(0, cb, (m * n_frames,), generator=gen) for m in (1, 2, 4)], core.layout)


def streamed(core, ids, pieces: int = 1, **kwargs) -> list[torch.Tensor]:
    """Chunks from pushing `ids` `pieces` at a time, then flushing."""
    items = [ids[i:i + pieces] for i in range(0, len(ids), pieces)]
    return list(stream_audio(core, items, **kwargs))


def test_context_covers_the_receptive_field(tiny_core):
    """Perturbing one frame changes samples only within receptive_radius, which needs 3 frames each side;
    the real SNAC 24 kHz config (random weights) has the same layer sizes, hence the same context."""
    snac, n = tiny_core.snac, frame_samples(tiny_core.snac)
    ids = random_ids(tiny_core, 16)
    changed = ids.clone()
    changed[8 * FRAME:9 * FRAME] += 1  # frame 8: every code + 1 (random codes < 255 stay in range)
    base, _ = decode_offline(tiny_core, ids)
    other, _ = decode_offline(tiny_core, changed)
    moved = ((base - other).abs() > 0).nonzero().view(-1)
    reach = max(8 * n - int(moved.min()), int(moved.max()) - (9 * n - 1))
    assert 2 * n < reach <= receptive_radius(snac)  # 4725 samples: more than 2 frames
    assert context_frames(snac) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = SNAC(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                    decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                    vq_strides=[4, 2, 1], noise=True, depthwise=True)
    assert frame_samples(real) == 2048 and context_frames(real) == 3
    assert [u for _, u in noise_blocks(real)] == [8, 64, 256, 512]


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_streamed_equals_offline(tiny_core, chunk):
    ids = random_ids(tiny_core, 9, seed=chunk)
    offline, dropped = decode_offline(tiny_core, ids)
    chunks = streamed(tiny_core, ids, chunk_frames=chunk)
    n = frame_samples(tiny_core.snac)
    # every chunk but the flushed last one holds exactly `chunk` new frames; none overlap, none is lost
    assert [len(c) for c in chunks[:-1]] == [chunk * n] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) and len(chunks[-1]) % n == 0
    torch.testing.assert_close(torch.cat(chunks), offline, atol=ATOL, rtol=0)
    assert dropped == 0
    if chunk == 2:  # how the ids arrive does not matter
        torch.testing.assert_close(torch.cat(streamed(tiny_core, ids, pieces=10, chunk_frames=chunk)), offline,
                                   atol=ATOL, rtol=0)


def test_audio_arrives_once_the_lookahead_is_in(tiny_core):
    """The first chunk comes with the id that completes frame chunk + lookahead, not before."""
    ids = random_ids(tiny_core, 6)
    decoder = StreamingDecoder(tiny_core, chunk_frames=2)
    first = next(i for i in range(len(ids)) if decoder.push(ids[i]))
    assert first == FRAME * (2 + context_frames(tiny_core.snac)) - 1


def test_an_utterance_shorter_than_one_chunk(tiny_core):
    ids = random_ids(tiny_core, 3, seed=7)
    decoder = StreamingDecoder(tiny_core, chunk_frames=5)
    assert decoder.push(ids) == []
    chunks = decoder.flush()
    assert len(chunks) == 1 and decoder.flush() == []
    torch.testing.assert_close(chunks[0], decode_offline(tiny_core, ids)[0], atol=ATOL, rtol=0)


def test_an_utterance_ending_mid_window(tiny_core):
    """9 frames in chunks of 2 with 3 frames of look-ahead: 6 frames stream, the last 3 come at flush from a
    window that ends where the utterance does."""
    ids = random_ids(tiny_core, 9, seed=3)
    decoder = StreamingDecoder(tiny_core, chunk_frames=2)
    early = decoder.push(ids)
    assert len(early) == 3 and decoder.emitted == 6
    rest = decoder.flush()
    assert [len(c) for c in rest] == [3 * frame_samples(tiny_core.snac)]
    torch.testing.assert_close(torch.cat(early + rest), decode_offline(tiny_core, ids)[0], atol=ATOL, rtol=0)


def test_broken_and_partial_frames_are_dropped_as_offline(tiny_core):
    layout = tiny_core.layout
    frames = random_ids(tiny_core, 6, seed=5).view(6, FRAME)
    wrong_order = frames[2].clone()
    wrong_order[[3, 4]] = wrong_order[[4, 3]]
    ids = torch.cat([frames[0], torch.tensor([5]), frames[1], torch.tensor([layout.end_of_speech]), frames[2, :3],
                     frames[3], wrong_order, frames[4], frames[4, 2:], frames[5], frames[5, :4]])
    offline, dropped = decode_offline(tiny_core, ids)
    assert len(offline) == 5 * frame_samples(tiny_core.snac) and dropped == len(ids) - 5 * FRAME
    for chunk in (1, 2):
        decoder = StreamingDecoder(tiny_core, chunk_frames=chunk)
        out = [c for t in ids for c in decoder.push(t)] + decoder.flush()
        torch.testing.assert_close(torch.cat(out), offline, atol=ATOL, rtol=0)
        assert decoder.skipped == dropped


def test_frame_parser_finds_the_frames_the_lenient_scan_finds(tiny_core):
    """Random id soups (valid runs, wrong positions, stray frame starts, text ids, end_of_speech): the
    incremental parser keeps exactly the frames tokens_to_codes(strict=False) keeps from the whole."""
    layout, rng = tiny_core.layout, random.Random(0)
    cb, lo = layout.codebook_size, layout.audio_offset
    for _ in range(200):
        ids, k = [], 0
        for _ in range(rng.randint(0, 60)):
            r = rng.random()
            if r < 0.75:  # the next position of a well-formed stream
                ids.append(lo + k * cb + rng.randrange(cb))
                k = (k + 1) % FRAME
            elif r < 0.85:
                ids.append(lo + rng.randrange(FRAME) * cb + rng.randrange(cb))
            elif r < 0.92:
                ids.append(lo + rng.randrange(cb))  # a frame start out of turn
                k = 1
            else:
                ids.append(rng.choice([3, layout.end_of_speech, layout.audio_end]))
        parser = FrameParser(layout)
        found = [f for f in (parser.push(t) for t in ids) if f is not None]
        codes, skipped = tokens_to_codes(torch.tensor(ids, dtype=torch.long), layout, strict=False)
        expected = codes_to_tokens(codes, layout)
        got = torch.cat(found) if found else torch.zeros(0, dtype=torch.long)
        assert torch.equal(got, expected), ids
        assert parser.skipped == skipped


def test_fixed_noise_is_what_makes_decodes_comparable(tiny_core):
    """SNAC's own noise: two decodes differ by as much as the signal; fixed noise: equal, and seeded."""
    ids = random_ids(tiny_core, 4)
    a, b = decode_offline(tiny_core, ids, noise_seed=None)[0], decode_offline(tiny_core, ids, noise_seed=None)[0]
    assert (a - b).pow(2).mean().sqrt() > 0.1 * a.pow(2).mean().sqrt()
    assert torch.equal(decode_offline(tiny_core, ids, 0)[0], decode_offline(tiny_core, ids, 0)[0])
    assert not torch.allclose(decode_offline(tiny_core, ids, 0)[0], decode_offline(tiny_core, ids, 1)[0])
    block = noise_blocks(tiny_core.snac)[0][0]
    assert "forward" not in block.__dict__  # the patch is gone after each decode


def test_less_context_than_the_receptive_field_is_not_exact(tiny_core):
    """The context is what makes it exact: with 1 frame each side (about the reference decoder's) it is not."""
    ids = random_ids(tiny_core, 8, seed=2)
    offline = decode_offline(tiny_core, ids)[0]
    short = torch.cat(streamed(tiny_core, ids, lookback_frames=1, lookahead_frames=1))
    assert (short - offline).abs().max() > 1e-3  # 0.045 measured


def test_bad_settings_and_attention_decoders_are_errors(tiny_core):
    with pytest.raises(StreamingError, match="chunk_frames=0"):
        StreamingDecoder(tiny_core, chunk_frames=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attn = SNAC(sampling_rate=24000, encoder_dim=8, encoder_rates=[2, 4, 8, 8], decoder_dim=64,
                    decoder_rates=[8, 8, 4, 2], attn_window_size=4, codebook_size=256, codebook_dim=8,
                    vq_strides=[4, 2, 1])
    with pytest.raises(StreamingError, match="attn_window_size=4"):
        context_frames(attn)
