import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console

from alsa_jax import models, progress, train


def _terminal():
    buffer = io.StringIO()
    return buffer, Console(file=buffer, force_terminal=True, width=150, color_system=None)


def _frames(text, name):
    """The rendered lines of phase ``name``, control codes removed."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return [f for f in re.split(r"\r|\n", plain) if f.startswith(name)]


def _run_phase(display, steps=12, examples=25):
    with display.phase(
        "fine-tune round 3", epochs=3, examples_per_epoch=100, steps_per_epoch=4
    ) as phase:
        for _ in range(steps):
            phase.step(examples)
    return phase


def test_a_terminal_shows_phase_epoch_rate_and_time_left():
    buffer, console = _terminal()
    display = progress.Progress("auto", console=console)
    assert display.live
    phase = _run_phase(display)
    assert (phase.steps, phase.examples) == (12, 300)
    frames = _frames(buffer.getvalue(), "fine-tune round 3")
    assert frames, buffer.getvalue()
    first, last = frames[0], frames[-1]
    assert "0%" in first and "epoch 1/3" in first
    assert "100%" in last and "epoch 3/3" in last
    assert re.search(r"[\d,]+ examples/s", last), last
    assert re.search(r"\d+:\d\d:\d\d left", last), last
    # The finished line is erased (transient): the round line printed next stands alone.
    assert buffer.getvalue().endswith("\x1b[2K")


def test_the_epoch_follows_the_steps():
    buffer, console = _terminal()
    display = progress.Progress("always", console=console)
    with display.phase("h0", epochs=2, examples_per_epoch=70, steps_per_epoch=3) as phase:
        assert phase.epoch == 1
        for examples, epoch in ((32, 1), (32, 1), (6, 1), (32, 2), (32, 2)):
            phase.step(examples)
            assert phase.epoch == epoch
    assert phase.examples == 134
    assert "h0" in buffer.getvalue() and "epoch 2/2" in buffer.getvalue()
    with progress.Progress("never").phase("x", epochs=2, examples_per_epoch=7) as phase:
        phase.step(7)
    assert phase.epoch == 0  # no steps_per_epoch: no epoch


def test_no_output_when_not_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer)  # a log file: not a terminal
    display = progress.Progress("auto", console=console)
    assert not display.live
    phase = _run_phase(display)
    assert (phase.steps, phase.examples) == (12, 300)  # still counted
    assert buffer.getvalue() == ""


def test_modes():
    buffer, console = _terminal()
    never = progress.Progress("never", console=console)
    assert not never.live
    _run_phase(never)
    assert buffer.getvalue() == ""
    log = io.StringIO()
    always = progress.Progress("always", console=Console(file=log, width=150))
    assert always.live
    _run_phase(always)
    assert "epoch 3/3" in log.getvalue()
    with pytest.raises(ValueError, match=r"progress='sometimes' is not known"):
        progress.Progress("sometimes")


def test_a_phase_without_epochs():
    buffer, console = _terminal()
    display = progress.Progress("auto", console=console)
    with display.phase("predict [pool]", total=1000, unit="rows") as phase:
        phase.step(600)
        phase.step(400)
    text = buffer.getvalue()
    assert "predict [pool]" in text and "rows/s" in text and "epoch" not in text


def _separable(n):
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 4))
    return x, (x[:, 0] > 0).astype(jnp.int32)


@pytest.fixture(scope="module")
def mlp():
    model = models.create_model("mlp", 2, hidden=8)
    tx = train.make_optimizer("adam", learning_rate=1e-2)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, (4,))
    return state, train.make_train_step(model, tx)


def _fit(state, step, on_step=None, epochs=2):
    x, y = _separable(96)
    return train.fit(
        state,
        step,
        x,
        y,
        jnp.ones(96),
        jnp.arange(96) < 70,  # 70 rows: 4 batches of 16 and one of 6
        key=jax.random.PRNGKey(3),
        epochs=epochs,
        batch_size=16,
        lr_fn=lambda t: 1e-2,
        on_step=on_step,
    )


def test_fit_reports_each_step_without_waiting_for_the_device(mlp, monkeypatch):
    state, step = mlp
    transfers = []
    real_device_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: transfers.append(1) or real_device_get(x))
    plain, plain_history = _fit(state, step)
    without = len(transfers)
    counts = []
    reported, history = _fit(state, step, on_step=counts.append)
    assert counts == [16, 16, 16, 16, 6] * 2
    assert all(type(c) is int for c in counts)  # host-side counts, not device arrays
    assert len(transfers) == 2 * without == 2 * 2  # one fetch per epoch, callback or not
    assert history == plain_history
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(reported.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_drives_a_phase(mlp):
    state, step = mlp
    buffer, console = _terminal()
    display = progress.Progress("auto", console=console)
    with display.phase("h0", epochs=2, examples_per_epoch=70, steps_per_epoch=5) as phase:
        _fit(state, step, on_step=phase.step)
    assert (phase.steps, phase.examples) == (10, 140)
    last = _frames(buffer.getvalue(), "h0 ")[-1]
    assert "100%" in last and "epoch 2/2" in last
