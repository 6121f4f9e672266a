"""Does Weight Norm Supervision hold its bound under large learning rates?

Recurrent models trained with plain SGD at learning rate 20 with the default
``WeightNormSupervision`` (every ``weight_hh`` projected to spectral norm <= 0.95, one power
iteration per step):

- ``lstm_lm``: Lightning's ``LightningLSTM`` demo at a smaller size (its ``SimpleLSTM``:
  embedding, 4-layer LSTM of 256, decoder; SGD lr 20, no clipping, the hidden state carried across
  batches as in the demo) on an offline token stream from a random Markov chain;
- ``lstm`` and ``rnn``: ``SequenceModel`` on random sequence regression, gradients clipped at 0.25
  (as the word-language-model examples at lr 20).

Two arms per model: the near-bound check on (the default) and off (``max_iterations=0``: the
projection uses the one-iteration estimate, the behaviour before the check). After every optimizer
step the exact spectral norm (``torch.linalg.matrix_norm(W, ord=2)``) of every supervised matrix is
recorded, with the logged ``wns/recurrent/max_norm`` (the norm measured before the projection) and
the iterations each matrix used. Writes ``benchmarks/results/weight_norm_supervision_bound.json``.

    python benchmarks/weight_norm_supervision_bound.py             # ~95 s on 2 CPU cores
    python benchmarks/weight_norm_supervision_bound.py --quick     # smoke run (50 steps)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from _common import quiet_lightning, trainer_kwargs, write_results
from lightning.pytorch.demos.lstm import SimpleLSTM
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_dnn_tricks.callbacks import WeightNormSupervision
from lightning_dnn_tricks.models import SequenceModel

NAME = "weight_norm_supervision_bound"
BOUND = 0.95  # the default group's
TOLERANCE = 0.01  # the default tolerance
COLUMNS = [
    "model",
    "check",
    "steps",
    "bound",
    "max exact norm",
    "max / bound",
    "steps over bound (1 + tol)",
    "max logged norm",
    "mean iterations",
    "max iterations",
    "seconds",
]


class TokenStream(TensorDataset):
    """Blocks of a token stream from a random Markov chain (sparse, peaked transitions)."""

    def __init__(self, vocab: int, length: int, block: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        logits = 3.0 * torch.randn(vocab, vocab, generator=generator)
        transitions = torch.softmax(logits, dim=1)
        tokens = torch.empty(length + 1, dtype=torch.long)
        tokens[0] = 0
        for t in range(length):
            tokens[t + 1] = torch.multinomial(transitions[tokens[t]], 1, generator=generator)
        count = length // block
        inputs = tokens[: count * block].reshape(count, block)
        targets = tokens[1 : count * block + 1].reshape(count, block)
        super().__init__(inputs, targets)


class ContiguousBatches(Sampler[list[int]]):
    """The demo's ``SequenceSampler``: batch row ``b`` continues row ``b`` of the last batch."""

    def __init__(self, size: int, batch_size: int) -> None:
        super().__init__()
        self.size, self.batch_size = size, batch_size
        self.chunk = size // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.chunk):
            yield list(range(i, self.chunk * self.batch_size, self.chunk))

    def __len__(self) -> int:
        return self.chunk


class LanguageModel(pl.LightningModule):
    """``lightning.pytorch.demos.LightningLSTM`` with a configurable size and offline data."""

    def __init__(self, vocab: int, ninp: int, nhid: int, nlayers: int) -> None:
        super().__init__()
        self.model = SimpleLSTM(vocab_size=vocab, ninp=ninp, nhid=nhid, nlayers=nlayers)
        self.hidden: tuple[Tensor, Tensor] | None = None

    def on_train_epoch_end(self) -> None:
        self.hidden = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        if self.hidden is None:
            self.hidden = self.model.init_hidden(inputs.size(0))
        self.hidden = (self.hidden[0].detach(), self.hidden[1].detach())
        output, self.hidden = self.model(inputs, self.hidden)
        return nn.functional.nll_loss(output, target.reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=20.0)


class BoundRecorder(pl.Callback):
    """After every step: the exact norm of each ``weight_hh``, the logged norm, the iterations.

    Place it after WeightNormSupervision (it reads the metric that callback logs in the same hook).
    """

    def __init__(self, wns: WeightNormSupervision) -> None:
        self.wns = wns
        self.exact: list[float] = []  # per step, the largest over the matrices
        self.logged: list[float] = []
        self.iterations: list[int] = []  # per matrix and step

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        norms = [
            float(torch.linalg.matrix_norm(p.detach(), ord=2))
            for name, p in module.named_parameters()
            if "weight_hh" in name
        ]
        self.exact.append(max(norms))
        self.logged.append(float(trainer.callback_metrics["wns/recurrent/max_norm"]))
        self.iterations += list(self.wns.last_iterations.values())


def lstm_lm() -> tuple[pl.LightningModule, DataLoader[Any], dict[str, Any]]:
    data = TokenStream(vocab=200, length=35 * 20 * 100, block=35)
    loader = DataLoader(data, batch_sampler=ContiguousBatches(len(data), batch_size=20))
    return LanguageModel(vocab=200, ninp=128, nhid=256, nlayers=4), loader, {}


def sequence_model(cell: str) -> Callable[[], tuple[pl.LightningModule, DataLoader[Any], dict]]:
    def build() -> tuple[pl.LightningModule, DataLoader[Any], dict[str, Any]]:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(512, 20, 2, generator=generator)
        y = x.sum(dim=(1, 2)).unsqueeze(1)
        model = SequenceModel(
            cell=cell,  # type: ignore[arg-type]
            input_size=2,
            hidden_size=32,
            optimizer=lambda params: torch.optim.SGD(params, lr=20.0),
        )
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
        return model, loader, {"gradient_clip_val": 0.25}

    return build


MODELS = {"lstm_lm": lstm_lm, "lstm": sequence_model("lstm"), "rnn": sequence_model("rnn")}


def run(name: str, check: bool, steps: int) -> list[Any]:
    pl.seed_everything(0)
    model, loader, extra = MODELS[name]()
    wns = WeightNormSupervision() if check else WeightNormSupervision(max_iterations=0)
    recorder = BoundRecorder(wns)
    settings = {**trainer_kwargs(), "log_every_n_steps": 1, **extra}
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, callbacks=[wns, recorder], **settings)
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    largest = max(recorder.exact)
    over = sum(norm > BOUND * (1 + TOLERANCE) for norm in recorder.exact)
    mean_iterations = sum(recorder.iterations) / len(recorder.iterations)
    print(
        f"{name:8s} check={'on ' if check else 'off'}: max exact norm {largest:.4f} vs bound "
        f"{BOUND} ({largest / BOUND:.4f}x), {over}/{steps} steps over bound*(1+{TOLERANCE}), "
        f"max logged {max(recorder.logged):.4f}, iterations mean {mean_iterations:.2f} max "
        f"{max(recorder.iterations)}, {seconds:.0f} s",
        flush=True,
    )
    return [
        name,
        "on" if check else "off",
        steps,
        BOUND,
        round(largest, 4),
        round(largest / BOUND, 4),
        over,
        round(max(recorder.logged), 4),
        round(mean_iterations, 2),
        max(recorder.iterations),
        round(seconds, 1),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="50 steps, to quick/")
    args = parser.parse_args()
    steps = 50 if args.quick else args.steps
    quiet_lightning()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = [run(name, check, steps) for name in MODELS for check in (False, True)]
    notes = (
        "Exact spectral norm of every weight_hh after every optimizer step, default "
        "WeightNormSupervision (project to 0.95, iterations=1, tolerance 0.01, margin 0.5) with "
        "the near-bound check on, and off (max_iterations=0, the behaviour before the check). "
        "Plain SGD at lr 20: lstm_lm is Lightning's LightningLSTM demo (4 layers of 256, "
        "vocabulary 200, offline Markov-chain tokens, no clipping); lstm and rnn are "
        "SequenceModel (hidden 32) on random regression with gradients clipped at 0.25. "
        "'max logged norm' is wns/recurrent/max_norm, the norm measured before the projection. "
        "Iterations are per matrix and step (power iterations plus the check's)."
    )
    settings = {
        "steps": steps,
        "bound": BOUND,
        "tolerance": TOLERANCE,
        "lr": 20.0,
        "lstm_lm": {"vocab": 200, "ninp": 128, "nhid": 256, "nlayers": 4, "batch": 20, "bptt": 35},
        "sequence_model": {"hidden_size": 32, "batch_size": 32, "sequence_length": 20},
    }
    path = write_results(
        NAME, settings=settings, columns=COLUMNS, rows=rows, notes=notes, quick=args.quick
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
