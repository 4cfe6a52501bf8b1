"""callbacks/weight_ema.py: the EMA of the weights is what every validation hook, checkpoint and the
end of training see; the raw weights come back for training and are kept for resuming."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks.weight_ema import WeightEMA, warmup_decay


class _Line(L.LightningModule):
    """y = w x + b fitted by SGD: every step moves the weights, so raw and average differ."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen_in_steps: list[torch.Tensor] = []
        self.seen_in_validation: list[torch.Tensor] = []

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten().clone() for p in self.parameters()])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.seen_in_steps.append(self._flat())  # after the optimizer step: what the EMA averages

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen_in_validation.append(self._flat())
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Probe(L.Callback):
    """Records the weights at validation_epoch_end / validation_end (where mesh validation meshes)."""

    def __init__(self) -> None:
        self.at: dict[str, list[torch.Tensor]] = {"epoch_end": [], "end": []}

    def on_validation_epoch_end(self, trainer, pl_module):
        self.at["epoch_end"].append(pl_module._flat())

    def on_validation_end(self, trainer, pl_module):
        self.at["end"].append(pl_module._flat())


def _manual_ema(history: list[torch.Tensor], decay: float) -> torch.Tensor:
    avg = history[0].clone()
    for n, w in enumerate(history[1:], start=1):
        d = warmup_decay(decay, n)
        avg = avg + (w - avg) * (1.0 - d)
    return avg


def _loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, 3.0 * x + 1.0), batch_size=8)


def test_warmup_decay_forgets_the_initial_weights_then_reaches_the_decay():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 100) == pytest.approx(101 / 110)
    assert warmup_decay(0.999, 100_000) == 0.999
    # weight left on the first update after 2,000 updates: small, unlike 0.999**2000 = 13 %
    left = 1.0
    for n in range(1, 2000):
        left *= warmup_decay(0.999, n)
    assert left < 1e-2 < 0.999**2000


def _fit(callbacks: list) -> _Line:
    torch.manual_seed(0)
    model = _Line()
    trainer = L.Trainer(
        max_steps=16,
        val_check_interval=8,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(model, _loader(), _loader(16))
    return model


def test_validation_hooks_and_checkpoints_see_the_average(tmp_path):
    probe = _Probe()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, monitor=None)
    # the probe before the EMA, as mesh_validation before weight_ema in "callbacks=[default,weight_ema]"
    model = _fit([probe, WeightEMA(decay=0.9), ckpt])
    history = model.seen_in_steps
    assert len(history) == 16
    # The two validations, after steps 8 and 16: every hook sees the average, not the raw weights
    for k, step in enumerate((8, 16)):
        expected = _manual_ema(history[:step], 0.9)
        raw = history[step - 1]
        assert not torch.allclose(expected, raw, atol=1e-4)
        torch.testing.assert_close(model.seen_in_validation[k], expected)
        for hook in ("epoch_end", "end"):
            torch.testing.assert_close(probe.at[hook][k], expected, msg=f"{hook} of validation {k}")
    # Training continued from the raw weights after each validation: the same steps as without the EMA
    plain = _fit([])
    torch.testing.assert_close(torch.stack(history), torch.stack(plain.seen_in_steps))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    average = torch.cat([v.flatten() for v in saved["state_dict"].values()])
    current = torch.cat([v.flatten() for v in saved["current_model_state"].values()])
    torch.testing.assert_close(average, _manual_ema(history, 0.9))
    torch.testing.assert_close(current, history[-1])
    # When training ends the model holds the average (final meshes, exported network)
    torch.testing.assert_close(model._flat(), _manual_ema(history, 0.9))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(decay=1.0)
    with pytest.raises(ValueError, match="update_every_n_steps"):
        WeightEMA(update_every_n_steps=0)


def test_the_default_run_averages_after_mesh_validation(tmp_path):
    from tests.training.test_train import compose_train

    names = list(compose_train([], tmp_path).callbacks)
    assert names.index("weight_ema") > names.index("mesh_validation")  # meshes see the average
    assert (
        "weight_ema" not in compose_train(["experiment=halo_base"], tmp_path).callbacks
    )  # the original's recipe
