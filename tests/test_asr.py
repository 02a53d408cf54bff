"""ASR backends: pocketsphinx's topline on flite English speech, the Whisper backend through the
real loading path on a tiny random model, and the errors for unknown backends and missing models.

The tiny Whisper's weights are random, so its transcripts are garbage: these tests check the
plumbing (one string per input, the forced language in the decoder prompt, batching per
language, resampling, 30-s windows), never what it hears.
"""

import shutil
import subprocess

import pytest
import soundfile as sf
import torch

from evaluation.asr import BACKENDS, ASRError, build_asr
from evaluation.asr.base import prepare_waves
from s2s.errors import UserError
from evaluation.metrics import score_texts

FLITE_SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "please call me when you get home",
    "the weather is nice today",
    "i would like a cup of coffee",
    "the children play football after school",
    "we are going to the park this afternoon",
    "my brother lives in a small town",
    "can you open the window please",
    "the train leaves at seven in the morning",
    "he reads a book every night",
]
# Measured 0.043 corpus WER (3 errors / 69 words: "call" -> "tell", "home" -> "on",
# "school" -> "skill") with pocketsphinx 5.1.1 and flite's slt voice; margin for other versions.
POCKETSPHINX_TOPLINE_MAX_WER = 0.15


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 for this process (huggingface_hub reads the variable once, at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- registry ------------------------------------------------------------------------------

def test_registry_lists_the_backends():
    assert set(BACKENDS) == {"whisper", "pocketsphinx"}
    assert all(cls.name == name for name, cls in BACKENDS.items())


def test_unknown_backend_names_the_closest_and_all_valid():
    with pytest.raises(UserError) as info:
        build_asr("wisper")
    msg = str(info.value)
    assert "unknown ASR backend 'wisper'" in msg and "Did you mean 'whisper'?" in msg
    assert "whisper" in msg and "pocketsphinx" in msg


def test_inputs_are_checked_and_resampled():
    with pytest.raises(ValueError, match="2 waves but 1 languages"):
        prepare_waves([torch.zeros(10), torch.zeros(10)], 16000, ["en"])
    with pytest.raises(ValueError, match=r"shape \(2, 10\).*1-D"):
        prepare_waves([torch.zeros(2, 10)], 16000, ["en"])
    with pytest.raises(ValueError, match="language code"):
        prepare_waves([torch.zeros(10)], 16000, [""])
    waves, codes = prepare_waves([torch.zeros(24000), torch.zeros(0)], 24000, ["ES-es", "it_IT"])
    assert [w.numel() for w in waves] == [16000, 0] and codes == ["es", "it"]


# --- pocketsphinx on flite English: the offline topline ------------------------------------

@pytest.fixture(scope="module")
def flite_speech(tmp_path_factory):
    """FLITE_SENTENCES spoken by flite's slt voice -> (list of float32 waves [T], sample rate)."""
    if shutil.which("flite") is None:
        pytest.skip("flite not installed (apt-get install flite)")
    out = tmp_path_factory.mktemp("flite")
    waves, rates = [], set()
    for i, text in enumerate(FLITE_SENTENCES):
        path = out / f"{i}.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True)
        wave, rate = sf.read(path, dtype="float32")
        waves.append(torch.from_numpy(wave))
        rates.add(rate)
    assert len(rates) == 1, rates
    return waves, rates.pop()


@pytest.fixture(scope="module")
def pocketsphinx():
    return build_asr("pocketsphinx")


def test_pocketsphinx_topline_on_flite_english(pocketsphinx, flite_speech):
    waves, rate = flite_speech
    hyps = pocketsphinx.transcribe(waves, rate, ["en"] * len(waves))
    assert len(hyps) == len(waves) and all(isinstance(h, str) for h in hyps)
    utterances, values, total = score_texts(FLITE_SENTENCES, hyps)
    print(f"\npocketsphinx on flite slt ({rate} Hz): pooled WER {total['wer_pooled']:.3f}, "
          f"mean WER {total['wer_mean']:.3f}, pooled CER {total['cer_pooled']:.3f}")
    for u, wer in zip(utterances, values["wer"]):
        if wer.errors:
            print(f"  {wer.rate:.2f}  ref: {u.reference}\n        hyp: {u.hypothesis}")
    assert total["wer_pooled"] < POCKETSPHINX_TOPLINE_MAX_WER


def test_pocketsphinx_resamples_other_rates(pocketsphinx, flite_speech):
    import torchaudio.functional as AF

    waves, rate = flite_speech
    wave24k = AF.resample(waves[0], rate, 24000)
    assert pocketsphinx.transcribe([wave24k], 24000, ["en-US"]) == [FLITE_SENTENCES[0]]


def test_pocketsphinx_silence_and_empty_give_strings(pocketsphinx):
    assert pocketsphinx.transcribe([torch.zeros(0), torch.zeros(8000)], 16000, ["en", "en"])[0] == ""


def test_pocketsphinx_refuses_other_languages(pocketsphinx):
    with pytest.raises(ASRError, match=r"English \(en-us\) model only.*\['es', 'it'\].*whisper"):
        pocketsphinx.transcribe([torch.zeros(1600)] * 3, 16000, ["es", "it", "en"])


def test_pocketsphinx_has_no_model_choice():
    with pytest.raises(ASRError, match="bundled"):
        build_asr("pocketsphinx", model="/models/other")


def test_pocketsphinx_non_english_smoke_mode_warns():
    asr = build_asr("pocketsphinx", allow_non_english=True)
    with pytest.warns(UserWarning, match="English"):
        assert len(asr.transcribe([torch.zeros(1600)], 16000, ["es"])) == 1


# --- whisper through the real loading path, on a tiny random model --------------------------

@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory):
    from s2s.tiny_asr import build_tiny_whisper_asr

    return build_tiny_whisper_asr(tmp_path_factory.mktemp("asr") / "tiny-whisper")


@pytest.fixture(scope="module")
def tiny_whisper(tiny_whisper_dir):
    return build_asr("whisper", model=str(tiny_whisper_dir), device="cpu", batch_size=2)


class PromptSpy:
    """Records, per generate_ids call, its language and the decoder prompt rows the model saw."""

    def __init__(self, asr, monkeypatch):
        self.calls = []  # (language, [window lengths], [prompt ids per row])
        original = asr.generate_ids

        def spy(windows, language):
            prompts = []

            def hook(module, args, kwargs):
                ids = kwargs.get("input_ids")
                if ids is not None and not prompts:  # the first decoder step sees the whole forced prompt
                    prompts.extend(ids.tolist())
            handle = asr.model.model.decoder.register_forward_pre_hook(hook, with_kwargs=True)
            try:
                out = original(windows, language)
            finally:
                handle.remove()
            self.calls.append((language, [w.numel() for w in windows], prompts))
            return out
        monkeypatch.setattr(asr, "generate_ids", spy)


def test_tiny_whisper_is_saved_in_the_real_format(tiny_whisper_dir):
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json"):
        assert (tiny_whisper_dir / name).is_file(), name
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(tiny_whisper_dir)
    assert {"<|en|>", "<|es|>", "<|it|>"} <= set(gen.lang_to_id) and set(gen.task_to_id) == {"transcribe", "translate"}


def test_whisper_forces_each_samples_language_in_batches(tiny_whisper, monkeypatch):
    spy = PromptSpy(tiny_whisper, monkeypatch)
    g = torch.Generator().manual_seed(0)
    langs = ["es", "it", "es", "en", "es"]
    waves = [0.1 * torch.randn(16000 + 800 * i, generator=g) for i in range(len(langs))]
    texts = tiny_whisper.transcribe(waves, 16000, langs)
    assert len(texts) == len(waves) and all(isinstance(t, str) for t in texts)  # garbage, but one per input

    tok = tiny_whisper.processor.tokenizer
    sot, transcribe, no_ts = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|transcribe|>", "<|notimestamps|>"])
    # batched per language, batch_size 2: en (1), es (2 + 1), it (1)
    assert [(lang, len(lengths)) for lang, lengths, _ in spy.calls] == [("en", 1), ("es", 2), ("es", 1), ("it", 1)]
    for lang, lengths, prompts in spy.calls:
        assert len(prompts) == len(lengths)
        for row in prompts:
            assert row == [sot, tok.convert_tokens_to_ids(f"<|{lang}|>"), transcribe, no_ts], (lang, row)


def test_whisper_resamples_and_splits_long_audio_into_windows(tiny_whisper, monkeypatch):
    spy = PromptSpy(tiny_whisper, monkeypatch)
    waves = [0.1 * torch.randn(24000 * 31), 0.1 * torch.randn(24000 * 2), torch.zeros(0)]
    texts = tiny_whisper.transcribe(waves, 24000, ["it", "it", "it"])
    assert len(texts) == 3 and texts[2] == ""  # an empty wave never reaches the model
    # 31 s at 24 kHz -> 496000 samples at 16 kHz -> two 15.5-s windows; 2 s -> 32000 samples
    lengths = sorted(n for _, ns, _ in spy.calls for n in ns)
    assert lengths == [32000, 248000, 248000]


def test_whisper_rejects_languages_it_does_not_know(tiny_whisper):
    with pytest.raises(ASRError, match=r"no language\(s\) \['xx'\]"):
        tiny_whisper.transcribe([torch.zeros(1600)], 16000, ["xx"])


def test_missing_whisper_model_offline_says_what_to_do(offline):
    with pytest.raises(ASRError) as info:
        build_asr("whisper")  # the default, openai/whisper-large-v3, is not in the offline cache
    msg = str(info.value)
    assert "openai/whisper-large-v3" in msg
    assert "huggingface-cli download openai/whisper-large-v3 --local-dir DIR" in msg


def test_broken_whisper_dir_is_named(offline, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ASRError, match="exists but could not be loaded"):
        build_asr("whisper", model=str(tmp_path))
