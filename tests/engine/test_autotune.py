"""The measured runtime choice (engine/autotune.py): measured once, cached, on real training steps."""
import json

import torch

from lesionlab.models import create_model


def test_the_runtime_choice_is_measured_once_and_cached(tmp_path, monkeypatch):
    from lesionlab.engine import autotune

    monkeypatch.setenv("LESIONLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "cpu_has_native_bf16", lambda: True)
    timed = []
    speeds = {(False, False): 50.0, (False, True): 80.0, (True, False): 70.0, (True, True): 90.0}

    def fake_measure(build, device, side, batch, bf16, cl):
        timed.append((bf16, cl))
        return speeds[(bf16, cl)]

    monkeypatch.setattr(autotune, "measure", fake_measure)
    cpu = torch.device("cpu")
    bf16, cl, info = autotune.choose("resnet18", None, cpu, 64, 32, "auto", "auto")
    assert (bf16, cl) == (True, True) and len(timed) == 4 and not info["from_cache"]
    assert autotune.choose("resnet18", None, cpu, 64, 32, "auto", "auto")[2]["from_cache"] and len(timed) == 4
    # a given setting is not varied; another size is measured anew; without native bf16 only fp32 is tried
    assert autotune.choose("resnet18", None, cpu, 64, 32, "32", "auto")[:2] == (False, True)
    autotune.choose("resnet18", None, cpu, 96, 32, "auto", "auto")
    assert len(timed) == 8
    monkeypatch.setattr(autotune, "cpu_has_native_bf16", lambda: False)
    assert autotune.candidates(cpu, "auto", "auto") == [(False, False), (False, True)]
    assert json.loads((tmp_path / autotune.CACHE_FILE).read_text())  # in the cache folder given


def test_measure_times_real_training_steps():
    from lesionlab.engine import autotune

    img_s = autotune.measure(lambda: create_model("upgraded_cnn", image_size=32), torch.device("cpu"), 32, 4, False, True)
    assert 0 < img_s < 1e6
