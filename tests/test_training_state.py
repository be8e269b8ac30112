"""The optimizer and scheduler states of a checkpoint, checked before --resume loads them
(lcq_train.training_state): each state a training run writes passes; each change a run would never write
is refused by name, through the trainer too."""

import pytest
import torch

from lcq_train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lcq_train.plan import QuantPlan
from lcq_train.train import TrainConfig, _lr_lambda, train
from lcq_train.training_state import optimizer_state_problem, scheduler_state_problem

TOTAL = 40


def _built():
    """An optimizer and scheduler as the trainer builds them (two groups, nesterov momentum, LambdaLR)."""
    torch.manual_seed(0)
    weights, quantizer = torch.nn.Linear(3, 2), torch.nn.Parameter(torch.tensor(2.0))
    optimizer = torch.optim.SGD([{"params": list(weights.parameters()), "lr": 0.1, "weight_decay": 1e-4},
                                 {"params": [quantizer], "lr": 0.02, "weight_decay": 0.0}], momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(TOTAL, 4))
    return weights, quantizer, optimizer, scheduler


def _trained(steps=3):
    weights, quantizer, optimizer, scheduler = _built()
    for _ in range(steps):
        (weights(torch.ones(3)).sum() * quantizer).backward()
        optimizer.step()
        scheduler.step()
    return optimizer.state_dict(), scheduler.state_dict()


def test_the_states_training_writes_pass():
    for steps in (0, 3):
        opt, sched = _trained(steps)
        _, _, optimizer, scheduler = _built()
        assert optimizer_state_problem(opt, optimizer) is None
        assert scheduler_state_problem(sched, scheduler, steps) is None


def _set(path):
    def change(state):
        *keys, last = path[:-1]
        for k in keys:
            state = state[k]
        if path[-1] is KeyError:
            del state[last]
        else:
            state[last] = path[-1](state[last]) if callable(path[-1]) else path[-1]
    return change


OPTIMIZER_CHANGES = {
    "weight decay": (("param_groups", 0, "weight_decay", 1e6), "weight_decay 1000000.0, where"),
    "momentum": (("param_groups", 1, "momentum", -1.0), "momentum -1.0, where"),
    "lr type": (("param_groups", 0, "lr", "fast"), "lr 'fast', not a finite number"),
    "params": (("param_groups", 1, "params", [0]), "params [0], where"),
    "group key": (("param_groups", 0, "nesterov", KeyError), "without exactly the keys"),
    "buffer shape": (("state", 0, "momentum_buffer", lambda b: b.reshape(-1)), "momentum_buffer of its shape (2, 3)"),
    "buffer dtype": (("state", 1, "momentum_buffer", lambda b: b.double()), "and dtype torch.float32"),
    "state index": (("state", 7, {"momentum_buffer": torch.zeros(2)}), "parameter 7, not an index 0..2"),
}
SCHEDULER_CHANGES = {
    "extra key": (("optimizer", 5), "exactly the keys"),
    "last_epoch type": (("last_epoch", "abc"), "last_epoch 'abc'"),
    "other steps per epoch": (("last_epoch", 6), "not the 3 steps its epochs take here"),
    "step count": (("_step_count", 9), "not last_epoch + 1 = 4"),
    "base_lrs": (("base_lrs", [1e30, 1e30]), "base_lrs [1e+30, 1e+30], where this run's settings give [0.1, 0.02]"),
    "lambdas only": (("base_lrs", KeyError), "exactly the keys"),
    "last lr": (("_last_lr", [float("nan"), 0.0]), "_last_lr [nan, 0.0], not 2 finite numbers"),
}


@pytest.mark.parametrize("part,label", [("optimizer", k) for k in OPTIMIZER_CHANGES]
                         + [("scheduler", k) for k in SCHEDULER_CHANGES])
def test_states_a_run_never_writes_are_refused(part, label):
    change, message = (OPTIMIZER_CHANGES if part == "optimizer" else SCHEDULER_CHANGES)[label]
    states = dict(zip(("optimizer", "scheduler"), _trained()))
    _set(change)(states[part])
    _, _, optimizer, scheduler = _built()
    problem = (optimizer_state_problem(states[part], optimizer) if part == "optimizer" else
               scheduler_state_problem(states[part], scheduler, 3))
    assert message in problem


def test_resume_refuses_a_changed_state_before_training(tmp_path):
    cfg = dict(model="cnn", dataset="digits", plan=QuantPlan("lcq", 3, 3), epochs=2, batch_size=64, device="cpu",
               out=str(tmp_path), progress=False)
    train(TrainConfig(**{**cfg, "epochs": 1}))
    path = tmp_path / "checkpoint.pt"
    written = path.read_bytes()
    state = load_checkpoint(path)
    state["scheduler"]["base_lrs"] = [1e30 for _ in state["scheduler"]["base_lrs"]]
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="its scheduler has base_lrs"):
        train(TrainConfig(**cfg, resume=True))
    path.write_bytes(written)
    state = load_checkpoint(path)
    state["layers"] = state["metrics"]["layers"] = {name: [8, 8] for name in state["layers"]}
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="its layers are"):
        train(TrainConfig(**cfg, resume=True))
    path.write_bytes(written)
    state = load_checkpoint(path)
    del state["metrics"]["layers"]          # (kept as they are in a history; the trainer takes its own)
    save_checkpoint(state, path)
    resumed = train(TrainConfig(**cfg, resume=True))
    assert len(resumed["epochs"]) == 2 and resumed["layers"] == load_checkpoint(path)["layers"]
