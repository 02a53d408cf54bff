"""The browser demo: record or upload speech, hear the model's answer as it is generated.

`build_app(session, asr)` makes the Gradio app around an `s2s.infer.Session` (the model, loaded
once); `launch(app, host, port)` serves it, on 127.0.0.1 unless told otherwise. The command
line that loads a checkpoint and an ASR backend is `experiments/demo.py`:

    python -m experiments.demo                                  # the newest finished checkpoint in mlruns/
    python -m experiments.demo outputs/<strategy>/<run id>/final --port 7861
    python -m experiments.demo CKPT --asr whisper asr.model=/models/whisper-large-v3 generation.temperature=0

The page streams the generated speech while the model is still generating (each chunk of
`session.stream` is played as it comes), then offers the whole 24 kHz wav for download, the
measured latency (time to first audio, real-time factor) and, with an ASR backend, transcripts of
the input and the output. Gradio is imported inside the functions, so `import s2s` stays light.
"""
from __future__ import annotations

import io
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from s2s.errors import UserError

DEFAULT_HOST = "127.0.0.1"  # loopback only: anyone who can reach the port can run the model
DEFAULT_PORT = 7860
LANGUAGES = ("es", "it", "en")  # what the transcripts are decoded as; es/it are what Orpheus es_it speaks


@dataclass(frozen=True)
class Checkpoint:
    """A finished training run's final checkpoint in the MLflow store."""

    path: str
    label: str  # what the picker shows: strategy, run name, start time, run id


def finished_checkpoints(uri: str | None = None, experiment: str = "s2s") -> list[Checkpoint]:
    """The checkpoints of the FINISHED runs of `experiment` (tag `s2s.checkpoint`, set when training
    ends) that are still on disk, newest first. `uri`: the store (default: what `tracking_uri` picks,
    $MLFLOW_TRACKING_URI or mlruns/mlflow.db)."""
    from s2s.tracking import TrackingConfig, open_client, tracking_uri

    uri = uri or tracking_uri(TrackingConfig())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return []  # no store yet: nothing was trained here (and looking would create an empty one)
    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        for run in page:
            ckpt = run.data.tags.get("s2s.checkpoint")
            if ckpt and Path(ckpt, "model.safetensors").is_file():
                started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
                name, strategy = run.info.run_name or "", run.data.params.get("strategy_name", "?")
                name = name if name.startswith(strategy) else f"{strategy} · {name}"  # run names usually start with it
                found.append(Checkpoint(ckpt, f"{name} · {started} · {run.info.run_id[:8]}"))
        token = page.token
        if not token:
            return found


def newest_checkpoint(uri: str | None = None, experiment: str = "s2s") -> str:
    """The newest finished checkpoint in the store; UserError naming the command that trains one if none."""
    from s2s.experiment_config import ExperimentConfig
    from s2s.tracking import TrackingConfig, tracking_uri

    uri = uri or tracking_uri(TrackingConfig())
    found = finished_checkpoints(uri, experiment)
    if not found:
        raise UserError(f"no finished checkpoint in the MLflow store {uri} (experiment '{experiment}'): train one "
                        f"with `python -m experiments.run {ExperimentConfig.strategy_name}`, or pass a checkpoint "
                        f"directory")
    return found[0].path


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    """A mono float wave -> 16-bit PCM wav bytes: what a streamed Gradio audio chunk is best given as
    (a numpy chunk would be peak-normalized chunk by chunk, so the loudness would jump)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def latency_text(result) -> str:
    """An `s2s.infer.InferResult`'s timings as one Markdown line."""
    if not result.audio_seconds:
        return (f"the model produced no audio ({len(result.tokens)} speech ids"
                f"{', then end_of_speech' if result.stopped else ''}); try again with generation.min_new_tokens=7")
    return (f"**time to first audio** {result.time_to_first_audio_s:.2f} s · **real-time factor** "
            f"{result.real_time_factor:.2f} (below 1 is faster than real time) · {result.audio_seconds:.2f} s of "
            f"audio, {result.tokens_per_second:.0f} tokens/s"
            f"{'' if result.stopped else ' · stopped at generation.max_new_tokens'}")


def build_app(session, asr=None, language: str = "es", checkpoints: list[Checkpoint] = (),
              load_session=None, current: str | None = None):
    """The demo page around `session` (an `s2s.infer.Session`) -> gr.Blocks (not launched).

    asr: None, or an ASR backend (`transcribe(waves, sample_rate, languages) -> list[str]`, as
    evaluation.asr's); with one the page shows transcripts of the input and the output in the chosen
    language. checkpoints + load_session(path) -> Session: a picker that switches the model (one
    model for every visitor; generation waits while it loads). current: the path of `session`'s
    checkpoint, selected in the picker.
    """
    import gradio as gr

    lock = threading.Lock()  # one generation or model switch at a time: they share the model
    state = {"session": session}
    out_dir = Path(tempfile.mkdtemp(prefix="s2s-demo-"))

    def generate(audio_path, lang):
        from s2s.infer import read_audio

        if not audio_path:
            raise gr.Error("record or upload some speech first", print_exception=False)
        yield {file_out: None, latency: "generating…", heard: "", said: ""}
        try:
            wave, sr = read_audio(audio_path)  # [C, T]
            with lock:
                sess = state["session"]
                rate, chunks = sess.sample_rate, []
                stream = sess.stream(wave, sr)  # a bad input raises here, before any audio
                while True:
                    try:
                        chunk = next(stream)
                    except StopIteration as done:
                        result = done.value  # InferResult: the timings, measured without our time in between
                        break
                    chunk = chunk.detach().cpu().float().numpy().reshape(-1)
                    chunks.append(chunk)
                    yield {stream_out: wav_bytes(chunk, rate)}
            out = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
            path = None
            if out.size:
                path = out_dir / f"s2s-{time.strftime('%Y%m%d-%H%M%S')}-{time.perf_counter_ns() % 10**6:06d}.wav"
                sf.write(path, out, rate, subtype="FLOAT")  # the exact samples the model made
            update = {file_out: str(path) if path else None, latency: latency_text(result)}
            if asr is not None:
                import torch

                mono = torch.from_numpy(np.ascontiguousarray(wave.mean(axis=0), np.float32))
                texts = asr.transcribe([mono], sr, [lang])
                texts += asr.transcribe([torch.from_numpy(out)], rate, [lang]) if out.size else [""]
                update.update({heard: texts[0], said: texts[1]})
            yield update
        except UserError as e:  # bad input (or an ASR that cannot run): a message, not a traceback
            raise gr.Error(str(e), print_exception=False) from None

    def switch(path):
        if not path or load_session is None:
            return
        try:
            new = load_session(path)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        with lock:
            state["session"] = new
        gr.Info(f"loaded {path}")

    with gr.Blocks(title="s2s demo", analytics_enabled=False) as app:
        gr.Markdown("## s2s: speech to speech\nRecord or upload speech, then **Generate**: the answer plays "
                    "while it is being generated.")
        if checkpoints:
            picker = gr.Dropdown([(c.label, c.path) for c in checkpoints], value=current, label="checkpoint",
                                 interactive=load_session is not None, elem_id="checkpoint")
        with gr.Row():
            with gr.Column():
                audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath", label="your speech",
                                    elem_id="audio_in")
                lang = gr.Dropdown(list(LANGUAGES), value=language, label="language (for the transcripts)",
                                   visible=asr is not None, elem_id="language")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                stream_out = gr.Audio(label="generated speech", streaming=True, autoplay=True, interactive=False,
                                      elem_id="audio_out")
                file_out = gr.File(label="download (24 kHz wav)", interactive=False, elem_id="file_out")
                latency = gr.Markdown(elem_id="latency")
        with gr.Row(visible=asr is not None):
            heard = gr.Textbox(label="input transcript (ASR)", interactive=False, elem_id="heard")
            said = gr.Textbox(label="output transcript (ASR)", interactive=False, elem_id="said")
        button.click(generate, [audio_in, lang], [stream_out, file_out, latency, heard, said])
        if checkpoints and load_session is not None:
            picker.change(switch, picker, None)
    return app


def launch(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True) -> str:
    """Serve `app` on host:port (never shared through Gradio's tunnel) -> its local URL.
    block=False returns at once, the server running in a thread (stop it with app.close())."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                              font_mono=["ui-monospace", "monospace"])
    try:
        _, url, _ = app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True,
                               quiet=True, ssr_mode=False, theme=theme, footer_links=[])
    except OSError as e:  # the port is taken
        raise UserError(f"cannot serve the demo on {host}:{port} ({e}); pick another port with --port") from None
    if block:
        print(f"s2s demo: {url}  (Ctrl-C stops it)", flush=True)
        try:
            app.block_thread()
        finally:
            app.close()
    return url
