"""The browser demo (`python -m experiments.demo`, s2s/demo.py) driven in a real headless Chromium.

The command is started as a user starts it (no checkpoint: the store's newest; no --host; pocketsphinx
transcripts) on a free port, over a 2-step tiny checkpoint. Chromium (Debian's, through Playwright;
no browser download) uploads a flite utterance, clicks Generate, and the test checks that the
streamed answer reached the page's audio player at its full length and plays, that the offered wav
is exactly the wave `Session.run` makes for the same input (greedy, SNAC's noise seeded), that the
latency line and the input's transcript are shown, and that errors arrive as a message on the page.
The server must not be reachable on the machine's non-loopback address.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from experiments.demo import main as demo_main
from s2s.demo import finished_checkpoints, newest_checkpoint
from s2s.generate import GenerationConfig
from tests.core_fixtures import train_tiny

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package (scripts/setup.sh)
# Greedy, so the browser's answer can be compared with Session.run's; at least 5 SNAC frames of audio
# whatever the random model says, at most 10 (0.85 s).
GENERATION = GenerationConfig(temperature=0.0, min_new_tokens=35, max_new_tokens=70)
GENERATION_OVERRIDES = ["generation.temperature=0", "generation.min_new_tokens=35", "generation.max_new_tokens=70"]
REPO = Path(__file__).resolve().parents[1]
WAIT_MS = 60_000  # every browser wait is bounded


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_dataset, tiny_backbone_cfg, tiny_core, prepared_cache_dir):
    """(checkpoint dir, tracking uri, run id) of a 2-step run on the tiny preset."""
    result = train_tiny(tmp_path_factory, synth_dataset, tiny_backbone_cfg, prepared_cache_dir, "demo")
    return result["checkpoint"], result["tracking_uri"], result["run_id"]


@pytest.fixture(scope="module")
def session(trained):
    from s2s.infer import Session

    return Session(trained[0], generation=GENERATION)


SENTENCE = "the weather is nice today"


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """An English sentence from flite's slt voice (16 kHz wav), which pocketsphinx transcribes exactly."""
    path = tmp_path_factory.mktemp("demo_in") / "weather.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", SENTENCE, "-o", str(path)], check=True, timeout=30)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def non_loopback_ipv4() -> str | None:
    """An address of this machine other than 127.x (the one a default route would use), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, only a route is chosen
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """`python -m experiments.demo` as a user starts it, with no checkpoint (so the store's newest),
    no --host, pocketsphinx transcripts -> (url, port). Stopped at teardown."""
    ckpt, uri, _ = trained
    port = free_port()
    log = tmp_path_factory.mktemp("demo_server") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "experiments.demo", "--tracking-uri", uri, "--port", str(port), "--asr",
           "pocketsphinx", "--language", "en", *GENERATION_OVERRIDES]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode} before serving:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not serve {url} within 120 s:\n{log.read_text()}")
            if f"s2s demo: {url}" in log.read_text():  # printed once the server answers
                with urllib.request.urlopen(url, timeout=10) as r:
                    assert r.status == 200
                break
            time.sleep(0.5)
        yield url, port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail("chromium is missing: the demo test drives Debian's chromium through Playwright; run "
                    "scripts/setup.sh (or apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def test_no_checkpoint_in_the_store_names_the_command_that_trains_one(tmp_path, capsys):
    code = demo_main(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: no finished checkpoint") and err.count("\n") == 1, err
    assert "python -m experiments.run adapter_stage1" in err
    assert not (tmp_path / "mlflow.db").exists()  # looking created no store


def test_the_store_lists_the_finished_checkpoint(trained):
    ckpt, uri, run_id = trained
    found = finished_checkpoints(uri)
    assert [c.path for c in found] == [str(Path(ckpt).resolve())]
    assert found[0].label.startswith("adapter_stage1") and found[0].label.endswith(run_id[:8])
    assert newest_checkpoint(uri) == found[0].path


def test_serves_on_loopback_only_by_default(served):
    url, port, log = served
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    other = non_loopback_ipv4()
    if other is not None:  # a machine with only a loopback interface has no other address to refuse on
        with pytest.raises(OSError):  # connection refused: nothing listens on the machine's other address
            socket.create_connection((other, port), timeout=5).close()


def test_browser_upload_generate_stream_and_download(served, session, speech, browser):
    url, port, log = served
    wave, sr = sf.read(speech, dtype="float32")
    expected = session.run(wave, sr).wave  # what the page must offer: greedy, SNAC noise seeded
    assert expected.numel() > 0

    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.locator("#audio_in input[type=file]").set_input_files(str(speech))
    page.locator("#audio_in a[download]").wait_for(state="attached")  # the upload reached the server
    page.click("#generate")
    link = page.locator("#file_out a[download]")
    link.wait_for(state="attached")
    page.get_by_text("time to first audio").wait_for(state="visible")

    body = page.request.get(link.get_attribute("href")).body()
    got, rate = sf.read(io.BytesIO(body), dtype="float32")
    assert rate == session.sample_rate == 24000
    assert len(got) == expected.numel(), (len(got), expected.numel())
    assert np.allclose(got, expected.numpy(), atol=1e-5)  # streamed == offline, to float rounding

    # The streamed answer is in the player, of the generated length (the AAC stream adds up to a
    # frame or two of encoder padding), and the browser plays it without a click.
    # The player keeps loading the stream's segments after the last one was sent: wait for all of them.
    player = "#audio_out audio"
    seconds = expected.numel() / 24000
    page.wait_for_function("([sel, s]) => { const a = document.querySelector(sel); return a && a.readyState >= 1 "
                           "&& isFinite(a.duration) && a.duration >= s - 0.01; }", arg=[player, seconds])
    page.wait_for_function(f"() => document.querySelector('{player}').currentTime > 0")
    duration = page.evaluate(f"() => document.querySelector('{player}').duration")
    assert seconds - 0.01 <= duration <= seconds + 0.15, (duration, seconds)
    latency = page.inner_text("#latency")
    assert "real-time factor" in latency and f"{seconds:.2f} s of audio" in latency, latency
    # pocketsphinx hears flite's sentence exactly; the random model's output transcribes to anything.
    assert page.input_value("#heard textarea") == SENTENCE
    assert page.locator("#said textarea").is_visible()
    assert not errors, errors
    page.screenshot(path="/tmp/demo.png", full_page=True)
    page.close()


def test_errors_are_a_message_on_the_page(served, browser, tmp_path):
    url, port, log = served
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.click("#generate")  # nothing recorded or uploaded yet
    page.get_by_text("record or upload some speech first").wait_for(state="visible")
    page.locator("#audio_in input[type=file]").set_input_files(str(silent))
    page.locator("#audio_in a[download]").wait_for(state="attached")
    page.click("#generate")  # Session refuses silence with a UserError: its one line, on the page
    page.locator(".toast-body").filter(has_text="silent").first.wait_for(state="visible")
    assert "Traceback" not in page.content() and "Traceback" not in log.read_text()
    page.close()
